"""Seed-aware intervals checked by simulation: benchmarks with known seed and item variance and a known
difference, scored by the same code that writes the tables."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from experiments.glue.metrics import batch_scores, task_metrics
from experiments.report import stats
from tests.helpers import mean_correct, simulate_tables


def score(tables, rng, n_boot=200):
    tasks = stats.check_alignment(tables)
    n = {t: len(next(iter(tables.values()))[t][0]["ids"]) for t in tasks}
    idx = stats.boot_indices(n, n_boot=n_boot, seed=int(rng.integers(1 << 30)))
    return {
        name: stats.score_experiment(tab, tasks, idx, mean_correct, 100.0) for name, tab in tables.items()
    }


# (sd_seed, sd_item) of the simulated benchmarks: the default mix, and one where the item x method term dominates
# (no seed effect at all: the runs differ only by their per-seed Bernoulli draws and the shared item effects).
REGIMES = {"mixed": (0.015, 0.05), "items-dominate": (0.0, 0.1)}


@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("k", [3, 5, 8])
def test_interval_of_a_difference_keeps_its_nominal_coverage(k, regime):
    """2,000 simulated benchmarks per case, enough to tell a 5% miss rate from 7.5% (binomial sd 0.5 and 0.6
    points): at 95% the interval of a paired difference misses the truth at most 6.25% of the time (and is not
    grossly conservative: at least 3.5%), at the Bonferroni level of 8 tests (nominal 0.625%) at most 1.1%.
    Without the floor at the plain paired t, 3 seeds missed 5.8-6.5% and 1.4-2.0% (module doc of stats)."""
    sd_seed, sd_item = REGIMES[regime]
    rng = np.random.default_rng(100 + k)
    n_sim, miss, miss_bonf = 2000, 0, 0
    for _ in range(n_sim):
        s = score(
            simulate_tables(rng, effects={"a": 0.02, "b": 0.0}, k=k, sd_seed=sd_seed, sd_item=sd_item), rng
        )
        iv = stats.difference(s["a"], s["b"])
        assert iv.paired and iv.seed_variance_known and iv.n_seeds == k
        miss += not iv.low <= 2.0 <= iv.high
        ivb = stats.difference(s["a"], s["b"], 1 - 0.05 / 8)
        miss_bonf += not ivb.low <= 2.0 <= ivb.high
    assert 0.035 <= miss / n_sim <= 0.0625, miss / n_sim
    assert miss_bonf / n_sim <= 0.011, miss_bonf / n_sim


def _scores(per_seed, boot):
    per_seed, boot = np.asarray(per_seed, float), np.asarray(boot, float)
    return stats.ExperimentScores(seeds=list(range(len(per_seed))), per_seed=per_seed, per_seed_task={"t": per_seed},
                                  boot=boot, boot_task={"t": boot})  # fmt: skip


def test_interval_is_never_narrower_than_the_plain_paired_t():
    """3 seeds whose differences are nearly equal (seed term small by chance) and a large item term: the
    Satterthwaite df is large, and the width is still at least that of the plain paired t with 2 df."""
    rng = np.random.default_rng(0)
    common = rng.normal(0, 1.0, 4000)  # the items' shared resampling noise of the difference
    d = np.array([1.0, 1.3, 0.7])
    a = _scores(d, d[:, None] + common[None, :])
    b = _scores(np.zeros(3), np.zeros((3, 4000)))
    iv = stats.difference(a, b)
    v_seed, v_item = np.var(d, ddof=1) / 3, stats._item_term(a.boot - b.boot)
    assert v_item > 0.9  # the item term is in the interval (the bootstrap variance of `common`)
    paired_t = sps.t.ppf(0.975, 2) * np.sqrt(v_seed)
    sat = sps.t.ppf(0.975, iv.df) * np.sqrt(v_seed + v_item)
    assert iv.df > 2 and iv.high - iv.estimate == pytest.approx(max(paired_t, sat))
    assert not iv.seed_t_floor  # here the item term sets the width
    # item term nil: the seed term alone, with k - 1 df (the plain paired t)
    a = _scores(d, np.repeat(d[:, None], 10, axis=1))
    iv = stats.difference(a, _scores(np.zeros(3), np.zeros((3, 10))))
    assert iv.high - iv.estimate == pytest.approx(paired_t) and iv.df == pytest.approx(2)
    # a small item term: Satterthwaite's df would give a narrower interval than the paired t; the floor holds
    a = _scores(d, d[:, None] + 0.05 * common[None, :])
    iv = stats.difference(a, b)
    assert sps.t.ppf(0.975, iv.df) * iv.se < paired_t
    assert iv.seed_t_floor and iv.high - iv.estimate == pytest.approx(paired_t)


def test_item_term_is_in_the_interval_when_seeds_agree():
    """Every seed gives the same difference (no seed noise): the interval is the item term's alone, +-1.96
    sqrt(I), not a point."""
    rng = np.random.default_rng(1)
    common = rng.normal(0, 0.5, 4000)
    d = np.full(5, 2.0)
    a = _scores(d, d[:, None] + common[None, :])
    b = _scores(np.zeros(5), np.zeros((5, 4000)))
    iv = stats.difference(a, b)
    assert iv.high - iv.estimate == pytest.approx(1.959964 * np.std(common, ddof=1), rel=1e-4)
    one = stats.interval(a)  # one experiment's interval carries the item term too
    assert one.high - one.estimate == pytest.approx(1.959964 * np.std(common, ddof=1), rel=1e-4)


def test_interval_of_one_experiment_covers_the_truth():
    """A single experiment's score: truth = 100 x (mean difficulty 0.5 + effect)."""
    rng = np.random.default_rng(1)
    cover = 0
    for _ in range(200):
        s = score(simulate_tables(rng, effects={"a": 0.1}, sd_item=0.0), rng)
        iv = stats.interval(s["a"])
        cover += iv.low <= 60.0 <= iv.high
    assert 0.93 <= cover / 200 <= 0.97, cover / 200


