"""Tables, plots, the dated run log and the verdicts, from run records only (`make tables`).

Scores are the family's primary metric per task (100 x), averaged over tasks without weights, as the paper's
"avg" columns. Intervals carry seed and test-item noise (experiments/report/stats.py). The verdicts test the claims
declared in the family's `claims.yaml` (the only place that names the experiments a claim compares):

- superiority (treatment beats reference): supported if the interval of (treatment - reference) lies above 0,
  excluded if it lies below +margin (a gain of the margin or more excluded), else inconclusive;
- non-inferiority (treatment not worse by more than the margin): supported if the interval lies above -margin,
  excluded if below -margin, else inconclusive;
- power: a non-inferiority claim against a bigger reference can only be "supported" when that reference
  itself beats the `power` experiment (e.g. LoRA r=8 beats LoRA r=2): otherwise matching it shows nothing;
- at-least (the treatment alone against a stated `value` in points, e.g. a chance level): supported if the
  interval of its score lies above the value, excluded if below, else inconclusive.
Supported or excluded needs at least MIN_SEEDS seeds. A claim whose treatment changed fewer than margin/100 of its
control's test predictions (the manipulation check) is "not exercised", whatever its interval.
A claim may name a `metric` other than the primary one (a higher-is-better per-task metric of the family's
records without per-item arrays, e.g. a diagnostic such as direction recovery): its scores are 100 x the records'
values, and its intervals carry seed-to-seed noise only.
Every claim and power check of a verdict is judged at the Bonferroni-adjusted level 1 - 0.05 / m, m the
number of tests in the verdict, so that the chance of any false "supported" or "excluded" stays at 5%.

Where a family's paper numbers were scored by another rule than its primary metric (`Family.paper_metric`, e.g.
the reference's answer extraction of the LLM commonsense family), the tables print the runs' score under that
rule beside each paper number, labelled, and the text names the rule the scores and verdicts use.

Every generated file is a function of the records alone (no clock, fixed bootstrap seed, PNGs without
timestamps): regenerating from the same records changes no byte.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.harness.config import family_dir, read_yaml
from experiments.harness.errors import UsageError
from experiments.harness.lockcheck import off_lock
from experiments.harness.plan import Key, choose_lr, key_label, load_configs
from experiments.harness.profiles import Profile, load_profile
from experiments.harness.records import check_record, iter_records, read_record, write_bytes_atomic
from experiments.harness.registry import Family, get_family
from experiments.report import stats

LEVEL = 0.95
CLAIM_KINDS = ("superiority", "non-inferiority", "at-least")
MIN_SEEDS = 5  # seeds a claim needs for "supported" or "excluded"
VERDICTS = ("supported", "excluded", "inconclusive", "not exercised")


# -- loading ----------------------------------------------------------------------------------------------------
def load_runs(
    profile: Profile, results_dir: Path, invalid: list[tuple[str, str]] | None = None
) -> tuple[dict[str, list[dict]], dict[Key, Any], list[dict]]:
    """Complete, current records at each (experiment, task)'s chosen rate, grouped by experiment; the choices;
    and every record (for the log). A record that does not check (`check_record`: schema, its path, its score
    against its items, no NaN) is left out, named in one line on stderr, and appended to `invalid` as
    (path, first problem) for the tables to name."""
    configs = load_configs(profile)
    base = results_dir / profile.name / profile.family
    fam = get_family(profile.family)
    every = []
    for path in iter_records(base):
        rec = read_record(path)
        if rec is None:
            continue
        problems = check_record(path, rec, fam)
        if problems:
            print(
                f"invalid run record {path}: {'; '.join(problems)} (left out of the tables)", file=sys.stderr
            )
            if invalid is not None:
                invalid.append((str(path.relative_to(results_dir)), problems[0]))
            continue
        rec["_path"] = str(path.relative_to(results_dir))
        every.append(rec)
    chosen = {key: choose_lr(profile, key, cfg, results_dir) for key, cfg in configs.items()}
    runs: dict[str, list[dict]] = {}
    # Runs of models with random weights (tiny test models) are checks of the code, never findings.
    findings = [r for r in every if not r.get("identity", {}).get("model", {}).get("random_weights")]
    for (name, task), choice in chosen.items():
        if choice is None:
            continue
        from experiments.harness.plan import planned_hash

        want = planned_hash(configs[(name, task)], choice["lr"])
        recs = [r for r in findings if r["experiment"] == name and r.get("task") == task and r.get("status") == "complete"
                and r["lr"] == choice["lr"] and r["seed"] in profile.seeds and r.get("config_hash") == want]  # fmt: skip
        runs.setdefault(name, []).extend(sorted(recs, key=lambda r: r["seed"]))
    return {k: v for k, v in runs.items() if v}, chosen, every


def load_yaml_or_empty(path: Path) -> dict[str, Any]:
    return (read_yaml(path) or {}) if path.is_file() else {}


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    kind: str
    treatment: str
    reference: str | None = None  # every kind but at-least
    power: str | None = None
    control: str | None = (
        None  # the treatment without its addition (default: power, else a superiority reference)
    )

    metric: str | None = None  # None: the family's primary metric
    value: float | None = None  # at-least: the threshold, in points

    def as_dict(self) -> dict[str, Any]:
        """The claim as the verdicts record it (the optional metric and value only where set)."""
        return {k: v for k, v in self.__dict__.items() if v is not None or k not in ("metric", "value")}

    @property
    def control_experiment(self) -> str | None:
        if self.control is not None:
            return self.control
        return self.power or (self.reference if self.kind == "superiority" else None)


def _claim_problem(claim: Claim, fam: type[Family]) -> str | None:
    if claim.kind not in CLAIM_KINDS:
        return f"kind must be one of {CLAIM_KINDS}, got {claim.kind!r}"
    if claim.kind == "at-least":
        if claim.reference is not None or claim.power is not None:
            return "an at-least claim has no reference or power (it compares the treatment with `value`)"
        if isinstance(claim.value, bool) or not isinstance(claim.value, (int, float)):
            return "an at-least claim needs a numeric `value` (points)"
    elif claim.reference is None or claim.value is not None:
        return f"a {claim.kind} claim needs a reference and takes no value"
    if claim.metric is not None:
        if claim.metric not in fam.metrics:
            return f"unknown metric {claim.metric!r} (known: {', '.join(fam.metrics)})"
        if not fam.metrics[claim.metric].higher_is_better:
            return f"metric {claim.metric!r} is lower-is-better; claims read higher-is-better metrics"
    return None


def load_claims(family: str) -> tuple[float, list[Claim]]:
    path = family_dir(family) / "claims.yaml"
    data = load_yaml_or_empty(path)
    if not data:
        return 1.0, []
    margin = data.get("margin")
    if not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f"{path}: margin must be a number >= 0")
    claims = []
    for i, c in enumerate(data.get("claims") or []):
        try:
            claim = Claim(**c)
        except TypeError as e:
            raise ValueError(f"{path}: claims[{i}]: {e}") from None
        if (problem := _claim_problem(claim, get_family(family))) is not None:
            raise ValueError(f"{path}: claims[{i}] ({claim.id}): {problem}")
        claims.append(claim)
    return float(margin), claims


# -- summary ----------------------------------------------------------------------------------------------------
def summarize(fam: type[Family], runs: Mapping[str, list[dict]], n_boot: int = stats.N_BOOT
              ) -> tuple[list[dict], dict[str, stats.ExperimentScores], list[str]]:  # fmt: skip
    """Rows (one per experiment), their scores and the tasks every experiment scored (alignment checked)."""
    tables = {name: stats.item_table(recs) for name, recs in runs.items()}
    tasks = stats.check_alignment(tables)
    if not tasks:
        raise ValueError("no task was scored by every experiment")
    any_table = next(iter(tables.values()))
    n_by_task = {t: len(next(iter(any_table[t].values()))["ids"]) for t in tasks}
    idx = stats.boot_indices(n_by_task, n_boot=n_boot)
    scores = {
        name: stats.score_experiment(tab, tasks, idx, fam.task_scores, 100.0) for name, tab in tables.items()
    }
    from baselines import get_method

    # the method's reading of each record's diagnostics (what the table shows, and a note where one applies)
    read = {name: [get_method(r["method"]).summarize_diagnostics(r.get("diagnostics") or {}) for r in recs]
            for name, recs in runs.items()}  # fmt: skip
    rows = []
    for name, recs in runs.items():
        iv = stats.interval(scores[name], LEVEL)
        first = recs[0]
        rows.append({
            "experiment": name, "method": first["method"], "rank": first["method_params"].get("r"),
            "trainable": first["param_counts"]["trainable"], "head": first["param_counts"]["head"],
            "stored": first["param_counts"]["stored"], "seeds": scores[name].seeds,
            "lrs": sorted({(r.get("task") or "-", r["lr"]) for r in recs}),
            "score": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "seed_sd": iv.seed_sd,
            "seed_variance_known": iv.seed_variance_known,
            "per_task": {t: float(scores[name].per_seed_task[t].mean()) for t in tasks},
            "diagnostics": _mean_summary([x[0] for x in read[name]]),
            "notes": sorted({x[1] for x in read[name] if x[1]}),
            "description": first["config"].get("description", ""),
        })  # fmt: skip
        if fam.paper_metric is not None:
            rows[-1]["paper_metric"] = metric_means(fam.paper_metric, recs, scores[name].seeds, tasks)
    rows.sort(key=lambda r: (r["trainable"], r["experiment"]))
    return rows, scores, tasks


def metric_means(metric: str, recs: list[dict], seeds: list[int], tasks: list[str]) -> dict[str, Any]:
    """100 x a per-task metric of an experiment's records (mean over `seeds`) and its mean over `tasks`, as the
    paper's "avg"; None for a task where a record lacks the metric (and then for the mean)."""
    per_task: dict[str, float | None] = {}
    for t in tasks:
        vals = [r["test"]["per_task"][t].get(metric) for r in recs
                if r["seed"] in seeds and t in r["test"]["per_task"]]  # fmt: skip
        per_task[t] = 100 * float(np.mean(vals)) if vals and None not in vals else None
    known = [v for v in per_task.values() if v is not None]
    score = float(np.mean(known)) if len(known) == len(tasks) else None
    return {"metric": metric, "per_task": per_task, "score": score}


