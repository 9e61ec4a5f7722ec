"""TSD analysis (`python -m experiments analyze`, issue 9): the paper's own questions about task-specific
directions (TSDs), measured on this project's runs.

From the LoRA-Dash run records (always):
- where the chosen directions sit in the singular spectrum of W (the paper: at small but not the smallest sigma);
- |lambda| against sigma of the chosen directions at the end of training;
- stability of the choice across seeds (Jaccard overlap of the index sets, against chance).
With `train=True`, a short real probe (`experiments.analysis.tsd_probe`): do the s directions chosen after t LoRA steps
match the directions a full fine-tuning update changes most, by t and by rank?

Writes `results/<profile>/<family>/analysis/`: analysis.md, analysis.json, positions.png, lambda_sigma.png (when a
record carries lambda), and from the probe prediction.json (kept, so that a later record-only analysis still
reports it), prediction.png and spectrum.png. Same inputs, same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analysis import tsd_report as report
from experiments.analysis.tsd_probe import ProbeResult, ProbeSettings, run_probe
from experiments.analysis.tsd_report import BINS, EDGE
from experiments.harness.config import ExperimentConfig, MethodConfig, _build, load_experiment, sections_for
from experiments.harness.loading import quiet_libraries
from experiments.harness.profiles import experiment_config, load_profile
from experiments.harness.records import iter_records, read_record

DASH_METHOD = "loradash"  # the records this analysis reads


@dataclass(frozen=True)
class LayerChoice:
    """One layer's launch as a record stores it."""

    indices: tuple[int, ...]  # positions in the descending singular spectrum of W (0 = largest sigma)
    sigma: tuple[float, ...]  # sigma of those directions
    lam: (
        tuple[float, ...] | None
    )  # lambda at the end of training; None in records written before it was stored
    dim: int  # min(out, in): the number of singular directions


@dataclass(frozen=True)
class DashRun:
    experiment: str
    task: str | None
    seed: int
    lr: float
    path: str  # relative to the family's results folder
    layers: dict[str, LayerChoice]  # launched layers only
    unlaunched: int  # layers that never launched (their indices mean nothing)


# -- reading records ------------------------------------------------------------------------------------------
def config_from_record(record: Mapping[str, Any]) -> ExperimentConfig:
    """The resolved config a record ran with, rebuilt as the family's typed config. Keys the current schema no
    longer has (a record written by an older version) are dropped; fields it lacks take today's defaults."""
    c = record["config"]
    sections = sections_for(c["family"])
    known = {s: {f.name for f in fields(cls)} for s, cls in sections.items()}
    return ExperimentConfig(
        family=c["family"],
        name=c["name"],
        method=MethodConfig(name=c["method"]["name"], params=dict(c["method"]["params"])),
        sources=tuple(c.get("sources", ())),
        **{
            s: _build(cls, {k: v for k, v in (c.get(s) or {}).items() if k in known[s]})
            for s, cls in sections.items()
        },  # fmt: skip
    )


_DIMS_CACHE: dict[Any, dict[str, int]] = {}


def model_layer_dims(cfg: ExperimentConfig) -> dict[str, int]:
    """min(out, in) of every 2-D weight of the config's model, by module name (built once per model config)."""
    from experiments.harness.registry import get_family

    if cfg.model not in _DIMS_CACHE:
        with quiet_libraries():
            model = get_family(cfg.family)(cfg).build_model()
        _DIMS_CACHE[cfg.model] = {
            name: min(m.weight.shape)
            for name, m in model.named_modules()
            if getattr(m, "weight", None) is not None and m.weight.ndim == 2
        }
    return _DIMS_CACHE[cfg.model]


def _chosen_lr(folder: Path, key: str, by_lr: Mapping[float, list]) -> float:
    """The sweep's chosen rate of (experiment, task) when the sweep wrote one and its runs exist, else the rate
    with the most seeds (ties: the smaller rate), so that tuning runs at other rates do not count a seed twice."""
    sel = read_record(folder / "selected_lr.json") or {}
    choice = (sel.get("selected") or {}).get(key)
    if choice and choice.get("lr") in by_lr:
        return float(choice["lr"])
    return min(by_lr, key=lambda lr: (-len({r["seed"] for r in by_lr[lr]}), lr))