def test_item_only_interval_is_too_narrow_when_seeds_vary():
    """Why seeds belong in the interval: resampling items alone undercovers badly when seeds differ."""
    rng = np.random.default_rng(3)
    cover_items_only = 0
    for _ in range(100):
        s = score(simulate_tables(rng, effects={"a": 0.02, "b": 0.0}, sd_seed=0.04), rng)
        a, b = s["a"], s["b"]
        d = a.boot.mean(axis=0) - b.boot.mean(axis=0)
        low, high = np.percentile(d, [2.5, 97.5])
        cover_items_only += low <= 2.0 <= high
    assert cover_items_only / 100 < 0.85


def test_one_seed_is_flagged_and_unpaired_seeds_use_welch():
    rng = np.random.default_rng(0)
    tables = simulate_tables(rng, effects={"a": 0.02, "b": 0.0}, k=1)
    s = score(tables, rng)
    assert not stats.difference(s["a"], s["b"]).seed_variance_known
    tables = simulate_tables(rng, effects={"a": 0.02, "b": 0.0}, k=3)
    tables["b"] = {t: {s_ + 10: v for s_, v in seeds.items()} for t, seeds in tables["b"].items()}
    s = score(tables, rng)
    iv = stats.difference(s["a"], s["b"])
    assert not iv.paired and iv.seed_variance_known and iv.low < iv.estimate < iv.high


def test_alignment_is_checked_not_assumed():
    rng = np.random.default_rng(0)
    tables = simulate_tables(rng, effects={"a": 0.0, "b": 0.0})
    tables["b"]["t0"][1]["ids"] = tables["b"]["t0"][1]["ids"][::-1].copy()
    with pytest.raises(stats.AlignmentError, match="task t0: b seed 1 scored different items"):
        stats.check_alignment(tables)
    tables["b"]["t0"][1]["ids"] = np.arange(199)
    with pytest.raises(stats.AlignmentError, match="199 vs 200 items"):
        stats.check_alignment(tables)


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "mnli"])
def test_vectorised_glue_scores_equal_sklearn_and_scipy(task):
    rng = np.random.default_rng(1)
    n = 200
    if task == "stsb":
        y = rng.uniform(0, 5, n).round(1)
        p = y + rng.normal(0, 1.5, n)
    else:
        k = 3 if task == "mnli" else 2
        y = rng.integers(0, k, n)
        p = np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))
    idx = rng.integers(0, n, size=(25, n))
    fast = batch_scores(task, y, p, idx)
    slow = [task_metrics(task, y[row], p[row])["glue_score"] for row in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-9)
    # degenerate resamples: a constant prediction scores 0 in both paths
    const = np.zeros(n, dtype=p.dtype)
    np.testing.assert_allclose(
        batch_scores(task, y, const, idx[:3]),
        [task_metrics(task, y[row], const[row])["glue_score"] for row in idx[:3]],
        atol=1e-9,
    )