def metric_scores(runs: Mapping[str, list[dict]], metrics: set[str], tasks: list[str], n_boot: int = stats.N_BOOT
                  ) -> dict[str, dict[str, stats.ExperimentScores]]:  # fmt: skip
    """metric -> experiment -> seed-only scores (100 x each record's per-task value) for the claims that name a
    metric; an experiment whose records lack it on some task (e.g. no LoRA-Dash layer to recover with) is left out."""
    out: dict[str, dict[str, stats.ExperimentScores]] = {}
    for metric in sorted(metrics):
        for name, recs in runs.items():
            values = {
                t: {r["seed"]: r["test"]["per_task"].get(t, {}).get(metric) for r in recs} for t in tasks
            }
            if all(v is not None for per_seed in values.values() for v in per_seed.values()):
                out.setdefault(metric, {})[name] = stats.seed_only_scores(values, 100.0, n_boot)  # type: ignore[arg-type]
    return out


def scoring_rules(fam: type[Family], runs: Mapping[str, list[dict]]) -> list[str]:
    """The rules behind the records' primary metric, as the family names them (none for most families)."""
    return sorted({rule for recs in runs.values() for r in recs if (rule := fam.scoring_rule(r))})


def _mean_summary(summaries: list[dict]) -> dict[str, float | None]:
    keys = sorted({k for d in summaries for k in d})
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [d[k] for d in summaries if d.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def changed_predictions(treatment: stats.ItemTable, control: stats.ItemTable) -> dict[str, Any] | None:
    """How many test predictions of the treatment differ from the same seed's control run: per seed (summed over
    tasks), the items, and the fraction (mean over seeds of each task's fraction, then mean over tasks, as the
    score). None where the runs share no seed and task, or the records carry no per-item predictions.
    Class labels are compared exactly; continuous predictions (regression) count any change beyond float
    rounding, so the check errs towards "acted"."""
    tasks = sorted(set(treatment) & set(control))
    seeds = sorted(set.intersection(*(set(treatment[t]) & set(control[t]) for t in tasks))) if tasks else []
    if not seeds or any("predictions" not in treatment[t][s] or "predictions" not in control[t][s]
                        for t in tasks for s in seeds):  # fmt: skip
        return None
    per_seed = {s: 0 for s in seeds}
    fractions = []
    for t in tasks:
        frac = []
        for s in seeds:
            a, b = np.asarray(treatment[t][s]["predictions"]), np.asarray(control[t][s]["predictions"])
            if not np.array_equal(treatment[t][s]["ids"], control[t][s]["ids"]):
                raise stats.AlignmentError(f"task {t} seed {s}: treatment and control scored different items")
            if a.dtype.kind == "f" or b.dtype.kind == "f":
                diff = ~np.isclose(a.astype(float), b.astype(float), rtol=1e-6, atol=1e-9)
            else:
                diff = a != b
            per_seed[s] += int(diff.sum())
            frac.append(float(diff.mean()))
        fractions.append(float(np.mean(frac)))
    items = sum(len(treatment[t][seeds[0]]["ids"]) for t in tasks)
    return {"seeds": seeds, "changed": [per_seed[s] for s in seeds], "items": items,
            "fraction": float(np.mean(fractions))}  # fmt: skip


RANK_EFFECT_SDS = 3.0  # a rank effect counts when the mean gain exceeds this many seed standard deviations


def rank_effects(
    rows: list[dict], scores: Mapping[str, stats.ExperimentScores], tasks: list[str]
) -> list[dict]:
    """Per task and per method run at several ranks, each rank against that method's lowest: the gain in mean
    score, the pooled seed sd of the two experiments (None with one seed each) and whether the gain exceeds
    RANK_EFFECT_SDS of them. A screen of where rank matters (the regime the efficiency claims need), not a
    verdict: with 2 seeds the sd is rough."""
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        if r["rank"]:
            by_method.setdefault(r["method"], []).append(r)
    out = []
    for method_rows in by_method.values():
        ranked = sorted(method_rows, key=lambda r: r["rank"])
        if len({r["rank"] for r in ranked}) < 2:
            continue
        low = ranked[0]
        for task in tasks:
            a = scores[low["experiment"]].per_seed_task[task]
            for r in ranked[1:]:
                b = scores[r["experiment"]].per_seed_task[task]
                df = len(a) + len(b) - 2
                ss = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
                sd = float(np.sqrt(ss / df)) if df > 0 else None
                gain = float(b.mean() - a.mean())
                out.append({"task": task, "method": low["method"], "low": low["experiment"],
                            "high": r["experiment"], "low_rank": low["rank"], "high_rank": r["rank"], "gain": gain,
                            "pooled_seed_sd": sd, "seeds": (len(a), len(b)),
                            "effect": None if sd is None else bool(gain > RANK_EFFECT_SDS * sd)})  # fmt: skip
    return out


def grid_edges(chosen: Mapping[Key, Any]) -> dict[str, str]:
    """{run label: "lowest"/"highest"} where the chosen rate sits at an end of a grid of 3 or more points: the
    optimum may lie outside the grid (widen it and rerun). Grids of 1-2 points are not searches and are not flagged."""
    out = {}
    for key, c in chosen.items():
        if c is None:
            continue
        grid = sorted(float(k) for k in c["scores"])
        if len(grid) >= 3 and c["lr"] in (grid[0], grid[-1]):
            out[key_label(key)] = "lowest" if c["lr"] == grid[0] else "highest"
    return out


def last_checkpoint_best(runs: Mapping[str, list[dict]]) -> dict[str, int]:
    """{experiment: number of its runs whose best validation step is the last one}: such a run may not have
    plateaued, so it could have gained from more steps."""
    out = {}
    for exp, recs in runs.items():
        n = sum(
            1
            for r in recs
            if (curve := r.get("validation_curve")) and r.get("best_step") == curve[-1]["step"]
        )
        out[exp] = n
    return out


def judge(
    claims: list[Claim],
    margin: float,
    scores: Mapping[str, stats.ExperimentScores],
    checks: Mapping[str, Mapping[str, Any]] | None = None,
    metric_scores: Mapping[str, Mapping[str, stats.ExperimentScores]] | None = None,
) -> dict[str, Any]:
    """Every claim whose experiments ran, with power checks, at the Bonferroni-adjusted level. `checks`: per claim
    id, its manipulation check (`changed_predictions` of treatment vs control, plus the method's measures).
    `metric_scores`: metric -> experiment -> scores, for claims that name a metric (an experiment without it
    skips them)."""

    def pool(metric: str | None) -> Mapping[str, stats.ExperimentScores]:
        return scores if metric is None else (metric_scores or {}).get(metric, {})

    active = [c for c in claims
              if c.treatment in pool(c.metric) and (c.reference is None or c.reference in pool(c.metric))]  # fmt: skip
    powers = sorted({(c.metric or "", c.reference, c.power) for c in active
                     if c.power and c.reference and c.power in pool(c.metric)})  # fmt: skip
    m = len(active) + len(powers)
    level = 1 - (1 - LEVEL) / max(1, m)
    threshold = margin / 100  # fraction of changed predictions below which a treatment did not act
    power_rows = {}
    for metric, ref, small in powers:
        iv = stats.difference(pool(metric or None)[ref], pool(metric or None)[small], level)
        power_rows[(metric, ref, small)] = {
            "bigger": ref,
            "smaller": small,
            **({"metric": metric} if metric else {}),
            **iv.as_dict(),
            "has_power": bool(iv.low > 0),
        }
    out = []
    for c in active:
        sc = pool(c.metric)
        if c.kind == "at-least":
            assert c.value is not None
            iv = stats.interval(sc[c.treatment], level)
            verdict, finding = _at_least_rule(iv.low, iv.high, c.value)
        else:
            assert c.reference is not None
            iv = stats.difference(sc[c.treatment], sc[c.reference], level)
            verdict, finding = _rule(c.kind, iv.low, iv.high, margin)
        reason = ""
        check = dict((checks or {}).get(c.id) or {})
        changed = check.get("changed")
        if changed is not None:
            check["acted"] = bool(changed["fraction"] >= threshold and changed["fraction"] > 0)
        if not iv.seed_variance_known:
            verdict, reason = "inconclusive", "fewer than 2 seeds: seed-to-seed noise cannot be estimated"
        elif iv.n_seeds < MIN_SEEDS and verdict != "inconclusive":
            verdict, reason = "inconclusive", (f"{iv.n_seeds} seeds: a verdict needs at least {MIN_SEEDS} "
                                               f"(the interval alone would read: {finding})")  # fmt: skip
        p = power_rows.get((c.metric or "", c.reference, c.power)) if c.power else None
        if c.power and verdict == "supported" and (p is None or not p["has_power"]):
            verdict, reason = (
                "inconclusive",
                (
                    f"no power: {c.reference} is not itself better than {c.power} here, so matching it shows nothing"
                    if p is not None
                    else f"no power check: {c.power} was not run"
                ),
            )
        if check.get("acted") is False:
            verdict, reason = "not exercised", (
                f"{c.treatment} changed {_changed_text(changed)} of the test predictions of {check['control']} "
                f"(same seeds), under the {100 * threshold:g}% that a difference of {margin:g} point(s) needs; "
                + (f"in effect {c.reference} was compared with itself" if check["control"] == c.reference
                   else f"in effect the runs compared {check['control']} with {c.reference}"))  # fmt: skip
        out.append({"claim": c.as_dict(), **iv.as_dict(), "verdict": verdict, "finding": finding, "reason": reason,
                    "manipulation": check or None})  # fmt: skip
    skipped = [c.id for c in claims if c not in active]
    return {"level": level, "tests": m, "margin": margin, "min_seeds": MIN_SEEDS, "acted_threshold": threshold,
            "claims": out, "power": list(power_rows.values()), "skipped": skipped}  # fmt: skip


def _rule(kind: str, low: float, high: float, margin: float) -> tuple[str, str]:
    """The verdict an interval [low, high] of (treatment - reference) gives, and what it shows in words."""
    m = f"{margin:g} point{'' if margin == 1 else 's'}"
    if kind == "superiority":
        if low > 0:
            return "supported", "a gain shown" + (
                f", and one of {m} or more excluded" if high < margin else ""
            )
        if high < margin:
            return "excluded", f"a gain of {m} or more excluded"
        return "inconclusive", f"neither a gain shown nor one of {m} or more excluded"
    if low > -margin:
        return "supported", f"a loss of {m} or more excluded"
    if high < -margin:
        return "excluded", f"a loss of under {m} excluded (worse by more than {m})"
    return "inconclusive", f"neither a loss of {m} or more excluded nor shown"


def _at_least_rule(low: float, high: float, value: float) -> tuple[str, str]:
    """The verdict of an at-least claim from the interval of the treatment's own score, and its finding."""
    if low > value:
        return "supported", f"a score of {value:g} or more shown"
    if high < value:
        return "excluded", f"a score of {value:g} excluded"
    return "inconclusive", f"neither a score of {value:g} shown nor excluded"


def _changed_text(changed: Mapping[str, Any]) -> str:
    lo, hi = min(changed["changed"]), max(changed["changed"])
    per = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{per} of {changed['items']:,} per seed ({100 * changed['fraction']:.2f}%)"


def manipulation_checks(claims: list[Claim], runs: Mapping[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per claim with a control that ran: the changed predictions of the treatment against its control, and the
    treatment method's own measures of how far its addition moved (mean over its records; None = not measured)."""
    from baselines import get_method

    out: dict[str, dict[str, Any]] = {}
    for c in claims:
        ctrl = c.control_experiment
        if c.treatment not in runs or ctrl is None or ctrl not in runs:
            continue
        recs = runs[c.treatment]
        method = get_method(recs[0]["method"])
        measures: dict[str, list[float]] = {}
        for r in recs:
            for k, v in method.manipulation_measures(r.get("diagnostics") or {}).items():
                measures.setdefault(k, [])
                if v is not None:
                    measures[k].append(v)
        out[c.id] = {
            "control": ctrl,
            "changed": changed_predictions(stats.item_table(recs), stats.item_table(runs[ctrl])),
            "measures": {k: float(np.mean(v)) if len(v) == len(recs) else None for k, v in measures.items()},
        }
    return out


def overall(judged: dict[str, Any]) -> str:
    kinds = [c["verdict"] for c in judged["claims"]]
    if not kinds:
        return "no verdict: none of the claims' experiments ran"
    counts = {k: kinds.count(k) for k in VERDICTS}
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) + f" (of {len(kinds)} claims)"


# -- writing ----------------------------------------------------------------------------------------------------
def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def _paper(family: str) -> dict[str, Any]:
    return load_yaml_or_empty(family_dir(family) / "paper.yaml")


def write_tables(
    family: str, profile_name: str, results_dir: str | Path, n_boot: int = stats.N_BOOT
) -> list[Path]:
    results_dir = Path(results_dir)
    profile = load_profile(family, profile_name)
    fam = get_family(family)
    out_dir = results_dir / profile.name / family
    out_dir.mkdir(parents=True, exist_ok=True)
    invalid: list[tuple[str, str]] = []
    runs, chosen, every = load_runs(profile, results_dir, invalid)
    written = [_write_log(every, out_dir / "LOG.md", profile.name, family)]
    written += fam.write_artifacts([r for r in every if r.get("status") == "complete"], out_dir)
    if not runs:
        note = out_dir / "table.md"
        random = sum(bool(r.get("identity", {}).get("model", {}).get("random_weights")) for r in every)
        why = (f"its {random} run record(s) are of models with random weights (checks of the code, not findings)"
               if random else "no complete runs at a chosen learning rate yet")  # fmt: skip
        _write(note, f"# {family} / {profile.name}\n\nNo table: {why}. Run `make reproduce FAMILY={family} "
                     f"PROFILE={profile.name}` with real models.\n" + _invalid_md(invalid))  # fmt: skip
        return [*written, note]
    rows, scores, tasks = summarize(fam, runs, n_boot)
    margin, claims = load_claims(family)
    judged = judge(
        claims,
        margin,
        scores,
        manipulation_checks(claims, runs),
        metric_scores(runs, {c.metric for c in claims if c.metric}, tasks, n_boot),
    )
    paper = _paper(family)
    rules = scoring_rules(fam, runs)
    effects = rank_effects(rows, scores, tasks)
    finished = max((r.get("finished_at") or "" for recs in runs.values() for r in recs), default="")
    header = (f"Generated by `make tables` from {sum(len(v) for v in runs.values())} run records (the last finished "
              f"{finished or '?'}); never edit by hand.")  # fmt: skip

    table_csv = io.StringIO()
    w = csv.writer(table_csv, lineterminator="\n")
    pmc = [fam.paper_metric, *(f"{t}:{fam.paper_metric}" for t in tasks)] if fam.paper_metric else []
    w.writerow(["experiment", "method", "rank", "trainable", "head", "stored", "seeds", "score", "ci_low", "ci_high",
                "seed_sd", *tasks, *pmc])  # fmt: skip
    for r in rows:
        pm_cells = ([_fmt(r["paper_metric"]["score"], ".2f"), *(_fmt(r["paper_metric"]["per_task"][t], ".2f")
                     for t in tasks)] if fam.paper_metric else [])  # fmt: skip
        w.writerow([r["experiment"], r["method"], r["rank"], r["trainable"], r["head"], r["stored"], len(r["seeds"]),
                    f"{r['score']:.2f}", f"{r['ci_low']:.2f}", f"{r['ci_high']:.2f}", _fmt(r["seed_sd"], ".2f"),
                    *(f"{r['per_task'][t]:.2f}" for t in tasks), *pm_cells])  # fmt: skip
    _write(out_dir / "table.csv", table_csv.getvalue())
    _write(out_dir / "table.md",
           _table_md(fam, profile, rows, tasks, chosen, paper, header, runs, rules, effects) + _invalid_md(invalid))  # fmt: skip
    _write(out_dir / "verdict.md", _verdict_md(fam, profile, rows, judged, header, rules))
    png = io.BytesIO()
    _plot(fam, rows, scores, tasks, png, f"{family} / {profile.name}")
    _write(out_dir / "score_vs_params.png", png.getvalue())
    summary = {"rows": rows, "verdict": {**judged, "overall": overall(judged)}, "tasks": tasks,
               "chosen_lr": {key_label(k): v for k, v in chosen.items()}}  # fmt: skip
    if rules:
        summary["scoring_rules"] = rules
    if effects:
        summary["rank_effects"] = effects
    if off := off_lock_runs(runs):
        summary["off_lock"] = off
    _write(
        out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True, default=_json_default) + "\n"
    )
    return [*written, *(out_dir / n for n in ("table.md", "table.csv", "verdict.md", "score_vs_params.png",
                                              "summary.json"))]  # fmt: skip


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))


