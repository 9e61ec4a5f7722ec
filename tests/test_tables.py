"""Verdicts on known answers: simulated benchmarks where the claim holds, fails, or cannot be told, and the
power check that keeps "matches a bigger LoRA" from being supported when the bigger LoRA is not better."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.report import stats
from experiments.report.tables import Claim, changed_predictions, judge, pareto
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
        ({"dash": -0.03, "lora": 0.0}, {"n_items": 1000}, "excluded"),  # the claim fails: 3 points worse
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
    # dash far below lora8: excluded whatever the power
    s = scores_for({"dash": 0.0, "lora8": 0.1, "lora2": 0.0}, n_items=1000)
    assert judge([claim], 3.0, s)["claims"][0]["verdict"] == "excluded"


def test_one_seed_is_never_a_verdict():
    s = scores_for({"dash": 0.2, "lora": 0.0}, n_items=1000, k=1)
    (c,) = judge([SAME_RANK], 1.0, s)["claims"]
    assert c["verdict"] == "inconclusive" and "seeds" in c["reason"]


def test_claims_of_missing_experiments_are_skipped():
    s = scores_for({"dash": 0.0, "lora": 0.0})
    out = judge([SAME_RANK, Claim("x", "x", "superiority", "dash", "absent")], 1.0, s)
    assert [c["claim"]["id"] for c in out["claims"]] == ["same-rank"] and out["skipped"] == ["x"]


# --------------------------------------------------------------------------------------------------
# The rule at its boundaries, on scores built so that the interval of (treatment - reference) is known exactly:
# no item noise (every bootstrap replicate equals the per-seed score), and per-seed differences c + h z with z a
# fixed standardised vector, so that the paired interval is c +- t_{k-1} h / sqrt(k).

Z5 = np.array([-1.2, -0.5, 0.1, 0.6, 1.0])


def _exact(per_seed, n_boot=20):
    per_seed = np.asarray(per_seed, float)
    boot = np.repeat(per_seed[:, None], n_boot, axis=1)
    return stats.ExperimentScores(list(range(len(per_seed))), per_seed, {"t": per_seed}, boot, {"t": boot})


def _differences(low, high, level, k=5):
    """Per-seed differences whose paired interval at `level` is exactly [low, high]."""
    from scipy import stats as sps

    z = Z5 if k == 5 else np.linspace(-1, 1, k)
    z = (z - z.mean()) / z.std(ddof=1)
    h = (high - low) / 2 * np.sqrt(k) / sps.t.ppf(0.5 + level / 2, k - 1)
    return (low + high) / 2 + h * z


def exact_scores(level=0.95, k=5, **intervals):
    """{name: scores} with `ref` at 0 and every other name's difference to it at `level` = its (low, high)."""
    out = {"ref": _exact(np.zeros(k))}
    out |= {name: _exact(_differences(lo, hi, level, k)) for name, (lo, hi) in intervals.items()}
    return out


SUP = Claim("sup", "t beats ref", "superiority", "t", "ref")
NONINF = Claim("ni", "t matches ref", "non-inferiority", "t", "ref")


@pytest.mark.parametrize(
    "claim,interval,verdict",
    [
        (SUP, (0.2, 2.0), "supported"),  # above 0
        (SUP, (0.2, 0.8), "supported"),  # above 0 and below the margin: a gain shown, smaller than 1 point
        (SUP, (-0.5, 0.5), "excluded"),  # below +1 (not below 0): a gain of 1 point or more excluded
        (SUP, (-0.2, 0.9), "excluded"),
        (
            SUP,
            (-0.5, 1.5),
            "inconclusive",
        ),  # point estimate +0.5 < 1, but the interval reaches past the margin
        (SUP, (-0.9, 1.1), "inconclusive"),
        (NONINF, (-0.5, 0.5), "supported"),  # above -1
        (NONINF, (-0.9, 0.3), "supported"),
        (NONINF, (-1.6, -0.2), "inconclusive"),  # point estimate -0.9 > -1, the low end past -1
        (NONINF, (-1.5, -0.5), "inconclusive"),  # straddles -1: neither shown nor excluded
        (NONINF, (-2.5, -1.5), "excluded"),  # below -1
    ],
)
def test_rule_at_its_boundaries(claim, interval, verdict):
    (c,) = judge([claim], 1.0, exact_scores(t=interval))["claims"]
    assert (c["low"], c["high"]) == pytest.approx(interval)
    assert c["verdict"] == verdict, c
    if verdict == "excluded":
        assert c["finding"] == ("a gain of 1 point or more excluded" if claim is SUP
                                else "a loss of under 1 point excluded (worse by more than 1 point)")  # fmt: skip