def load_dash_runs(folder: Path, layer_dims: Mapping[str, int] | None = None) -> list[DashRun]:
    """Complete LoRA-Dash records under a family's results folder, one learning rate per (experiment, task).

    `layer_dims` (layer name -> min(out, in)) replaces building each record's model to read its layer shapes."""
    groups: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for path in iter_records(folder):
        rec = read_record(path)
        if rec is None or rec.get("status") != "complete" or rec.get("method") != DASH_METHOD:
            continue
        rec["_path"] = path.relative_to(folder).as_posix()
        key = rec["experiment"] if rec.get("task") is None else f"{rec['experiment']}/{rec['task']}"
        groups.setdefault(key, {}).setdefault(float(rec["lr"]), []).append(rec)
    runs = []
    for key in sorted(groups):
        for rec in sorted(
            groups[key][_chosen_lr(folder, key, groups[key])], key=lambda r: (r["seed"], r["_path"])
        ):
            dims = layer_dims if layer_dims is not None else model_layer_dims(config_from_record(rec))
            layers, unlaunched = {}, 0
            for name, row in sorted(rec["diagnostics"].get("layers", {}).items()):
                if not row.get("launched"):
                    unlaunched += 1
                    continue
                if name not in dims:
                    raise KeyError(f"{rec['_path']}: no shape known for layer {name!r}")
                lam = row.get("lambda")
                layers[name] = LayerChoice(
                    indices=tuple(int(i) for i in row["indices"]),
                    sigma=tuple(float(x) for x in row["sigma"]),
                    lam=None if lam is None else tuple(float(x) for x in lam),
                    dim=int(dims[name]),
                )
            runs.append(DashRun(rec["experiment"], rec.get("task"), int(rec["seed"]), float(rec["lr"]),
                                rec["_path"], layers, unlaunched))  # fmt: skip
    return runs


# -- statistics of the records --------------------------------------------------------------------------------
def position(index: int, dim: int) -> float:
    """Relative position in the descending spectrum, (i + 1/2) / k: the centre of direction i's 1/k-wide bin, so
    that the top and bottom 10% hold the same number of directions."""
    return (index + 0.5) / dim


def spectrum_positions(choices: Sequence[LayerChoice]) -> dict[str, Any]:
    """Where the chosen directions sit: fraction in the top / bottom 10% of the spectrum (chance: 0.1 each), among
    the s smallest singular values of their layer (chance: s/k), the median position, and a histogram."""
    pos = np.array([position(i, c.dim) for c in choices for i in c.indices])
    if pos.size == 0:
        return {"n": 0}
    smallest = [i >= c.dim - len(c.indices) for c in choices for i in c.indices]
    counts, edges = np.histogram(pos, bins=BINS, range=(0.0, 1.0))
    return {
        "n": int(pos.size),
        "top10": float(np.mean(pos < EDGE)),
        "bottom10": float(np.mean(pos > 1 - EDGE)),
        "smallest_s": float(np.mean(smallest)),
        "smallest_s_chance": float(np.mean([len(c.indices) / c.dim for c in choices])),
        "median": float(np.median(pos)),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(x) for x in counts]},
    }