def _write(path: Path, content: str | bytes) -> None:
    """Write a generated file atomically (a temp file in the same folder, then os.replace): a reader, or a full
    disk, never leaves a half-written file; what was there stays until the new one is whole. An unwritable folder
    or a full disk is the user's to fix: one line (UsageError)."""
    data = content.encode() if isinstance(content, str) else content
    if path.is_file() and path.read_bytes() == data:  # untouched files keep their bytes and mtime
        return
    try:
        write_bytes_atomic(path, data, prefix=f".{path.name}.tmp-", mode=0o644)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise UsageError(f"cannot write {path} ({why}); the files there are kept as they were") from e


def _invalid_md(invalid: list[tuple[str, str]]) -> str:
    """A short section naming the records left out (none: nothing, so that committed tables keep their bytes)."""
    if not invalid:
        return ""
    lines = ["", f"## Run records left out ({len(invalid)}): they do not check", ""]
    lines += [f"- {path}: {problem}" for path, problem in sorted(invalid)]
    return "\n".join(lines) + "\n"


def _table_md(fam, profile, rows, tasks, chosen, paper, header, runs, rules, effects=()) -> str:
    first = next(iter(runs.values()))[0]
    pm = paper.get("experiments", {})
    paper_model = paper.get("model", fam.paper_model)
    metric_desc = fam.metrics[fam.primary_metric].description or fam.primary_metric
    by_rule = f" The {fam.primary_metric} here is read by " + "; ".join(rules) + "." if rules else ""
    rule_col = bool(pm) and fam.paper_metric is not None  # the runs' score under the paper's rule, beside it
    # the paper's numbers in columns of their own (never inside this run's cells), one per task of this table it
    # reports; its average only where this table has every task the average is over (else it reads as this run's)
    paper_all = sorted(
        {t for e in pm.values() for t, v in e.items() if t != "avg" and isinstance(v, (int, float))}
    )
    paper_tasks = [] if rule_col else [t for t in tasks if any(t in e for e in pm.values())]
    show_avg = bool(pm) and (rule_col or set(paper_all) <= set(tasks))
    lines = [
        f"# {fam.name} / profile `{profile.name}`", "", header, "", profile.description.strip(), "",
        f"Model: {first['config']['model']['name']}; protocol: {first['test']['protocol']}. Score: 100 x "
        f"{fam.primary_metric} ({metric_desc}) per task, mean over tasks. Test items per task: "
        + ", ".join(f"{t} {len(next(iter(stats.item_table(runs[rows[0]['experiment']])[t].values()))['ids'])}"
                    for t in tasks) + "." + by_rule,
        "",
        "[95% CI]: seed-aware interval (seed-to-seed variance + test-item bootstrap, t with Satterthwaite df; "
        "experiments/report/stats.py). seed sd: standard deviation of the per-seed scores. Trainable parameters exclude "
        "the head (classifier, trained by every method), shown apart.",
        "",
        "| experiment | trainable | head | seeds | score [95% CI] | seed sd | " + " | ".join(tasks)
        + (f" | avg, paper's rule ({fam.paper_metric})" if rule_col else "")
        + "".join(f" | paper: {t} ({paper_model})" for t in paper_tasks)
        + (f" | paper avg over its {len(paper_all)} tasks ({paper_model}) |" if show_avg else " |"),
        "|---|---:|---:|---:|---|---:|" + "---:|" * len(tasks) + ("---:|" if rule_col else "")
        + "---:|" * len(paper_tasks) + ("---:|" if show_avg else ""),
    ]  # fmt: skip
    off = {
        e
        for e, recs in runs.items()
        if any(off_lock(x.get("provenance", {}).get("packages", {})) for x in recs)
    }
    for r in rows:
        p = pm.get(r["experiment"], {})
        ref = r["paper_metric"] if rule_col else None
        lines.append(
            f"| {r['experiment']}{' †' if r['experiment'] in off else ''} | {r['trainable']:,} | {r['head']:,} | {len(r['seeds'])} | {r['score']:.1f} "
            f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] | {_fmt(r['seed_sd'] if r['seed_variance_known'] else None)} | "
            + " | ".join(f"{r['per_task'][t]:.1f}" + (_paper_cell(p.get(t), ref["per_task"][t] if ref else None,
                                                                True) if rule_col else "") for t in tasks)
            + (f" | {_fmt(ref['score'])}" if ref else " | -" if rule_col else "")
            + "".join(f" | {_fmt(p.get(t))}" for t in paper_tasks)
            + (f" | {_fmt(p.get('avg'))} |" if show_avg else " |")
        )  # fmt: skip
    if rule_col:
        desc = fam.metrics[fam.paper_metric].description or fam.paper_metric
        lines += ["", f"(paper's rule a; paper b) in a task column: a = the run's 100 x {fam.paper_metric} ({desc}), "
                      f"the rule the paper's numbers were scored by; b = the paper's number for that task, on "
                      f"{paper_model} ({paper.get('source', 'the paper')}). `avg, paper's rule`: the mean of a over "
                      f"this table's tasks, to set beside `paper avg` (the paper's mean over its own tasks). The score "
                      f"and the plain task numbers are 100 x {fam.primary_metric}. Comparable with the paper only at "
                      f"its model and scale."]  # fmt: skip
    elif pm:
        lines += ["", f"`paper:` columns: the paper's number for that task and method, on {paper_model} "
                      f"({paper.get('source', 'the paper')}); a different model and scale, for reference only"
                  + ("." if show_avg else f"; its average is over {len(paper_all)} tasks, not this table's, and is "
                     "left out.")]  # fmt: skip
    diag_rows = [r for r in rows if r["diagnostics"]]
    if diag_rows:
        keys = sorted({k for r in diag_rows for k in r["diagnostics"]})
        lines += ["", "## Method diagnostics (mean over the runs)", "", "| experiment | " + " | ".join(keys) + " |",
                  "|---|" + "---:|" * len(keys)]  # fmt: skip
        for r in diag_rows:
            lines.append(
                f"| {r['experiment']} | "
                + " | ".join(
                    "not measured" if r["diagnostics"].get(k) is None else _fmt(r["diagnostics"][k], ".3g")
                    for k in keys
                )  # fmt: skip
                + " |"
            )
    lines += _off_lock_md(runs)
    lines += _rank_effect_md(effects)
    late = last_checkpoint_best(runs)
    if any(late.values()):
        lines += ["", "Runs whose best validation was their last (they may not have plateaued): "
                  + ", ".join(f"{e} {n} of {len(runs[e])}" for e, n in sorted(late.items()) if n) + "."]  # fmt: skip
    lines += ["", "## Learning rates chosen on the validation split", ""]
    edges = grid_edges(chosen)
    for key, c in sorted(chosen.items(), key=lambda kv: key_label(kv[0])):
        edge = edges.get(key_label(key))
        lines.append(f"- {key_label(key)}: " + ("tuning incomplete" if c is None else f"{c['lr']:g} ({c['metric']}: "
                     + ", ".join(f"{k} -> {v:.4f}" for k, v in c["scores"].items()) + ")")
                     + (f"; **the {edge} rate of its grid: the optimum may lie outside it**" if edge else ""))  # fmt: skip
    return "\n".join(lines) + "\n"