def test_margin_is_the_exclusion_threshold_not_zero():
    """With a margin of 2 points, an interval [-0.5, +1.5] excludes a gain of 2 points, and [-1.5, +1.5]
    (past 0 and past -1 but above -2) supports non-inferiority."""
    (c,) = judge([SUP], 2.0, exact_scores(t=(-0.5, 1.5)))["claims"]
    assert c["verdict"] == "excluded" and c["finding"] == "a gain of 2 points or more excluded"
    (c,) = judge([NONINF], 2.0, exact_scores(t=(-1.5, 1.5)))["claims"]
    assert c["verdict"] == "supported" and c["finding"] == "a loss of 2 points or more excluded"


def test_claims_and_power_checks_are_judged_at_the_bonferroni_level():
    """One non-inferiority claim with its power check: 2 tests, so both intervals are at 97.5%. The claim's
    interval at 97.5% is [-1.2, +0.8] (inconclusive) though at 95% it would lie above -1; the power check's is
    [-0.2, +1.8] (no power) though at 95% it would lie above 0."""
    claim = Claim("ni", "t matches big", "non-inferiority", "t", "ref", power="small")
    s = exact_scores(0.975, t=(-1.2, 0.8), small=(-1.8, 0.2))  # small - ref; ref - small is (-0.2, +1.8)
    out = judge([claim], 1.0, s)
    (c,) = out["claims"]
    assert out["tests"] == 2 and c["level"] == out["level"] == pytest.approx(0.975)
    assert (c["low"], c["high"]) == pytest.approx((-1.2, 0.8)) and c["verdict"] == "inconclusive"
    wide = exact_scores(0.975, t=(-0.9, 1.1), small=(-1.8, 0.2))  # the claim passes; the power check decides
    out = judge([claim], 1.0, wide)
    (p,) = out["power"]
    assert p["level"] == pytest.approx(0.975) and (p["low"], p["high"]) == pytest.approx((-0.2, 1.8))
    assert not p["has_power"] and out["claims"][0]["verdict"] == "inconclusive"
    assert out["claims"][0]["reason"].startswith("no power")
    with_power = exact_scores(0.975, t=(-0.9, 1.1), small=(-2.2, -0.2))
    assert judge([claim], 1.0, with_power)["claims"][0]["verdict"] == "supported"


def test_item_noise_keeps_a_verdict_open_when_seeds_agree():
    """Every seed gives +0.5 (no seed noise) but the items are a small sample: the interval carries the item
    term, so superiority is not supported."""
    rng = np.random.default_rng(0)
    common = rng.normal(0, 1.0, 500)
    t = stats.ExperimentScores(list(range(5)), np.full(5, 0.5), {"t": np.full(5, 0.5)},
                               0.5 + np.repeat(common[None, :], 5, axis=0), {"t": 0.5 + np.repeat(common[None, :], 5, axis=0)})  # fmt: skip
    (c,) = judge([SUP], 1.0, {"t": t, "ref": _exact(np.zeros(5), n_boot=500)})["claims"]
    assert c["low"] < 0 < 1 < c["high"] and c["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    "k,verdict", [(3, "inconclusive"), (4, "inconclusive"), (5, "excluded"), (8, "excluded")]
)
def test_a_verdict_needs_five_seeds(k, verdict):
    (c,) = judge([SUP], 1.0, exact_scores(k=k, t=(-0.5, 0.5)))["claims"]
    assert c["n_seeds"] == k and c["verdict"] == verdict
    if verdict == "inconclusive":
        assert c["reason"].startswith(f"{k} seeds: a verdict needs at least 5")
        assert "a gain of 1 point or more excluded" in c["reason"]