def lambda_vs_sigma(choices: Sequence[LayerChoice]) -> dict[str, Any]:
    """|lambda| against sigma of the chosen directions. lambda_i / sigma_i is the dash term's own change rate of
    direction i (u_i^T (lambda_i u_i v_i^T) v_i = lambda_i)."""
    pairs = [(s, abs(x)) for c in choices if c.lam is not None for s, x in zip(c.sigma, c.lam, strict=True)]
    if not pairs:
        return {"n": 0}
    sig, lam = np.array(pairs).T
    out: dict[str, Any] = {
        "n": len(pairs),
        "median_abs_lambda": float(np.median(lam)),
        "max_abs_lambda": float(np.max(lam)),
        "median_relative_change": float(np.median(lam / np.maximum(sig, 1e-30))),
        "fraction_lambda_above_sigma": float(np.mean(lam > sig)),
    }
    if len(pairs) > 2 and np.ptp(sig) > 0 and np.ptp(lam) > 0:
        from scipy.stats import spearmanr

        out["spearman_sigma_abs_lambda"] = float(spearmanr(sig, lam).statistic)
    return out


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def chance_jaccard(s: int, k: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random s-subsets of k directions (hypergeometric
    overlap j: E[j / (2s - j)])."""
    total = math.comb(k, s)
    return sum(math.comb(s, j) * math.comb(k - s, s - j) / total * j / (2 * s - j) for j in range(0, s + 1))


def seed_stability(runs: Sequence[DashRun]) -> list[dict[str, Any]]:
    """Per (experiment, task, lr) with two seeds or more: per layer, the mean over seed pairs of the Jaccard
    overlap and of the shared fraction |A & B| / s of the chosen index sets, beside their chance levels."""
    groups: dict[tuple[str, str | None, float], dict[int, DashRun]] = {}
    for r in runs:
        groups.setdefault((r.experiment, r.task, r.lr), {}).setdefault(r.seed, r)
    out = []
    for (exp, task, lr), by_seed in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
    ):
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        names = sorted(set.intersection(*(set(by_seed[s].layers) for s in seeds)))
        per_layer = {}
        for name in names:
            sets = [by_seed[s].layers[name].indices for s in seeds]
            c = by_seed[seeds[0]].layers[name]
            s_, k = len(c.indices), c.dim
            per_layer[name] = {
                "jaccard": float(np.mean([jaccard(a, b) for a, b in combinations(sets, 2)])),
                "shared": float(np.mean([len(set(a) & set(b)) / s_ for a, b in combinations(sets, 2)])),
                "chance_jaccard": chance_jaccard(s_, k),
                "chance_shared": s_ / k,
            }
        out.append({
            "experiment": exp, "task": task, "lr": lr, "seeds": seeds, "layers": len(names),
            **{key: float(np.mean([v[key] for v in per_layer.values()])) if per_layer else None
               for key in ("jaccard", "shared", "chance_jaccard", "chance_shared")},
            "per_layer": per_layer,
        })  # fmt: skip
    return out


# -- prediction quality (the probe) ---------------------------------------------------------------------------
SCORES = {
    "recall": "|L_s & F_s| / s: full fine-tuning's top s recalled by LoRA's top s (chance s/k)",
    "in_top_2s": "|L_s & F_2s| / s: fraction of LoRA's top s that lie in full fine-tuning's top 2s (chance 2s/k)",
    "half_covered": "|F_s/2 & L_s| / (s/2): fraction of full fine-tuning's top s/2 that LoRA's top s contains "
    "(chance s/k)",
}


def prediction_scores(predicted: Sequence[int], full_order: Sequence[int], s: int) -> dict[str, float]:
    """The three scores of one layer (see SCORES): `predicted` is LoRA's top s, `full_order` full fine-tuning's
    directions by descending change rate (at least 2s of them)."""
    if len(predicted) != s or len(full_order) < 2 * s:
        raise ValueError(
            f"need s={s} predicted and >= {2 * s} ranked directions, got {len(predicted)}, {len(full_order)}"
        )
    L = set(predicted)
    half = s // 2
    return {
        "recall": len(L & set(full_order[:s])) / s,
        "in_top_2s": len(L & set(full_order[: 2 * s])) / s,
        "half_covered": len(L & set(full_order[:half])) / half,
    }


def chance_scores(s: int, k: int) -> dict[str, float]:
    return {"recall": s / k, "in_top_2s": 2 * s / k, "half_covered": s / k}


def _mean_scores(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in SCORES}


def prediction_summary(probe: ProbeResult, s: int) -> dict[str, Any]:
    """Scores by (rank, t), averaged over layers, beside chance and a sigma-only control (the s directions of
    smallest sigma, the choice that 1/sigma alone would make)."""
    layers = probe.layers
    by_key = []
    for (rank, t), picks in sorted(probe.lora_top.items()):
        rows = {n: prediction_scores(picks[n], probe.full_order[n], s) for n in layers}
        by_key.append({"rank": rank, "t": t, **_mean_scores(list(rows.values())), "per_layer": rows})
    smallest = [prediction_scores(list(range(probe.dims[n] - s, probe.dims[n])), probe.full_order[n], s)
                for n in layers]  # fmt: skip
    full_top = [LayerChoice(tuple(probe.full_order[n][:s]), (), None, probe.dims[n]) for n in layers]
    return {
        "s": s,
        "by_rank_t": by_key,
        "chance": _mean_scores([chance_scores(s, probe.dims[n]) for n in layers]),
        "smallest_sigma_control": _mean_scores(smallest),
        "full_top_s_positions": spectrum_positions(full_top),
    }


def default_plot_layers(layers: Sequence[str]) -> list[str]:
    """First, middle and last target layer (model order)."""
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]}, key=list(layers).index)


def probe_config(family: str, profile: str, experiment: str | None, task: str | None) -> ExperimentConfig:
    """The probe's model, task, data and schedule: `experiment` (default: the profile's first LoRA-Dash
    experiment, else its first) on `task` (default: the profile's first), with the profile's overrides."""
    p = load_profile(family, profile)
    if experiment is None:
        for name in p.experiments:
            if load_experiment(family, name).method.name == DASH_METHOD:
                experiment = name
                break
        else:
            experiment = p.experiments[0]
    task = task if task is not None else p.task_list[0]
    return experiment_config(p, experiment, task)


def probe_record(cfg: ExperimentConfig, settings: ProbeSettings, probe: ProbeResult,
                 plot_layers: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """prediction.json: the settings, what ran, the scores and the spectra of the plotted layers."""
    s = settings.num_directions
    unknown = [n for n in plot_layers if n not in probe.layers]
    if unknown:
        raise ValueError(f"plot layers {unknown} are not target layers (known: {', '.join(probe.layers)})")
    ref_t = int(cfg.method.params.get("prelaunch_steps", settings.snapshots[-1]))
    ref_t = ref_t if ref_t in settings.snapshots else settings.snapshots[-1]
    return {
        "settings": asdict(settings) | {"eps": probe.eps},
        "config": {
            "experiment": cfg.name,
            "task": cfg.task,
            "model": cfg.model.name,
            "target_modules": list(cfg.model.target_modules),
            "train": asdict(cfg.train),
        },  # fmt: skip
        "training": probe.training,
        "layers": probe.layers,
        "dims": probe.dims,
        "summary": prediction_summary(probe, s),
        "positions_full_top_s": spectrum_positions(
            [LayerChoice(tuple(probe.full_order[n][:s]), (), None, probe.dims[n]) for n in probe.layers]
        ),
        "positions_lora_top_s": {
            f"r{rank}_t{t}": spectrum_positions(
                [LayerChoice(tuple(picks[n]), (), None, probe.dims[n]) for n in probe.layers]
            )
            for (rank, t), picks in sorted(probe.lora_top.items())
        },
        "spectra": {
            n: {
                "sigma": probe.sigma[n],
                "full_rates": probe.full_rates[n],
                "full_top": probe.full_order[n][:s],
                "lora_top": {f"r{rank}": probe.lora_top[(rank, ref_t)][n] for rank in settings.ranks},
            }
            for n in plot_layers
        },  # fmt: skip
        "reference_t": ref_t,
    }


# -- writing ----------------------------------------------------------------------------------------------------
def _record_row(r: DashRun) -> dict[str, Any]:
    return {
        "path": r.path,
        "experiment": r.experiment,
        "task": r.task,
        "seed": r.seed,
        "lr": r.lr,
        "launched_layers": len(r.layers),
        "unlaunched_layers": r.unlaunched,
        "lambda_recorded": bool(r.layers) and all(c.lam is not None for c in r.layers.values()),
    }


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"


def analyze(
    family: str,
    profile: str,
    results_dir: Path,
    *,
    train: bool = False,
    out_dir: Path | None = None,
    probe: ProbeSettings | None = None,
    experiment: str | None = None,
    task: str | None = None,
    plot_layers: Sequence[str] | None = None,
    layer_dims: Mapping[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Analyse the LoRA-Dash records of results/<profile>/<family>/ and write the report; return the paths written.

    Args:
        train: also run the training probe (minutes); its result is kept in prediction.json and reported by
            later calls without `train`.
        out_dir: where to write; default results/<profile>/<family>/analysis/.
        probe: the probe's scale (steps, learning rates, t, ranks, s); default `ProbeSettings()`.
        experiment, task: the config (model, data, schedule) the probe trains; default the profile's first
            LoRA-Dash experiment and first task.
        plot_layers: target layers whose change-rate spectrum is plotted; default first, middle and last.
        layer_dims: layer name -> min(out, in) for the records' layers; default read from each record's model.
    """
    folder = Path(results_dir) / profile / family
    out = Path(out_dir) if out_dir is not None else folder / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    runs = load_dash_runs(folder, layer_dims) if folder.is_dir() else []
    choices = [c for r in runs for c in r.layers.values()]
    pos, lam, stab = spectrum_positions(choices), lambda_vs_sigma(choices), seed_stability(runs)
    title = f"{family} / {profile}: LoRA-Dash's chosen directions ({len(runs)} runs)"
    written = []
    for name, ok, draw in (
        ("positions.png", pos["n"] > 0, lambda p: report.plot_positions(pos, p, title)),
        ("lambda_sigma.png", lam["n"] > 0, lambda p: report.plot_lambda(choices, p, title)),
    ):
        if ok:
            draw(out / name)
            written.append(out / name)
        else:  # a plot left from earlier records would contradict the report
            (out / name).unlink(missing_ok=True)

    pred_path = out / "prediction.json"
    if train:
        settings = probe or ProbeSettings()
        cfg = probe_config(family, profile, experiment, task)
        result = run_probe(cfg, settings, log=log)
        layers = list(plot_layers) if plot_layers else default_plot_layers(result.layers)
        written.append(_write_text(pred_path, _json(probe_record(cfg, settings, result, layers))))
    pred = json.loads(pred_path.read_text()) if pred_path.is_file() else None
    if pred is not None:
        ptitle = f"{family} / {profile}: {pred['config']['experiment']} {pred['config']['task'] or ''}"
        report.plot_prediction(pred, out / "prediction.png", ptitle, list(SCORES))
        report.plot_spectrum(pred, out / "spectrum.png", ptitle)
        written += [out / "prediction.png", out / "spectrum.png"]

    summary = {
        "family": family,
        "profile": profile,
        "records": [_record_row(r) for r in runs],
        "positions": pos,
        "lambda_vs_sigma": lam,
        "seed_stability": stab,
        "prediction": None
        if pred is None
        else {k: pred[k] for k in ("settings", "config", "training", "summary")},
    }
    written.append(_write_text(out / "analysis.json", _json(summary)))
    md = [f"# TSD analysis: {family} / `{profile}`", "",
          f"Generated by `python -m experiments analyze` from the complete LoRA-Dash run records under "
          f"`{profile}/{family}/` (one learning rate per experiment and task: the sweep's choice, else the rate "
          "with the most seeds). Numbers in analysis.json.", ""]  # fmt: skip
    md += report.records_section(summary["records"], pos, lam, stab) + report.prediction_section(pred, SCORES)
    written.append(_write_text(out / "analysis.md", "\n".join(md)))
    return written