def _rank_effect_md(effects: list[dict] | tuple = ()) -> list[str]:
    if not effects:
        return []
    lines = ["", "## Rank effect: each rank of a method against its lowest", "",
             "Where rank matters: the gain in mean score over the method's lowest rank, against the seed-to-seed spread (sd pooled over "
             f"the two experiments' seeds). A gain above {RANK_EFFECT_SDS:g} pooled sd marks a rank effect, the regime "
             "in which matching a higher-rank LoRA with fewer parameters means something. A screen, not a verdict: "
             + (f"the pooled sd rests on {df} degrees of freedom or more." if (df := min(sum(e["seeds"]) - 2 for e in effects))
              else "with one seed each there is no seed spread to set a gain against."), "",
             "| task | comparison | gain | pooled seed sd | seeds | rank effect |", "|---|---|---:|---:|---|---|"]  # fmt: skip
    for e in effects:
        mark = "- (one seed each)" if e["effect"] is None else (
            f"yes (> {RANK_EFFECT_SDS:g} sd)" if e["effect"] else "no")  # fmt: skip
        lines.append(f"| {e['task']} | {e['high']} vs {e['low']} | {e['gain']:+.1f} | {_fmt(e['pooled_seed_sd'], '.2f')} "
                     f"| {e['seeds'][1]} vs {e['seeds'][0]} | {mark} |")  # fmt: skip
    return lines


