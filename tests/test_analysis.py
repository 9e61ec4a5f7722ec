"""The TSD analysis (issue 9): statistics on synthetic records with known answers, and one real run through the
GLUE smoke setup whose probe must pick exactly what the LoRA-Dash launch picked."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from experiments.analysis import tsd as analysis
from experiments.analysis.tsd import (
    LayerChoice,
    analyze,
    chance_jaccard,
    lambda_vs_sigma,
    load_dash_runs,
    prediction_scores,
    prediction_summary,
    seed_stability,
    spectrum_positions,
)
from experiments.analysis.tsd_probe import ProbeResult, ProbeSettings
from experiments.harness.records import read_record, run_path, write_atomic

K = 100  # min(out, in) of every synthetic layer
DIMS = {"enc.0.q": K, "enc.0.v": K}


def _write(root: Path, experiment: str, seed: int, lr: float, layers: dict, *, method: str = "loradash",
           status: str = "complete", task: str | None = "cola") -> Path:  # fmt: skip
    rows = {}
    for name, spec in layers.items():
        row = {"launched": spec.get("launched", True), "indices": spec["indices"],
               "sigma": spec.get("sigma", [1.0] * len(spec["indices"]))}  # fmt: skip
        if "lambda" in spec:
            row["lambda"] = spec["lambda"]
        rows[name] = row
    rec = {"status": status, "method": method, "experiment": experiment, "task": task, "seed": seed, "lr": lr,
           "diagnostics": {"layers": rows, "launch_step": 2, "prelaunch_steps": 2}}  # fmt: skip
    path = run_path(root, "synth", "glue", experiment, seed, lr, task)
    write_atomic(path, rec)
    return path


def _runs(root: Path):
    return load_dash_runs(root / "synth" / "glue", DIMS)


# -- positions in the spectrum --------------------------------------------------------------------------------
def test_positions_have_known_fractions():
    top = LayerChoice((0, 1, 2, 3), (), None, K)  # positions 0.005 ... 0.035: top 10%
    bottom = LayerChoice((96, 97, 98, 99), (), None, K)  # the 4 smallest of 100: bottom 10%
    middle = LayerChoice((50, 51, 89, 90), (), None, K)  # 89 -> 0.895 (not bottom), 90 -> 0.905 (bottom)
    pos = spectrum_positions([top, bottom, middle])
    assert pos["n"] == 12
    assert pos["top10"] == pytest.approx(4 / 12)
    assert pos["bottom10"] == pytest.approx(5 / 12)
    assert pos["smallest_s"] == pytest.approx(4 / 12)  # only the bottom layer's are among its 4 smallest
    assert pos["smallest_s_chance"] == pytest.approx(4 / K)
    assert sum(pos["histogram"]["counts"]) == 12 and pos["histogram"]["counts"][0] == 4
    assert (
        pos["histogram"]["counts"][-1] == 4 and pos["histogram"]["counts"][17] == 1
    )  # 89 -> 0.895 in [0.85, 0.9)
    # the top and bottom 10% hold the same number of directions (position = (i + 1/2) / k)
    every = spectrum_positions([LayerChoice(tuple(range(K)), (), None, K)])
    assert every["top10"] == every["bottom10"] == pytest.approx(0.1)


# -- stability across seeds -----------------------------------------------------------------------------------
def test_chance_jaccard_matches_enumeration():
    for k, s in [(5, 2), (6, 3), (7, 1)]:
        subsets = list(itertools.combinations(range(k), s))
        exact = (
            sum(len(set(a) & set(b)) / len(set(a) | set(b)) for a in subsets for b in subsets)
            / len(subsets) ** 2
        )
        assert chance_jaccard(s, k) == pytest.approx(exact)
    assert chance_jaccard(8, 8) == pytest.approx(1.0)


def test_seed_stability_has_known_overlaps(tmp_path):
    q_sets = [[0, 1, 2, 3], [0, 1, 2, 4], [10, 11, 12, 13]]  # Jaccard 3/5, 0, 0; shared 3/4, 0, 0
    for seed, q in enumerate(q_sets):
        _write(
            tmp_path, "dash", seed, 1e-3, {"enc.0.q": {"indices": q}, "enc.0.v": {"indices": [5, 6, 7, 8]}}
        )
    _write(tmp_path, "other", 0, 1e-3, {"enc.0.q": {"indices": [1, 2, 3, 4]}})  # one seed: no pair
    stab = seed_stability(_runs(tmp_path))
    assert len(stab) == 1
    g = stab[0]
    assert (g["experiment"], g["task"], g["seeds"], g["layers"]) == ("dash", "cola", [0, 1, 2], 2)
    assert g["per_layer"]["enc.0.q"]["jaccard"] == pytest.approx(0.2)
    assert g["per_layer"]["enc.0.q"]["shared"] == pytest.approx(0.25)
    assert g["per_layer"]["enc.0.v"]["jaccard"] == pytest.approx(1.0)
    assert g["jaccard"] == pytest.approx(0.6) and g["shared"] == pytest.approx(0.625)
    assert g["chance_shared"] == pytest.approx(4 / K) and g["chance_jaccard"] == pytest.approx(
        chance_jaccard(4, K)
    )


def test_records_are_filtered_and_one_rate_is_kept(tmp_path):
    layer = {"enc.0.q": {"indices": [0, 1]}}
    _write(tmp_path, "dash", 0, 1e-3, layer)  # tuning run at the rate that lost
    for seed in (0, 1, 2):
        _write(tmp_path, "dash", seed, 2e-3, layer)
    _write(tmp_path, "dash", 3, 2e-3, layer, status="failed")
    _write(tmp_path, "lora", 0, 2e-3, layer, method="lora")
    _write(tmp_path, "dash", 4, 2e-3, {"enc.0.q": {"indices": [0, 0], "launched": False}})
    runs = _runs(tmp_path)
    assert [(r.seed, r.lr) for r in runs] == [(0, 2e-3), (1, 2e-3), (2, 2e-3), (4, 2e-3)]  # most seeds wins
    assert runs[-1].layers == {} and runs[-1].unlaunched == 1
    # the sweep's recorded choice wins over the seed count
    write_atomic(tmp_path / "synth" / "glue" / "selected_lr.json", {"selected": {"dash/cola": {"lr": 1e-3}}})
    assert [(r.seed, r.lr) for r in _runs(tmp_path)] == [(0, 1e-3)]


def test_unknown_layer_shape_is_named(tmp_path):
    _write(tmp_path, "dash", 0, 1e-3, {"enc.9.q": {"indices": [0]}})
    with pytest.raises(KeyError, match="enc.9.q"):
        _runs(tmp_path)


# -- lambda ---------------------------------------------------------------------------------------------------
def test_lambda_against_sigma_has_known_values():
    with_lam = LayerChoice((0, 1, 2, 3), (4.0, 3.0, 2.0, 1.0), (-0.4, 0.6, 1.0, 2.0), K)
    without = LayerChoice((5, 6), (1.0, 1.0), None, K)  # a record from before lambda was stored
    lam = lambda_vs_sigma([with_lam, without])
    assert lam["n"] == 4
    assert lam["max_abs_lambda"] == pytest.approx(2.0)
    assert lam["median_abs_lambda"] == pytest.approx(0.8)
    assert lam["median_relative_change"] == pytest.approx((0.2 + 0.5) / 2)  # ratios 0.1, 0.2, 0.5, 2
    assert lam["fraction_lambda_above_sigma"] == pytest.approx(0.25)
    assert lam["spearman_sigma_abs_lambda"] == pytest.approx(-1.0)
    assert lambda_vs_sigma([without]) == {"n": 0}


# -- prediction scores ----------------------------------------------------------------------------------------
def test_prediction_scores_have_known_values():
    full = list(range(16))  # full fine-tuning's top 16 by change rate
    got = prediction_scores([0, 1, 2, 3, 8, 9, 20, 21], full, 8)
    assert got == {"recall": 0.5, "in_top_2s": 0.75, "half_covered": 1.0}
    assert prediction_scores([7, 6, 5, 4, 30, 31, 32, 33], full, 8) == {
        "recall": 0.5, "in_top_2s": 0.5, "half_covered": 0.0}  # fmt: skip
    with pytest.raises(ValueError):
        prediction_scores([0, 1], full[:3], 2)


def test_prediction_summary_averages_layers_and_has_the_sigma_control():
    s, k = 2, 10
    probe = ProbeResult(
        layers=["a", "b"],
        dims={"a": k, "b": k},
        sigma={},
        full_rates={},
        full_order={"a": [9, 8, 0, 1], "b": [0, 1, 2, 3]},  # layer a's top directions are the 2 smallest
        lora_top={(2, 5): {"a": [9, 8], "b": [5, 6]}, (2, 10): {"a": [9, 0], "b": [0, 1]}},
        eps=1e-8,
    )
    summ = prediction_summary(probe, s)
    rows = {row["t"]: row for row in summ["by_rank_t"]}
    assert rows[5]["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert rows[10]["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert rows[10]["in_top_2s"] == pytest.approx(1.0) and rows[10]["half_covered"] == pytest.approx(1.0)
    assert summ["smallest_sigma_control"]["recall"] == pytest.approx(0.5)  # {8, 9}: all of a, none of b
    assert summ["chance"] == {"recall": pytest.approx(0.2), "in_top_2s": pytest.approx(0.4),
                              "half_covered": pytest.approx(0.2)}  # fmt: skip


def test_probe_settings_reject_bad_values():
    with pytest.raises(ValueError):
        ProbeSettings(snapshots=(50, 25))
    with pytest.raises(ValueError):
        ProbeSettings(ranks=(2, 2))
    with pytest.raises(ValueError):
        ProbeSettings(num_directions=1)


# -- the report -----------------------------------------------------------------------------------------------
def test_report_on_synthetic_records_is_deterministic(tmp_path):
    for seed in (0, 1):
        _write(tmp_path, "dash", seed, 1e-3, {
            "enc.0.q": {"indices": [96, 97, 98, 99], "sigma": [0.4, 0.3, 0.2, 0.1]},
            "enc.0.v": {"indices": [0, 1, 50, 60], "sigma": [9.0, 8.0, 1.0, 0.9]}})  # fmt: skip
    out = tmp_path / "report"
    paths = analyze("glue", "synth", tmp_path, out_dir=out, layer_dims=DIMS, log=lambda s: None)
    names = sorted(p.name for p in paths)
    assert names == ["analysis.json", "analysis.md", "positions.png"]  # no lambda in these records, no probe
    first = {p.name: p.read_bytes() for p in paths}
    summary = json.loads(first["analysis.json"])
    assert summary["positions"]["bottom10"] == pytest.approx(0.5)
    assert summary["positions"]["top10"] == pytest.approx(0.25)
    assert summary["seed_stability"][0]["jaccard"] == pytest.approx(1.0)
    md = first["analysis.md"].decode()
    assert "bottom 10%: 0.500" in md and "No record stores lambda" in md and "Not run" in md
    again = analyze("glue", "synth", tmp_path, out_dir=out, layer_dims=DIMS, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in again} == first


# -- one real run ---------------------------------------------------------------------------------------------
def test_real_run_and_probe_agree_with_the_launch(tmp_path):
    """A LoRA-Dash run of the GLUE smoke setup (launch after t = 2 steps), two copies as other seeds, then the
    analysis with the probe: at (r = 2, t = 2, same seed and rate) the probe must pick exactly the directions the
    run's launch picked, in every layer, and the copies give known overlaps."""
    from experiments.harness.config import load_experiment
    from experiments.harness.profiles import load_profile
    from experiments.harness.train import run

    p = load_profile("glue", "smoke")
    cfg = load_experiment("glue", "loradash-r2", profile_overrides=p.overrides, profile_source=p.source,
                          method_overrides=p.method_overrides, task="cola", task_overrides=None)  # fmt: skip
    rec = run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete"
    layers = rec["diagnostics"]["layers"]
    assert all(row["launched"] and len(row["lambda"]) == 8 for row in layers.values())
    moved = sorted(layers)[0]
    for seed in (
        1,
        2,
    ):  # copies: identical except one layer of seed 2, whose choice shares 4 of 8 with seed 0
        copy = json.loads(json.dumps(rec))
        copy["seed"] = seed
        if seed == 2:
            copy["diagnostics"]["layers"][moved]["indices"] = layers[moved]["indices"][:4] + [0, 1, 2, 3]
        write_atomic(run_path(tmp_path, "smoke", "glue", "loradash-r2", seed, 1e-3, "cola"), copy)

    settings = ProbeSettings(full_steps=3, full_lr=1e-4, lora_lr=1e-3, snapshots=(1, 2), ranks=(1, 2),
                             num_directions=8, num_threads=1)  # fmt: skip
    out = tmp_path / "analysis"
    paths = analyze("glue", "smoke", tmp_path, train=True, out_dir=out, probe=settings, experiment="loradash-r2",
                    task="cola", log=lambda s: None)  # fmt: skip
    assert {p.name for p in paths} == {"analysis.json", "analysis.md", "positions.png", "lambda_sigma.png",
                                       "prediction.json", "prediction.png", "spectrum.png"}  # fmt: skip
    pred = json.loads((out / "prediction.json").read_text())
    by_key = {(row["rank"], row["t"]): row for row in pred["summary"]["by_rank_t"]}
    assert set(by_key) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert all(0.0 <= row[key] <= 1.0 for row in by_key.values() for key in analysis.SCORES)
    assert set(pred["layers"]) == set(layers) and len(pred["spectra"]) == 3
    # the probe reads the choice exactly as the launch does
    assert pred["reference_t"] == 2
    for name, spectrum in pred["spectra"].items():
        assert spectrum["lora_top"]["r2"] == layers[name]["indices"]
        assert len(spectrum["full_rates"]) == pred["dims"][name] == 384
    md = (out / "analysis.md").read_text()
    assert "| 2 | 2 |" in md and "beats the control at" in md and "lambda recorded" in md
    summary = json.loads((out / "analysis.json").read_text())
    # positions of the real record, from the model's own shapes (every target of MiniLM-L6 has min(out, in) 384)
    idx = [i for row in layers.values() for i in row["indices"]]
    every = 2 * idx + [i for n, row in layers.items() if n != moved for i in row["indices"]]
    every += layers[moved]["indices"][:4] + [0, 1, 2, 3]
    assert summary["positions"]["n"] == len(every) == 3 * len(idx)
    assert summary["positions"]["bottom10"] == pytest.approx(
        sum((i + 0.5) / 384 > 0.9 for i in every) / len(every)
    )
    assert summary["positions"]["top10"] == pytest.approx(4 / len(every))
    g = summary["seed_stability"][0]
    assert g["seeds"] == [0, 1, 2] and g["layers"] == len(layers)
    # the moved layer: pairs (0,1) 1, (0,2) and (1,2) 4/12 (4 shared of 12 distinct); every other layer 1
    assert g["per_layer"][moved]["jaccard"] == pytest.approx((1 + 2 * 4 / 12) / 3)
    assert g["jaccard"] == pytest.approx((len(layers) - 1 + (1 + 2 * 4 / 12) / 3) / len(layers))
    assert summary["lambda_vs_sigma"]["n"] == 3 * len(idx)
    # a record-only rerun keeps the probe's result and rewrites the same bytes
    before = {p.name: p.read_bytes() for p in paths}
    again = analyze("glue", "smoke", tmp_path, out_dir=out, log=lambda s: None)
    assert "prediction.json" not in {p.name for p in again}
    assert {p.name: p.read_bytes() for p in again} == {
        k: v for k, v in before.items() if k != "prediction.json"
    }
    assert read_record(out / "prediction.json") == pred
    assert math.isfinite(pred["training"]["full"]["last_10pct_loss"])