def _predictions(n, k, changed_per_seed, rng):
    """Item tables of a control and a treatment whose predictions differ on `changed_per_seed[s]` items."""
    control, treatment = {"t": {}}, {"t": {}}
    for s in range(k):
        pred = rng.integers(0, 2, n)
        flip = pred.copy()
        flip[rng.choice(n, changed_per_seed[s], replace=False)] ^= 1
        control["t"][s] = {"ids": np.arange(n), "predictions": pred}
        treatment["t"][s] = {"ids": np.arange(n), "predictions": flip}
    return control, treatment


def test_changed_predictions_are_counted_per_seed():
    rng = np.random.default_rng(0)
    control, treatment = _predictions(200, 5, [0, 1, 2, 3, 4], rng)
    ch = changed_predictions(treatment, control)
    assert (
        ch["changed"] == [0, 1, 2, 3, 4] and ch["items"] == 200 and ch["fraction"] == pytest.approx(10 / 1000)
    )
    assert changed_predictions(treatment, {"t": {9: control["t"][0]}}) is None  # no shared seed: not measured


@pytest.mark.parametrize(
    "changed,acted",
    [
        ([0] * 5, False),
        ([1, 0, 3, 1, 2], False),
        ([9, 10, 9, 10, 11], False),
        ([10] * 5, True),
        ([40] * 5, True),
    ],
)
def test_a_treatment_that_did_not_act_is_not_exercised(changed, acted):
    """1,000 items, margin 1 point: the treatment acted if it changed at least 1% of its control's predictions
    (mean over seeds). Below that, whatever the interval says (here: a gain of 1 point or more excluded), the
    claim is "not exercised", and the reason says what was compared."""
    claim = Claim("sup", "t beats ref", "superiority", "t", "ref")
    rng = np.random.default_rng(1)
    control, treatment = _predictions(1000, 5, changed, rng)
    checks = {"sup": {"control": "ref", "changed": changed_predictions(treatment, control), "measures": {}}}
    (c,) = judge([claim], 1.0, exact_scores(t=(-0.5, 0.5)), checks)["claims"]
    assert c["manipulation"]["acted"] is acted
    assert c["verdict"] == ("excluded" if acted else "not exercised")
    if not acted:
        assert f"of 1,000 per seed ({np.mean(changed) / 10:.2f}%)" in c["reason"]
        assert "in effect ref was compared with itself" in c["reason"]
    # the same changes against a margin of 5 points: 1% of the items is not enough
    (c,) = judge([claim], 5.0, exact_scores(t=(-0.5, 0.5)), checks)["claims"]
    assert c["verdict"] == "not exercised"


def test_not_exercised_overrides_supported_and_no_check_changes_nothing():
    rng = np.random.default_rng(2)
    control, treatment = _predictions(1000, 5, [0] * 5, rng)
    checks = {"sup": {"control": "ref", "changed": changed_predictions(treatment, control), "measures": {}}}
    assert judge([SUP], 1.0, exact_scores(t=(0.2, 2.0)), checks)["claims"][0]["verdict"] == "not exercised"
    unmeasured = {"sup": {"control": "ref", "changed": None, "measures": {}}}
    (c,) = judge([SUP], 1.0, exact_scores(t=(0.2, 2.0)), unmeasured)["claims"]
    assert c["verdict"] == "supported" and "acted" not in c["manipulation"]


def test_control_defaults():
    assert SUP.control_experiment == "ref" and NONINF.control_experiment is None
    assert Claim("x", "x", "non-inferiority", "t", "big", power="small").control_experiment == "small"
    assert Claim("x", "x", "superiority", "t", "r", control="c").control_experiment == "c"


def test_pareto_frontier():
    pts = [(10, 80.0), (100, 85.0), (1000, 84.0), (50, 79.0), (10, 81.0)]
    assert pareto(pts) == [4, 1]