def off_lock_runs(runs: Mapping[str, list[dict]]) -> dict[str, dict[str, tuple[str, str]]]:
    """{run label: {package: (version, locked)}} for the records made with other releases than requirements.lock."""
    out = {}
    for exp, recs in runs.items():
        for r in recs:
            diff = off_lock(r.get("provenance", {}).get("packages", {}))
            if diff:
                out[
                    f"{exp} {r.get('task') or ''} seed {r.get('seed')} lr {r.get('lr'):g}".replace("  ", " ")
                ] = diff
    return out


def _off_lock_md(runs: Mapping[str, list[dict]]) -> list[str]:
    off = off_lock_runs(runs)
    if not off:
        return []  # every record was made with the locked releases (the usual case: nothing to say)
    lines = ["", f"## Records made with other package versions than requirements.lock ({len(off)} of "
                 f"{sum(len(v) for v in runs.values())})", "",
             "They are in the table above, their experiments marked †; a result of other versions may differ from a rerun with the lock.", ""]  # fmt: skip
    for label, diff in sorted(off.items()):
        lines.append(
            f"- {label}: " + ", ".join(f"{n} {v} (lock {lk})" for n, (v, lk) in sorted(diff.items()))
        )
    return lines


def _paper_cell(paper: float | None, under_rule: float | None, with_rule: bool) -> str:
    """What follows a run's task score in the paper-rule tables: the run's score under the paper's rule, and the
    paper's number."""
    if paper is None:
        return ""
    return f" (paper's rule {_fmt(under_rule)}; paper {paper:.1f})" if with_rule else f" ({paper:.1f})"


