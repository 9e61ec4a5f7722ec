"""Seed-aware intervals for benchmark scores and their differences.

A score here is the family's primary metric, recomputed per task from per-item arrays and averaged over tasks
(unweighted, as the paper's "avg" columns). It has two sources of noise, and the intervals carry both:

- seeds (training randomness): the runs of one experiment differ by seed;
- test items (the test set is a sample): every run is scored on the same items.

Seeds and items are crossed (every seed scores every item): a two-way random-effects layout, where the variance
of a score averaged over k seeds and n items is sigma2_seed / k + sigma2_item / n + sigma2_interaction / (k n).
The estimate uses the per-seed scores and bootstrap resamples of the items (within each task, the same
resampled indices for every seed and every experiment, recomputing each task's own metric):
  S  = sample variance over seeds of the per-seed score          ~ sigma2_seed + sigma2_interaction / n
  B1 = bootstrap variance of the seed-averaged score              ~ sigma2_item / n + sigma2_interaction / (k n)
  B2 = mean over seeds of each seed's bootstrap variance          ~ sigma2_item / n + sigma2_interaction / n
so that S / k carries the seed and interaction terms and I = (k B1 - B2) / (k - 1) ~ sigma2_item / n the item
term: V = S / k + max(I, 0), a method-of-moments estimate for the crossed layout (the ANOVA estimator of
two-way random effects written with bootstrap moments, so that non-linear metrics such as Matthews
correlation are recomputed on each resample; cf. Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 2007, and
Bouthillier et al., "Accounting for variance in machine learning benchmarks", MLSys 2021). Simply adding S / k
and B1 would count the interaction twice (99% coverage instead of 95% in the simulation test). With 3-5 seeds a
bootstrap over seeds would be far too narrow, so the interval is t-based, point +- t_df sqrt(V), with
Welch-Satterthwaite degrees of freedom (Satterthwaite, Biometrics Bulletin 1946) giving the seed term k - 1,
and never narrower than the plain t interval of the seed term alone, point +- t_{k-1} sqrt(S / k) (the paired
t over per-seed differences). The floor matters at few seeds: S has k - 1 degrees of freedom, and where it comes
out small by chance Satterthwaite credits V with many degrees of freedom exactly when it is underestimated; in the
simulation at 3 seeds the interval without the floor missed the truth 5.8-6.5% of the time at a nominal 5% and
1.4-2.0% at a nominal 0.625%, with it 4.7-5.1% and 0.4-0.5% (4,000 benchmarks per case; 5 and 8 seeds:
5.2-5.4% and 5.0-5.1% at 5%; `tests/test_stats.py`).
A difference of two experiments is paired by seed when both ran the same seeds (one per-seed difference) and
unpaired (Welch) otherwise; items are always paired. With one seed the seed term cannot be estimated: the
interval covers items only and says so (`seed_variance_known: False`). `tests/test_stats.py` checks coverage
by simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

N_BOOT = 2000

# task -> seed -> {"ids": [...], <arrays>}: the per-item arrays of one experiment's runs
ItemTable = dict[str, dict[int, dict[str, np.ndarray]]]
TaskScores = Callable[
    [str, Mapping[str, np.ndarray], np.ndarray], np.ndarray
]  # (task, items, idx[B, n]) -> [B]


class AlignmentError(ValueError):
    """Runs of one comparison did not score the same test items."""


def item_table(records: Sequence[dict[str, Any]]) -> ItemTable:
    """The per-item arrays of an experiment's complete records (one record per (task, seed); a family that
    scores every task in one run contributes all its tasks per record)."""
    out: ItemTable = {}
    for rec in records:
        for task, r in rec["test"]["per_task"].items():
            seeds = out.setdefault(task, {})
            if rec["seed"] in seeds:
                raise ValueError(f"two records for task {task}, seed {rec['seed']} of {rec['experiment']}")
            seeds[rec["seed"]] = {k: np.asarray(v) for k, v in r["items"].items()}
    return out


def check_alignment(tables: Mapping[str, ItemTable]) -> list[str]:
    """The tasks every experiment scored, after checking that every run of every experiment scored the same
    item ids in the same order per task (raises AlignmentError naming the first mismatch)."""
    names = list(tables)
    if not names:
        return []
    tasks = sorted(set.intersection(*(set(t) for t in tables.values())))
    for task in tasks:
        ref_name, ref = None, None
        for name in names:
            for seed, items in sorted(tables[name][task].items()):
                ids = items["ids"]
                if ref is None:
                    ref_name, ref = f"{name} seed {seed}", ids
                elif len(ids) != len(ref) or not np.array_equal(ids, ref):
                    raise AlignmentError(
                        f"task {task}: {name} seed {seed} scored different items than {ref_name} "
                        f"({len(ids)} vs {len(ref)} items); rerun it on the profile's test set"
                    )
    return tasks


def boot_indices(n_by_task: Mapping[str, int], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """Resampled item indices per task, [n_boot, n]; shared by every experiment and seed (paired)."""
    rng = np.random.default_rng(seed)
    return {t: rng.integers(0, n, size=(n_boot, n)) for t, n in sorted(n_by_task.items())}


@dataclass
class ExperimentScores:
    """Per-seed scores (averaged over tasks) and their bootstrap replicates, for one experiment."""

    seeds: list[int]
    per_seed: np.ndarray  # [k] score of each seed, mean over tasks
    per_seed_task: dict[str, np.ndarray]  # task -> [k]
    boot: np.ndarray  # [k, B] score of each seed on each item resample (mean over tasks)
    boot_task: dict[str, np.ndarray]  # task -> [k, B]


def score_experiment(
    table: ItemTable,
    tasks: Sequence[str],
    idx: Mapping[str, np.ndarray],
    task_scores: TaskScores,
    scale: float,
) -> ExperimentScores:
    seeds = sorted(set.intersection(*(set(table[t]) for t in tasks)))
    if not seeds:
        raise ValueError("no seed was run on every task")
    full = {t: np.arange(len(table[t][seeds[0]]["ids"]))[None, :] for t in tasks}
    per_seed_task = {
        t: scale * np.array([task_scores(t, table[t][s], full[t])[0] for s in seeds]) for t in tasks
    }
    boot_task = {t: scale * np.stack([task_scores(t, table[t][s], idx[t]) for s in seeds]) for t in tasks}
    return ExperimentScores(
        seeds=seeds,
        per_seed=np.mean([per_seed_task[t] for t in tasks], axis=0),
        per_seed_task=per_seed_task,
        boot=np.mean([boot_task[t] for t in tasks], axis=0),
        boot_task=boot_task,
    )


def seed_only_scores(per_seed_task: Mapping[str, Mapping[int, float]], scale: float, n_boot: int = N_BOOT
                     ) -> ExperimentScores:  # fmt: skip
    """Scores of a metric that has no per-item arrays (e.g. a per-run diagnostic): task -> seed -> value. Its
    bootstrap replicates are constant, so every interval built from it carries the seed-to-seed noise alone."""
    tasks = sorted(per_seed_task)
    seeds = sorted(set.intersection(*(set(per_seed_task[t]) for t in tasks)))
    if not seeds:
        raise ValueError("no seed has the metric on every task")
    pst = {t: scale * np.array([float(per_seed_task[t][s]) for s in seeds]) for t in tasks}
    boot_task = {t: np.repeat(v[:, None], n_boot, axis=1) for t, v in pst.items()}
    return ExperimentScores(seeds=seeds, per_seed=np.mean([pst[t] for t in tasks], axis=0), per_seed_task=pst,
                            boot=np.mean([boot_task[t] for t in tasks], axis=0), boot_task=boot_task)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    se: float
    df: float
    seed_sd: float  # sd of the per-seed scores (of the per-seed differences, for a paired difference)
    n_seeds: int
    paired: bool
    seed_variance_known: bool
    level: float
    seed_t_floor: bool = (
        False  # the width is that of the plain t interval of the seed term (see the module doc)
    )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _interval(estimate: float, v_seed: float, seed_df: float, v_item: float, level: float, *, k: int,
              seed_sd: float, paired: bool, known: bool) -> Interval:  # fmt: skip
    v = v_seed + v_item
    if v <= 0:
        return Interval(estimate, estimate, estimate, 0.0, float("inf"), seed_sd, k, paired, known, level)
    # Welch-Satterthwaite: the item part has (practically) infinite degrees of freedom.
    df = float("inf") if v_seed <= 0 or not np.isfinite(seed_df) else v * v / (v_seed * v_seed / seed_df)
    se = float(np.sqrt(v))
    half = _t_quantile(level, df) * se
    # ... but never narrower than the t interval of the seed term alone, with its own degrees of freedom.
    floor = _t_quantile(level, seed_df) * float(np.sqrt(v_seed)) if v_seed > 0 else 0.0
    return Interval(estimate, estimate - max(half, floor), estimate + max(half, floor), se, df, seed_sd, k, paired,
                    known, level, seed_t_floor=floor > half)  # fmt: skip


def _t_quantile(level: float, df: float) -> float:
    return float(sps.t.ppf(0.5 + level / 2, df) if np.isfinite(df) else sps.norm.ppf(0.5 + level / 2))


def interval(e: ExperimentScores, level: float = 0.95, task: str | None = None) -> Interval:
    """Interval of one experiment's score (over all tasks, or one task)."""
    per_seed = e.per_seed if task is None else e.per_seed_task[task]
    boot = e.boot if task is None else e.boot_task[task]
    k = len(per_seed)
    known = k > 1
    var_s = float(np.var(per_seed, ddof=1)) if known else 0.0
    return _interval(float(per_seed.mean()), var_s / k if known else 0.0, k - 1 if known else float("inf"),
                     _item_term(boot), level, k=k, seed_sd=float(np.sqrt(var_s)), paired=False,
                     known=known)  # fmt: skip


