"""Verdicts on known answers: simulated benchmarks where the claim holds, fails, or cannot be told, and the
power check that keeps "matches a bigger LoRA" from being supported when the bigger LoRA is not better."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import stats
from experiments.tables import Claim, judge, pareto
from tests.helpers import mean_correct, simulate_tables


def scores_for(effects, *, seed=0, **kw):
    rng = np.random.default_rng(seed)
    tables = simulate_tables(rng, effects=effects, **kw)
    tasks = stats.check_alignment(tables)
    n = {t: len(tables[next(iter(tables))][t][0]["ids"]) for t in tasks}
    idx = stats.boot_indices(n, n_boot=300)
    return {
        name: stats.score_experiment(tab, tasks, idx, mean_correct, 100.0) for name, tab in tables.items()
    }


SAME_RANK = Claim("same-rank", "dash beats lora", "superiority", "dash", "lora")


@pytest.mark.parametrize(
    "effects,kw,expected",
    [
        ({"dash": 0.06, "lora": 0.0}, {"n_items": 1000}, "supported"),  # the claim holds: +6 points
        ({"dash": -0.03, "lora": 0.0}, {"n_items": 1000}, "refuted"),  # the claim fails: 3 points worse
        ({"dash": 0.02, "lora": 0.0}, {"n_items": 60, "sd_seed": 0.05, "k": 3}, "inconclusive"),  # too noisy
    ],
)
def test_superiority_verdicts_on_known_answers(effects, kw, expected):
    out = judge([SAME_RANK], 1.0, scores_for(effects, **kw))
    (c,) = out["claims"]
    assert c["verdict"] == expected, c
    assert out["tests"] == 1 and out["level"] == pytest.approx(0.95)


def test_non_inferiority_needs_power():
    claim = Claim("vs-4x", "dash matches lora8", "non-inferiority", "dash", "lora8", power="lora2")
    # lora8 is clearly better than lora2 and dash matches lora8: supported
    s = scores_for({"dash": 0.08, "lora8": 0.08, "lora2": 0.0}, n_items=1000)
    out = judge([claim], 3.0, s)
    assert out["claims"][0]["verdict"] == "supported" and out["power"][0]["has_power"]
    assert out["tests"] == 2 and out["level"] == pytest.approx(0.975)  # Bonferroni over claim + power check
    # every method equal: dash "matches" lora8, but lora8 is no better than lora2, so nothing is shown
    s = scores_for({"dash": 0.0, "lora8": 0.0, "lora2": 0.0}, n_items=1000)
    (c,) = judge([claim], 3.0, s)["claims"]
    assert c["verdict"] == "inconclusive" and c["reason"].startswith("no power")
    # dash far below lora8: refuted whatever the power
    s = scores_for({"dash": 0.0, "lora8": 0.1, "lora2": 0.0}, n_items=1000)
    assert judge([claim], 3.0, s)["claims"][0]["verdict"] == "refuted"


def test_one_seed_is_never_a_verdict():
    s = scores_for({"dash": 0.2, "lora": 0.0}, n_items=1000, k=1)
    (c,) = judge([SAME_RANK], 1.0, s)["claims"]
    assert c["verdict"] == "inconclusive" and "seeds" in c["reason"]


def test_claims_of_missing_experiments_are_skipped():
    s = scores_for({"dash": 0.0, "lora": 0.0})
    out = judge([SAME_RANK, Claim("x", "x", "superiority", "dash", "absent")], 1.0, s)
    assert [c["claim"]["id"] for c in out["claims"]] == ["same-rank"] and out["skipped"] == ["x"]


def test_pareto_frontier():
    pts = [(10, 80.0), (100, 85.0), (1000, 84.0), (50, 79.0), (10, 81.0)]
    assert pareto(pts) == [4, 1]