def _verdict_md(fam, profile, rows, judged, header, rules) -> str:
    pct = 100 * judged["level"]
    mg = f"{judged['margin']:g}"
    by_name = {r["experiment"]: r for r in rows}
    rule_col = fam.paper_metric is not None  # the runs' score under the paper's rule, beside its numbers
    scored = f" Scores: 100 x {fam.primary_metric} read by " + "; ".join(rules) + "." if rules else ""
    if rule_col:
        desc = fam.metrics[fam.paper_metric].description or fam.paper_metric
        scored += (f" The paper's numbers quoted in the claims are scored by {desc}: the last column gives the "
                   f"runs' {fam.paper_metric} under that rule (points, mean over seeds and tasks) to set beside them; "
                   f"the verdicts are judged on {fam.primary_metric}.")  # fmt: skip
    lines = [
        f"# Verdicts: {fam.name} / `{profile.name}`", "", header, "",
        f"**Overall at this scale: {overall(judged)}.**", "",
        "Rule (experiments/report/tables.py): the interval of (treatment - reference) in points, seed-aware and paired by "
        f"seed (never narrower than the plain paired t over seeds); margin {mg} point(s). Superiority: supported if "
        f"the interval lies above 0 (a gain shown), excluded if it lies below +{mg} (a gain of {mg} or more "
        f"excluded). Non-inferiority: supported if it lies above -{mg} (a loss of {mg} or more excluded), excluded "
        f"if below -{mg}. The superiority rule is asymmetric: any gain supports \"beats\", only a gain that "
        f"matters ({mg} or more) is ruled out, so an interval inside (0, +{mg}) supports the claim with a gain "
        f"smaller than the margin. Supported or excluded needs at least {judged['min_seeds']} seeds; with fewer "
        "the verdict is inconclusive and says what the interval alone would read. A non-inferiority claim against "
        "a bigger reference is supported only if that reference itself beats the smaller LoRA (power check). "
        "Manipulation check: the claim's treatment against its control (the same seeds without the treatment's "
        "addition, e.g. LoRA-Dash against LoRA at its rank): if it changed fewer than "
        f"{100 * judged['acted_threshold']:g}% of the control's test predictions (mean over seeds), it cannot "
        f"have moved an accuracy by {mg} point(s) on any seed, and the claim is *not exercised* whatever its "
        f"interval. All {judged['tests']} tests at the Bonferroni-adjusted level {pct:.2f}% (family-wise "
        f"95%).{scored}" + _extended_rules(judged), "",
        "| claim | treatment - reference (points) | interval | seeds | verdict |"
        + (f" {fam.paper_metric}: treatment / reference |" if rule_col else ""),
        "|---|---|---|---:|---|" + ("---|" if rule_col else ""),
    ]  # fmt: skip
    for c in judged["claims"]:
        cl = c["claim"]
        under = (
            [by_name[cl[k]]["paper_metric"]["score"] if cl[k] else None for k in ("treatment", "reference")]
            if rule_col else []
        )  # fmt: skip
        on = f" ({cl['metric']})" if cl.get("metric") else ""
        compared = (f"{cl['treatment']}{on}: {c['estimate']:.2f} vs {cl['value']:g}" if cl["kind"] == "at-least"
                    else f"{cl['treatment']} - {cl['reference']}{on}: {c['estimate']:+.2f}")  # fmt: skip
        lines.append(f"| {cl['statement']} | {compared} | "
                     f"[{c['low']:+.2f}, {c['high']:+.2f}] | {c['n_seeds']}{'' if c['paired'] else ' (unpaired)'} | "
                     f"**{c['verdict']}**: {c['reason'] or c['finding']} |"
                     + (f" {_fmt(under[0])} / {_fmt(under[1])} |" if rule_col else ""))  # fmt: skip
    if not judged["claims"]:
        lines.append(
            "| - | no claim has both experiments in this profile | - | - | - |" + (" - |" if rule_col else "")
        )
    lines += _wide_md(judged)
    if judged["skipped"]:
        lines += [
            "",
            "Not judged (an experiment is not in this profile): " + ", ".join(judged["skipped"]) + ".",
        ]
    lines += _manipulation_md(judged)
    lines += ["", "## Power: does the bigger reference beat the smaller LoRA here?", ""]
    if judged["power"]:
        lines += ["| bigger | smaller | difference (points) | interval | power |", "|---|---|---|---|---|"]
    else:
        lines += ["No claim judged here needs a power check (none compares against a bigger reference)."]
    for p in judged["power"]:
        lines.append(f"| {p['bigger']} | {p['smaller']} | {p['estimate']:+.2f} | [{p['low']:+.2f}, {p['high']:+.2f}] | "
                     f"{'yes' if p['has_power'] else 'no'} |")  # fmt: skip
    if any(not p["has_power"] for p in judged["power"]):
        lines += ["", "Where a bigger reference is not significantly better than the smaller LoRA, \"matching it\" "
                      "cannot be told apart from \"matching plain LoRA at the same rank\": those claims stay "
                      "inconclusive whatever the treatment scores."]  # fmt: skip
    notes = [(r["experiment"], n) for r in rows for n in r["notes"]]
    if notes:
        lines += ["", "## Notes from the methods", ""] + [f"- {e}: {n}" for e, n in notes]
    unknown = [r["experiment"] for r in rows if not r["seed_variance_known"]]
    if unknown:
        lines += ["", f"One seed only ({', '.join(unknown)}): their intervals cover test items, not seeds."]
    return "\n".join(lines) + "\n"