# --------------------------------------------------------------------------------------------------
# The LLM commonsense family: its paper numbers are under the reference's answer extraction, its primary metric
# under the whole-word rule; the tables set the runs' reference-rule score beside the paper's numbers.


def _llm_record(name: str, seed: int, correct: dict, correct_reference: dict) -> dict:
    """A complete record of the paper profile's `name` as a run at its config rate would write it, with per-item
    correctness under each extraction rule (the primary is whole_word)."""
    from baselines import build_method
    from experiments.commonsense_llm.family import EXTRACTION_DESCRIPTIONS
    from experiments.harness.plan import load_configs, planned_hash
    from experiments.harness.profiles import load_profile

    profile = load_profile("commonsense_llm", "paper")
    cfg = load_configs(profile)[(name, None)]
    per_task = {
        t: {"n": len(c), "accuracy": float(np.mean(c)), "accuracy_whole_word": float(np.mean(c)),
            "accuracy_reference": float(np.mean(correct_reference[t])),
            "items": {"ids": list(range(len(c))), "correct": list(c), "correct_reference": list(correct_reference[t])}}
        for t, c in correct.items()
    }  # fmt: skip
    return {
        "schema_version": 2, "status": "complete", "family": "commonsense_llm", "profile": "paper",
        "experiment": name, "task": None, "method": cfg.method.name,
        "method_params": dict(build_method(cfg.method.name, **cfg.method.params).params), "seed": seed,
        "lr": cfg.train.lr, "config": cfg.to_dict(), "config_hash": planned_hash(cfg, cfg.train.lr),
        "provenance": {"git": {"commit": "0" * 40, "dirty": False}}, "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T01:00:00+00:00", "wall_time_s": 3600.0, "identity": {"model": {"name": "x"}},
        "peak_memory_mib": 1.0,
        "param_counts": {"trainable": 1000 * cfg.method.params.get("r", 1), "head": 0, "stored": 0, "total_model": 10**9},
        "validation_curve": [{"step": 1, "val_loss": 1.0}], "best_step": 1, "selection_metric": "val_loss",
        "diagnostics": {},
        "test": {"protocol": "generation (paper protocol)", "per_task": per_task, "missing_tasks": [],
                 "primary_metric": "accuracy",
                 "score": float(np.mean([v["accuracy"] for v in per_task.values()])),
                 "extraction": {"primary": "whole_word", "secondary": ["reference"],
                                "rules": dict(EXTRACTION_DESCRIPTIONS)}},
    }  # fmt: skip


