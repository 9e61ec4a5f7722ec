"""The full-scale causal-LM path end to end on a tiny LLaMA built from a config (nothing downloaded)."""

from __future__ import annotations

import pytest

from experiments.config import load_experiment, with_overrides
from experiments.profiles import load_profile
from experiments.results import read_record, validate_record
from experiments.train import run
from tests.test_commonsense_causal import build_tiny_llama, build_tokenizer, fixture_examples


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    texts = [e.instruction + " " + e.output for e in fixture_examples()]
    tok = build_tokenizer(texts)
    model = build_tiny_llama(len(tok))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_config(experiment: str, model_dir, **eval_overrides):
    p = load_profile("commonsense_llm", "tiny")
    cfg = load_experiment(
        "commonsense_llm", experiment, profile_overrides=p.overrides, profile_source=p.source,
        method_overrides=p.method_overrides,
    )  # fmt: skip
    return with_overrides(cfg, model={"name": str(model_dir)}, eval=eval_overrides)


def test_loradash_end_to_end_both_protocols(tiny_model_dir, tmp_path):
    cfg = tiny_config(
        "llama-7b-loradash-r4",
        tiny_model_dir,
        protocols=("generation", "loglikelihood"),
        loglikelihood_limit=2,
    )
    rec = run(cfg, seed=0, lr=1e-3, profile="tiny", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete" and validate_record(rec) == []
    d = rec["diagnostics"]
    assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] == 2 * 5
    test = rec["test"]
    assert set(test["per_task"]) == {"boolq", "ARC-Easy", "piqa"} and test["missing_tasks"] == ["hellaswag"]
    for r in test["per_task"].values():
        assert r["n"] == 3 and 0 <= r["no_answer_rate"] <= 1 and len(r["correct"]) == 3
    assert test["protocols"]["generation"]["settings"]["num_beams"] == 2
    ll = test["protocols"]["loglikelihood"]
    assert set(ll) >= {"boolq", "ARC-Easy", "piqa"}
    assert all("acc" in v for v in ll.values())
    assert rec["selection_metric"] == "val_loss" and all("val_loss" in p for p in rec["validation_curve"])
    saved = read_record(tmp_path / "tiny" / "commonsense_llm" / "llama-7b-loradash-r4" / "seed0_lr1e-3.json")
    assert saved["test"]["mean_accuracy"] == rec["test"]["mean_accuracy"]


@pytest.mark.parametrize("experiment", ["llama-7b-lora-r4", "llama-7b-dora-r4", "llama-7b-full"])
def test_other_methods_end_to_end(tiny_model_dir, tmp_path, experiment):
    rec = run(
        tiny_config(experiment, tiny_model_dir),
        seed=0,
        lr=1e-3,
        profile="tiny",
        results_dir=tmp_path,
        progress=False,
    )
    assert rec["status"] == "complete" and validate_record(rec) == []


def test_paper_plan_is_exactly_the_protocol():
    p = load_profile("commonsense_llm", "paper")
    cfg = load_experiment("commonsense_llm", "llama3-8b-loradash-r32", profile_overrides=p.overrides)
    assert cfg.model.target_modules == ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.warmup_steps, cfg.train.lr) == (
        3,
        16,
        100,
        1e-4,
    )
    assert (cfg.data.val_examples, cfg.data.split_seed, cfg.data.cutoff_len, cfg.data.train_on_inputs) == (
        120,
        42,
        256,
        True,
    )
    assert (cfg.eval.num_beams, cfg.eval.max_new_tokens) == (4, 32)
    assert cfg.method.params == {
        "r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "num_directions": 8,
        "prelaunch_steps": 100,
    }
    assert p.grid_for("loradash", cfg.train.lr) == (1e-4,)


def test_estimate_counts_the_paper_parameters():
    from experiments.commonsense_llm.estimate import estimate_run

    p = load_profile("commonsense_llm", "paper")
    lora = estimate_run(
        load_experiment("commonsense_llm", "llama-7b-lora-r32", profile_overrides=p.overrides)
    )
    dash = estimate_run(
        load_experiment("commonsense_llm", "llama-7b-loradash-r32", profile_overrides=p.overrides)
    )
    assert dash["trainable"] - lora["trainable"] == 32 * 5 * 8  # the paper's "+1.3k"
    assert 0.0080 < lora["trainable"] / lora["total_params"] < 0.0086  # the paper's 0.83%
    assert lora["steps"] == 3 * -(-(170_420 - 120) // 16)
