"""`python -m experiments verify`: rerun a sample of committed runs into a scratch folder and compare.

On the machine and software that produced a record (same CPU kind, same packages, same commit), a rerun gives
bitwise-equal predictions: training on the CPU is deterministic for a seed. Elsewhere (another CPU, a GPU, other
library versions) floating-point differences change some predictions; the report then gives the difference of
the two scores with its test-item interval (one seed each, so items are the only noise it can measure), and a
difference inside that interval is what a faithful reproduction looks like.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from experiments.harness.errors import MissingFileError
from experiments.harness.profiles import experiment_config, load_profile
from experiments.harness.records import check_record, iter_records, read_record
from experiments.harness.registry import get_family
from experiments.report import stats


def pick_sample(records: list[dict], experiments: list[str], n: int) -> list[dict]:
    """The first complete record (lowest seed, then task) of each listed experiment, then others, up to n."""
    ordered = sorted(records, key=lambda r: (r["seed"], r.get("task") or "", r["experiment"], r["lr"]))
    out: list[dict] = []
    for name in experiments:
        rec = next((r for r in ordered if r["experiment"] == name), None)
        if rec is not None and len(out) < n:
            out.append(rec)
    for rec in ordered:
        if len(out) >= n:
            break
        if rec["experiment"] not in {r["experiment"] for r in out}:
            out.append(rec)
    return out


def compare(old: dict[str, Any], new: dict[str, Any], family: str) -> dict[str, Any]:
    fam = get_family(family)
    tables = {"committed": stats.item_table([old]), "rerun": stats.item_table([new])}
    tasks = stats.check_alignment(tables)
    identical = all(
        np.array_equal(tables["committed"][t][old["seed"]][k], tables["rerun"][t][new["seed"]][k])
        for t in tasks for k in tables["committed"][t][old["seed"]]
    )  # fmt: skip
    n = {t: len(tables["committed"][t][old["seed"]]["ids"]) for t in tasks}
    idx = stats.boot_indices(n)
    a, b = (
        stats.score_experiment(tables[k], tasks, idx, fam.task_scores, 100.0) for k in ("rerun", "committed")
    )
    iv = stats.difference(a, b)
    return {"experiment": old["experiment"], "task": old.get("task"), "seed": old["seed"], "lr": old["lr"],
            "identical_predictions": identical, "committed": float(b.per_seed.mean()),
            "rerun": float(a.per_seed.mean()), "difference": iv.estimate, "low": iv.low, "high": iv.high,
            "committed_on": old["provenance"]["hardware"], "rerun_on": new["provenance"]["hardware"]}  # fmt: skip


def verify(family: str, profile_name: str, results_dir: Path, scratch: Path, *, n: int = 2,
           experiments: list[str] | None = None, progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    from experiments.harness.train import run

    profile = load_profile(family, profile_name)
    fam = get_family(family)
    records = []
    for p in iter_records(results_dir / profile.name / family):
        r = read_record(p)
        if r is None or r.get("status") != "complete":
            continue
        if problems := check_record(p, r, fam):  # a record that does not check is never rerun as a reference
            print(f"invalid run record {p}: {'; '.join(problems)} (not verified)", file=sys.stderr)
            continue
        records.append(r)
    if not records:
        raise MissingFileError(f"no complete records under {results_dir / profile.name / family}")
    sample = pick_sample(records, experiments or list(profile.verify), n)
    out = []
    for old in sample:
        task = old.get("task")
        cfg = experiment_config(profile, old["experiment"], task)
        new = run(
            cfg, seed=old["seed"], lr=old["lr"], profile=profile.name, results_dir=scratch, progress=progress
        )
        row = compare(old, new, family)
        row["config_unchanged"] = new["config_hash"] == old.get("config_hash")
        out.append(row)
    return out


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | committed | rerun | difference [95% CI, items] | predictions | config |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in rows:
        name = r["experiment"] + (f"/{r['task']}" if r["task"] else "") + f" seed {r['seed']} lr {r['lr']:g}"
        lines.append(f"| {name} | {r['committed']:.2f} | {r['rerun']:.2f} | {r['difference']:+.2f} "
                     f"[{r['low']:+.2f}, {r['high']:+.2f}] | {'bitwise equal' if r['identical_predictions'] else 'differ'} "
                     f"| {'same' if r['config_unchanged'] else 'CHANGED since the record'} |")  # fmt: skip
    return "\n".join(lines) + "\n"