def _wide_md(judged: dict[str, Any]) -> list[str]:
    """One line where an interval is wider than twice the margin on either side: why (few seed degrees of freedom
    at the Bonferroni level), with the t quantiles that make it so."""
    from scipy import stats as sps

    wide = [c for c in judged["claims"] if (c["high"] - c["low"]) / 2 > 2 * judged["margin"]]
    if not wide:
        return []
    k = min(c["n_seeds"] for c in wide)
    q = 0.5 + judged["level"] / 2

    def t(df: float) -> float:
        return float(sps.t.ppf(q, df))

    names = ", ".join(f"{c['claim']['id']} +-{(c['high'] - c['low']) / 2:.1f}" for c in wide)
    return ["", f"Why some intervals are wide ({names}): with {k} seeds the seed-to-seed term has at most {k - 1} "
                f"degrees of freedom (fewer where Satterthwaite's approximation weighs unequal variances), and at the "
                f"{100 * judged['level']:.2f}% level the t quantile is {t(max(k - 1, 1)):.1f} at {max(k - 1, 1)} df "
                f"and {t(1):.1f} at 1 df, against {t(4):.1f} with 5 seeds and {t(1000):.1f} with many: more seeds "
                "narrow them fastest."]  # fmt: skip


def _manipulation_md(judged: dict[str, Any]) -> list[str]:
    checked = [c for c in judged["claims"] if c["manipulation"]]
    if not checked:
        return []
    keys = sorted({k for c in checked for k in c["manipulation"]["measures"]})
    lines = ["", "## Manipulation check: did the treatment act?", "",
             "Test predictions of the treatment that differ from its control's on the same seed (per seed), and the "
             "treatment method's own measures (mean over its runs; \"not measured\" where its records predate "
             "the measure). Only the changed predictions decide.", "",
             "| claim | treatment vs control | changed predictions per seed | acted | " + " | ".join(keys) + " |",
             "|---|---|---|---|" + "---:|" * len(keys)]  # fmt: skip
    for c in checked:
        m = c["manipulation"]
        ch = m["changed"]
        acted = "not measured" if ch is None else "yes" if m["acted"] else "**no**"
        cells = [_fmt(m["measures"].get(k), ".3g") if m["measures"].get(k) is not None else "not measured"
                 for k in keys]  # fmt: skip
        lines.append(f"| {c['claim']['id']} | {c['claim']['treatment']} vs {m['control']} | "
                     f"{'-' if ch is None else _changed_text(ch)} | {acted} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def _extended_rules(judged: dict[str, Any]) -> str:
    """The rule text of claim kinds and fields other families do not use (empty when no claim uses them, so
    those families' verdicts keep their bytes)."""
    claims = [c["claim"] for c in judged["claims"]]
    text = ""
    if any(c["kind"] == "at-least" for c in claims):
        text += (
            " At-least (the treatment's own score against a stated value; the interval column is then the "
            "treatment's score): supported if the interval lies above the value, excluded if below it."
        )
    if metrics := sorted({c["metric"] for c in claims if c.get("metric")}):
        text += (
            f" Claims on {', '.join(metrics)} read 100 x that per-run value of the records, with seed-to-seed "
            "noise only (no per-item resampling); power checks of such claims are on the same metric."
        )
    return text


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer parameters and a higher score."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any(
            (x2 <= x and y2 > y) or (x2 < x and y2 >= y) for j, (x2, y2) in enumerate(points) if j != i
        ):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _plot(fam, rows, scores, tasks, path: Path | io.BytesIO, title: str) -> None:
    """Score against trainable parameters, one panel per task (and the mean) in a grid: each experiment a point
    with its 95% interval, coloured by method (the same colour in every plot) and named in the legend, not on the
    axes, so that close points never print their names over one another; the Pareto frontier drawn when two or
    more experiments lie on it."""
    from experiments.harness import plotstyle

    plt = plotstyle.pyplot()
    panels: list[str | None] = [None, *tasks] if len(tasks) > 1 else list(tasks)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.5 * nrows), squeeze=False)
    markers = plotstyle.experiment_markers((r["experiment"], r["method"], r["rank"]) for r in rows)
    xs = [max(r["trainable"], 1) for r in rows]
    shown_x = plotstyle.dodge(xs, plotstyle.log_scale(xs))  # equal counts side by side
    handles: dict[str, Any] = {}
    for ax, task in zip(axes.flat, panels, strict=False):
        pts = []
        for r, x, shown in zip(rows, xs, shown_x, strict=True):
            iv = stats.interval(scores[r["experiment"]], LEVEL, task)
            pts.append((x, iv.estimate))
            h = ax.errorbar([shown], [iv.estimate], yerr=[[iv.estimate - iv.low], [iv.high - iv.estimate]],
                            marker=markers[r["experiment"]], ms=6, capsize=3, ls="none",
                            color=plotstyle.method_color(r["method"]))  # fmt: skip
            handles.setdefault(f"{r['experiment']} ({plotstyle.count(r['trainable'])})", h)
        front = pareto(pts)
        if len(front) > 1:
            (h,) = ax.step(
                [shown_x[i] for i in front], [pts[i][1] for i in front], "k--", lw=0.8, where="post"
            )
            handles.setdefault("Pareto frontier (no run with fewer parameters scores higher)", h)
        chance = [fam.chance[t] for t in ([task] if task else tasks) if t in fam.chance]
        if chance and len(chance) == (1 if task else len(tasks)):
            level, (low, high) = 100 * float(np.mean(chance)), ax.get_ylim()
            if low <= level <= high:  # drawn where it is in view; never stretching the axis down to it
                h = ax.axhline(level, color="grey", lw=0.8, ls=":")
                handles.setdefault("chance (a trivial predictor)", h)
            else:
                ax.text(0.01, 0.01, f"chance: {level:.1f}", transform=ax.transAxes, fontsize=7, color="grey")
        plotstyle.parameter_axis(ax, xs)
        ax.set_xlabel("trainable parameters (head excluded)")
        ax.set_ylabel(fam.score_label(task))
        ax.set_title(task or "mean over tasks", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: test score against trainable parameters (bars: 95% interval)", fontsize=10)
    fig.legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=7,
               frameon=False)  # fmt: skip
    fig.tight_layout()
    plotstyle.save(fig, path)


def _write_log(every: list[dict], path: Path, profile: str, family: str) -> Path:
    lines = [f"# Run log: {family} / `{profile}` (generated from run records, failures included)", "",
             "| finished (UTC) | experiment | task | seed | lr | status | score | wall time | commit |",
             "|---|---|---|---:|---:|---|---:|---:|---|"]  # fmt: skip
    for r in sorted(every, key=lambda r: (r.get("finished_at") or r.get("started_at", ""), r["_path"])):
        score = (
            f"{100 * r['test']['score']:.1f}"
            if r.get("status") == "complete" and "score" in r.get("test", {})
            else "-"
        )
        git = r.get("provenance", {}).get("git", {})
        commit = (git.get("commit") or "?")[:8] + ("+dirty" if git.get("dirty") else "")
        err = f" ({r['error'][:60]})" if r.get("error") else ""
        lines.append(f"| {r.get('finished_at') or r.get('started_at')} | {r['experiment']} | {r.get('task') or '-'} | "
                     f"{r['seed']} | {r['lr']:g} | {r.get('status')}{err} | {score} | {r.get('wall_time_s', 0):.0f} s | "
                     f"{commit} |")  # fmt: skip
    _write(path, "\n".join(lines) + "\n")
    return path