def test_llm_tables_set_the_reference_rule_beside_the_papers_numbers(tmp_path):
    """Simulated paper-profile runs whose two extraction rules disagree (the reference rule misses about a
    quarter of the right answers): the task cells and the avg column show the run's reference-rule score next
    to the paper's number, labelled, the score stays the whole-word one, and the verdict names both rules."""
    from experiments.commonsense.data import TASKS
    from experiments.commonsense_llm.family import EXTRACTION_DESCRIPTIONS
    from experiments.harness.records import run_path, write_atomic
    from experiments.report.tables import write_tables

    rng = np.random.default_rng(0)
    n = 40
    expected = {}
    for name, p in (("llama-7b-lora-r32", 0.7), ("llama-7b-loradash-r32", 0.8)):
        correct = {t: (rng.random(n) < p).astype(int).tolist() for t in TASKS}
        # the reference rule reads no answer from about a quarter of the outputs ("True" for "true")
        reference = {t: [c * int(rng.random() < 0.75) for c in v] for t, v in correct.items()}
        rec = _llm_record(name, 0, correct, reference)
        write_atomic(run_path(tmp_path, "paper", "commonsense_llm", name, 0, rec["lr"]), rec)
        expected[name] = (
            {t: 100 * np.mean(v) for t, v in correct.items()},
            {t: 100 * np.mean(v) for t, v in reference.items()},
        )

    written = write_tables("commonsense_llm", "paper", tmp_path, n_boot=50)
    out = tmp_path / "paper" / "commonsense_llm"
    table, verdict = (out / "table.md").read_text(), (out / "verdict.md").read_text()
    whole, ref = expected["llama-7b-lora-r32"]
    assert abs(np.mean(list(whole.values())) - np.mean(list(ref.values()))) > 5  # the rules separate
    row = next(line for line in table.splitlines() if line.startswith("| llama-7b-lora-r32 |"))
    assert f"| {np.mean(list(whole.values())):.1f} [" in row  # the score: whole-word accuracy
    assert f"{whole['boolq']:.1f} (paper's rule {ref['boolq']:.1f}; paper 68.9)" in row
    assert row.endswith(f"| {np.mean(list(ref.values())):.1f} | 74.7 |")  # reference-rule avg, paper avg
    assert "| avg, paper's rule (accuracy_reference) | paper avg over its 8 tasks (" in table
    assert (
        "The accuracy here is read by the whole_word rule: first label of the task as a whole word" in table
    )
    assert "accuracy read by the whole_word rule" in verdict and "verdicts are judged on accuracy" in verdict
    assert "scored by the reference's re.findall" in verdict
    claim = next(
        line for line in verdict.splitlines() if line.startswith("| At rank 32, LoRA-Dash beats LoRA")
    )
    dash_ref = np.mean(list(expected["llama-7b-loradash-r32"][1].values()))
    assert claim.endswith(f"| {dash_ref:.1f} / {np.mean(list(ref.values())):.1f} |")
    summary = json.loads((out / "summary.json").read_text())
    lora = next(r for r in summary["rows"] if r["experiment"] == "llama-7b-lora-r32")
    assert lora["paper_metric"]["score"] == pytest.approx(np.mean(list(ref.values())))
    assert summary["scoring_rules"] == [f"the whole_word rule: {EXTRACTION_DESCRIPTIONS['whole_word']}"]
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert header[-9:] == ["accuracy_reference", *(f"{t}:accuracy_reference" for t in sorted(TASKS))]
    # regenerated from the same records: the same bytes
    before = {p: p.read_bytes() for p in written if p.suffix in (".md", ".csv", ".json", ".png")}
    for p in before:
        p.unlink()
    write_tables("commonsense_llm", "paper", tmp_path, n_boot=50)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_records_made_with_other_package_versions_are_labelled_not_mixed_in_silently(tmp_path):
    """Two runs, one made with the locked releases and one with a newer transformers: the table
    marks the experiment and names the record and the versions; records all on the lock leave no such section."""
    from experiments.commonsense.data import TASKS
    from experiments.harness.lockcheck import read_lock
    from experiments.harness.records import run_path, write_atomic
    from experiments.report.tables import write_tables

    lock = read_lock()
    on_lock = {"transformers": lock["transformers"], "torch": lock["torch"] + "+cpu", "peft": lock["peft"]}
    rng = np.random.default_rng(1)
    for name, packages in (
        ("llama-7b-lora-r32", on_lock),
        ("llama-7b-loradash-r32", {**on_lock, "transformers": "99.0.0"}),
    ):
        correct = {t: (rng.random(20) < 0.7).astype(int).tolist() for t in TASKS}
        rec = _llm_record(name, 0, correct, correct)
        rec["provenance"]["packages"] = packages
        write_atomic(run_path(tmp_path, "paper", "commonsense_llm", name, 0, rec["lr"]), rec)
    write_tables("commonsense_llm", "paper", tmp_path, n_boot=20)
    out = tmp_path / "paper" / "commonsense_llm"
    table = (out / "table.md").read_text()
    assert "| llama-7b-loradash-r32 † |" in table and "| llama-7b-lora-r32 |" in table
    assert "## Records made with other package versions than requirements.lock (1 of 2)" in table
    lr = _llm_record("llama-7b-loradash-r32", 0, {}, {})["lr"]
    assert (
        f"- llama-7b-loradash-r32 seed 0 lr {lr:g}: transformers 99.0.0 (lock {lock['transformers']})"
        in table
    )
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["off_lock"]) == [f"llama-7b-loradash-r32 seed 0 lr {lr:g}"]
    # the same runs, all on the lock: no marker, no section
    rec = json.loads(
        run_path(tmp_path, "paper", "commonsense_llm", "llama-7b-loradash-r32", 0, lr).read_text()
    )
    rec["provenance"]["packages"] = on_lock
    write_atomic(run_path(tmp_path, "paper", "commonsense_llm", "llama-7b-loradash-r32", 0, lr), rec)
    write_tables("commonsense_llm", "paper", tmp_path, n_boot=20)
    table = (out / "table.md").read_text()
    assert "†" not in table and "other package versions" not in table
    assert "off_lock" not in json.loads((out / "summary.json").read_text())