def _item_term(boot: np.ndarray) -> float:
    """sigma2_item / n from bootstrap replicates [k, B] of k seeds' scores: (k B1 - B2) / (k - 1), >= 0;
    with one seed, B1 (items and interaction cannot be told apart)."""
    k = boot.shape[0]
    b1 = float(np.var(boot.mean(axis=0), ddof=1))
    if k == 1:
        return b1
    b2 = float(np.mean(np.var(boot, axis=1, ddof=1)))
    return max(0.0, (k * b1 - b2) / (k - 1))


def _interaction(boot: np.ndarray) -> float:
    """sigma2_interaction / n from replicates [k, B]: (B2 - B1) k / (k - 1)."""
    k = boot.shape[0]
    b1 = float(np.var(boot.mean(axis=0), ddof=1))
    b2 = float(np.mean(np.var(boot, axis=1, ddof=1)))
    return max(0.0, (b2 - b1) * k / (k - 1))


def difference(
    a: ExperimentScores, b: ExperimentScores, level: float = 0.95, task: str | None = None
) -> Interval:
    """Interval of score(a) - score(b): paired by seed when both ran the same seeds, items always paired."""
    pa = a.per_seed if task is None else a.per_seed_task[task]
    pb = b.per_seed if task is None else b.per_seed_task[task]
    ba = a.boot if task is None else a.boot_task[task]
    bb = b.boot if task is None else b.boot_task[task]
    estimate = float(pa.mean() - pb.mean())
    if a.seeds == b.seeds and len(a.seeds) > 1:
        d = pa - pb
        k = len(d)
        var_d = float(np.var(d, ddof=1))
        return _interval(estimate, var_d / k, k - 1, _item_term(ba - bb), level, k=k,
                         seed_sd=float(np.sqrt(var_d)), paired=True, known=True)  # fmt: skip
    # unpaired seeds: the item term of the difference of the two seed-averaged scores (items stay paired)
    v_item = _item_term(ba.mean(axis=0, keepdims=True) - bb.mean(axis=0, keepdims=True))
    if len(pa) > 1 and len(pb) > 1:
        v_item = max(0.0, v_item - _interaction(ba) / len(pa) - _interaction(bb) / len(pb))
    ka, kb = len(pa), len(pb)
    if ka < 2 or kb < 2:
        return _interval(estimate, 0.0, float("inf"), v_item, level, k=min(ka, kb), seed_sd=float("nan"),
                         paired=False, known=False)  # fmt: skip
    va, vb = float(np.var(pa, ddof=1)) / ka, float(np.var(pb, ddof=1)) / kb
    df = (va + vb) ** 2 / (va * va / (ka - 1) + vb * vb / (kb - 1)) if va + vb > 0 else float("inf")
    return _interval(estimate, va + vb, df, v_item, level, k=min(ka, kb),
                     seed_sd=float(np.sqrt(va * ka + vb * kb)), paired=False, known=True)  # fmt: skip