def seed_scores(values):
    """Seed-only scores of a metric without items: experiment -> per-seed values (fractions)."""
    return {
        name: stats.seed_only_scores({"t": dict(enumerate(v))}, 100.0, n_boot=50)
        for name, v in values.items()
    }


AT_LEAST = Claim("above-chance", "recovers above chance", "at-least", "dash", metric="recovery", value=10.0)


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0.30, 0.31, 0.29, 0.30, 0.30], "supported"),  # 30 +- ~1.6 points: above 10
        ([0.05, 0.06, 0.04, 0.05, 0.05], "excluded"),  # 5: below 10
        ([0.05, 0.30, 0.15, 0.10, 0.20], "inconclusive"),  # the interval spans 10
        ([0.11, 0.111, 0.109, 0.11, 0.11], "supported"),  # just inside: 11.0 +- 0.16
        ([0.09, 0.091, 0.089, 0.09, 0.09], "excluded"),  # just outside: 9.0 +- 0.16
        ([0.30, 0.31, 0.29], "inconclusive"),  # 3 seeds: a verdict needs 5
    ],
)
def test_at_least_verdicts_on_a_metric_without_items(values, expected):
    out = judge([AT_LEAST], 5.0, {}, metric_scores={"recovery": seed_scores({"dash": values})})
    (c,) = out["claims"]
    assert c["verdict"] == expected, c
    assert (
        c["claim"]["metric"] == "recovery" and c["claim"]["value"] == 10.0 and c["claim"]["reference"] is None
    )
    assert c["estimate"] == pytest.approx(100 * np.mean(values))


def test_seed_only_scores_have_no_item_term_and_pair_by_seed():
    s = seed_scores({"a": [0.5, 0.6, 0.7], "b": [0.4, 0.5, 0.6]})
    d = stats.difference(s["a"], s["b"])
    assert d.paired and d.estimate == pytest.approx(10.0) and d.low == d.high == pytest.approx(10.0)
    iv = stats.interval(s["a"])
    assert iv.se == pytest.approx(np.std([50, 60, 70], ddof=1) / np.sqrt(3))


def test_metric_claims_read_their_metric_and_skip_experiments_without_it():
    claim = Claim("rule", "rule beats random", "superiority", "dash", "random", metric="recovery")
    primary = scores_for({"dash": 0.0, "random": 0.0}, n_items=1000)  # the primary metric: no difference
    metric = {
        "recovery": seed_scores(
            {"dash": [0.5, 0.6, 0.55, 0.5, 0.6], "random": [0.02, 0.03, 0.02, 0.02, 0.03]}
        )
    }
    (c,) = judge([claim], 5.0, primary, metric_scores=metric)["claims"]
    assert c["verdict"] == "supported" and c["estimate"] == pytest.approx(52.6, abs=0.01)  # 55 - 2.4
    out = judge([claim], 5.0, primary, metric_scores={"recovery": seed_scores({"dash": [0.5, 0.6, 0.55]})})
    assert out["claims"] == [] and out["skipped"] == ["rule"]


def test_claims_without_the_new_fields_record_as_before():
    assert set(SAME_RANK.as_dict()) == {
        "id",
        "statement",
        "kind",
        "treatment",
        "reference",
        "power",
        "control",
    }


@pytest.mark.parametrize(
    "claim,problem",
    [
        (Claim("x", "x", "at-least", "dash", "lora", value=1.0), "no reference"),
        (Claim("x", "x", "at-least", "dash"), "numeric `value`"),
        (Claim("x", "x", "superiority", "dash"), "needs a reference"),
        (Claim("x", "x", "superiority", "dash", "lora", metric="nope"), "unknown metric"),
        (Claim("x", "x", "superiority", "dash", "lora", metric="distance"), "lower-is-better"),
        (Claim("x", "x", "better", "dash", "lora"), "kind must be"),
    ],
)
def test_malformed_claims_are_named(claim, problem):
    from experiments.harness.registry import get_family
    from experiments.report.tables import _claim_problem

    assert problem in _claim_problem(claim, get_family("planted"))


# -- the rank map's screens ----------------------------------------------------------------------------------------
def _lora_row(name, rank, method="lora"):
    return {"experiment": name, "method": method, "rank": rank}


@pytest.mark.parametrize(
    ("low", "high", "effect"),
    [
        ([50.0, 51.0], [54.0, 55.0], True),  # gain 4, pooled sd 0.71: above 3 sd
        ([50.0, 51.0], [51.5, 52.5], False),  # gain 1.5 < 3 x 0.71 = 2.1
        ([50.0, 52.0], [55.0, 57.0], True),  # gain 5 > 3 x 1.41 = 4.2
        ([50.0, 52.0], [53.0, 55.0], False),  # gain 3 < 4.2
        ([54.0, 55.0], [50.0, 51.0], False),  # a loss is never an effect
    ],
)
def test_rank_effect_is_a_gain_above_three_pooled_seed_sds(low, high, effect):
    from experiments.report.tables import rank_effects

    rows = [_lora_row("lora-r16", 16), _lora_row("lora-r1", 1), _lora_row("full", None, "full")]
    got = rank_effects(rows, {"lora-r1": _exact(low), "lora-r16": _exact(high), "full": _exact(high)}, ["t"])
    assert len(got) == 1
    (e,) = got
    assert (e["low"], e["high"], e["effect"]) == ("lora-r1", "lora-r16", effect)
    assert e["gain"] == pytest.approx(np.mean(high) - np.mean(low))
    assert e["pooled_seed_sd"] == pytest.approx(np.sqrt((np.var(low, ddof=1) + np.var(high, ddof=1)) / 2))


def test_rank_effect_needs_two_ranks_and_two_seeds():
    from experiments.report.tables import rank_effects

    one = {"lora-r1": _exact([50.0]), "lora-r16": _exact([60.0])}
    (e,) = rank_effects([_lora_row("lora-r1", 1), _lora_row("lora-r16", 16)], one, ["t"])
    assert e["effect"] is None and e["pooled_seed_sd"] is None
    assert rank_effects([_lora_row("lora-r1", 1), _lora_row("loradash-r1", 1, "loradash")], one, ["t"]) == []


def test_a_chosen_rate_at_the_end_of_a_grid_is_flagged():
    from experiments.report.tables import grid_edges

    def choice(lr, grid):
        return {"lr": lr, "scores": {f"{g:g}": 0.5 for g in grid}, "metric": "val_score"}

    chosen = {("a", "cola"): choice(4e-3, [2.5e-4, 1e-3, 4e-3]), ("b", "cola"): choice(1e-3, [2.5e-4, 1e-3, 4e-3]),
              ("c", "cola"): choice(2.5e-4, [2.5e-4, 1e-3, 4e-3]), ("d", "cola"): choice(2e-3, [1e-3, 2e-3]),
              ("e", "cola"): None}  # fmt: skip
    assert grid_edges(chosen) == {"a/cola": "highest", "c/cola": "lowest"}


def test_runs_best_at_their_last_validation_are_counted():
    from experiments.report.tables import last_checkpoint_best

    def rec(best, steps=(100, 200, 300)):
        return {"best_step": best, "validation_curve": [{"step": s} for s in steps]}

    assert last_checkpoint_best({"a": [rec(300), rec(200)], "b": [rec(100)]}) == {"a": 1, "b": 0}
