"""The full-scale causal-LM path end to end on a tiny LLaMA built from a config (nothing downloaded), and the
paper-scale plan: the authors' layout, validation interval and LoRA-Dash launch update, both extraction rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from experiments.commonsense.data import LABELS
from experiments.commonsense_llm.estimate import estimate_run, forward_call_launch_update, launch_update
from experiments.commonsense_llm.family import CommonsenseCausalRun
from experiments.harness.config import EXPERIMENTS_ROOT, load_experiment, read_yaml, with_overrides
from experiments.harness.profiles import load_profile
from experiments.harness.records import read_record, validate_record
from experiments.harness.train import run
from tests.helpers import ScriptedModel, build_tiny_llama, build_tokenizer, fixture_examples, tiny_config

TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    texts = [e.instruction + " " + e.output for e in fixture_examples()]
    tok = build_tokenizer(texts)
    model = build_tiny_llama(len(tok))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def paper_config(experiment: str):
    p = load_profile("commonsense_llm", "paper")
    return load_experiment("commonsense_llm", experiment, profile_overrides=p.overrides)


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
    assert launch_update(cfg, 24) == 2  # the optimizer-step clock: after update t
    test = rec["test"]
    assert set(test["per_task"]) == {"boolq", "ARC-Easy", "piqa"} and test["missing_tasks"] == ["hellaswag"]
    assert test["extraction"]["primary"] == "whole_word" and test["extraction"]["secondary"] == ["reference"]
    assert "whole_word" in test["protocol"]
    for r in test["per_task"].values():
        assert r["n"] == 3 and 0 <= r["no_answer_rate"] <= 1
        assert r["accuracy"] == r["accuracy_whole_word"] and 0 <= r["accuracy_reference"] <= 1
        assert len(r["items"]["correct"]) == len(r["items"]["correct_reference"]) == 3
        assert r["batch1_check"] == {"n": 2, "equal_outputs": 1.0, "equal_answers": 1.0}  # fp32 on the CPU
    gen = test["protocols"]["generation"]
    assert gen["settings"]["num_beams"] == 2 and gen["settings"]["batch_size"] == 3
    assert gen["adapter_merged"] is True and gen["weights_dtype"] == "float32"
    assert gen["batch1_check"] == {"n": 6, "items_per_task": 2, "equal_outputs": 1.0, "equal_answers": 1.0}
    ll = test["protocols"]["loglikelihood"]
    assert set(ll) >= {"boolq", "ARC-Easy", "piqa"}
    assert all("acc" in v for v in ll.values())
    assert rec["selection_metric"] == "val_loss" and all("val_loss" in p for p in rec["validation_curve"])
    saved = read_record(tmp_path / "tiny" / "commonsense_llm" / "llama-7b-loradash-r4" / "seed0_lr1e-3.json")
    assert saved["test"]["score"] == rec["test"]["score"]
    assert saved["test"]["per_task"] == rec["test"]["per_task"]


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
    # Full fine-tuning has no adapter to merge; the adapters are merged for scoring, as the reference does.
    assert rec["test"]["protocols"]["generation"]["adapter_merged"] is (experiment != "llama-7b-full")


# --------------------------------------------------------------------------------------------------
# The authors' forward-call clock launches at the update the layout predicts


def test_forward_call_launch_update_formula():
    authors = dict(calls_per_update=1, eval_every=80, val_batches=15, max_steps=31_932)
    assert forward_call_launch_update(prelaunch_calls=100, **authors) == 86  # after 85 updates (METHOD.md)
    # The project's former layout (micro-batches of 4, validation every 200): about 25 updates.
    former = dict(calls_per_update=4, eval_every=200, val_batches=15, max_steps=31_932)
    assert forward_call_launch_update(prelaunch_calls=100, **former) == 26
    # A launch inside the validation after update 3 shows at update 4, the first that runs launched.
    small = dict(calls_per_update=1, eval_every=3, val_batches=2, max_steps=8)
    assert forward_call_launch_update(prelaunch_calls=3, **small) == 4
    assert forward_call_launch_update(prelaunch_calls=4, **small) == 4
    assert forward_call_launch_update(prelaunch_calls=5, **small) == 4  # calls 1-3, validation 4-5, then 6
    assert forward_call_launch_update(prelaunch_calls=6, **small) == 5
    assert forward_call_launch_update(prelaunch_calls=0, **small) == 1
    # 8 updates + 3 validations of 2 batches = 14 calls: a launch in the last validation is seen by no update.
    assert forward_call_launch_update(prelaunch_calls=11, **small) == 8
    assert forward_call_launch_update(prelaunch_calls=12, **small) is None
    assert forward_call_launch_update(prelaunch_calls=100, **small) is None


@pytest.mark.parametrize(
    ("grad_accum", "checkpointing", "prelaunch", "expected"),
    [
        (1, False, 7, 6),  # the authors' layout scaled down: the (t+1)-th call is update 6's forward
        (1, False, 4, 4),  # the (t+1)-th call is in the validation after update 3: update 4 runs launched
        (2, True, 10, 3),  # 2 micro-batches x (forward + checkpoint recomputation) = 4 calls per update
    ],
)
def test_forward_call_clock_launches_at_the_predicted_update(
    tiny_model_dir, tmp_path, grad_accum, checkpointing, prelaunch, expected
):
    cfg = tiny_config("llama-7b-loradash-r32-authors", tiny_model_dir, max_new_tokens=2, batch1_check_items=0)
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.train.eval_every) == (16, 1, 80)  # pinned layout
    cfg = with_overrides(
        cfg,
        model={"gradient_checkpointing": checkpointing},
        data={"val_examples": 8},
        train={
            "batch_size": 4,
            "grad_accum": grad_accum,
            "eval_every": 3,
            "eval_batch_size": 4,
            "max_steps": 6,
        },
    )
    params = {**cfg.method.params, "prelaunch_steps": prelaunch, "r": 4, "lora_alpha": 8, "num_directions": 2}
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, params=params))
    assert launch_update(cfg, 24) == expected
    rec = run(cfg, seed=0, lr=1e-3, profile="tiny", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete", rec.get("error")
    d = rec["diagnostics"]
    assert d["prelaunch_clock"] == "forward_call"
    assert d["launch_step"] == d["launch_step_last_layer"] == expected
    assert d["launched_layers"] == d["num_layers"] == 2 * 5


def test_dry_run_plan_shows_layout_interval_and_launch_update(capsys):
    from experiments.cli import main

    assert main(["list", "--family", "commonsense_llm", "--profile", "paper", "--estimate"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "seed=" in line]
    assert len(lines) == 60
    for line in lines:
        name = line.split()[2]
        assert "layout=" in line and "eval_every=" in line, line
        if "-authors" in name:
            assert "layout=16 x 1 eval_every=80 launch_update=86" in line, line
        elif "loradash" in name:
            assert "layout=16 x 1 eval_every=80 launch_update=100" in line, line
        else:
            assert "launch_update" not in line, line
        if name != "llama-7b-lora-r32-quoted":  # LLM-Adapters' README layout
            assert "layout=16 x 1 eval_every=80" in line, line


def test_authors_layout_is_pinned_and_documented():
    for model in ("llama-7b", "llama2-7b", "llama3-8b"):
        cfg = paper_config(f"{model}-loradash-r32-authors")
        t = cfg.train
        assert (t.batch_size, t.grad_accum, t.eval_every, t.eval_batch_size) == (16, 1, 80, 8)
        assert cfg.data.val_examples == 120 and cfg.model.gradient_checkpointing is False
        assert cfg.method.params["prelaunch_clock"] == "forward_call"
        assert estimate_run(cfg)["launch_update"] == 86
        # Accumulation as a memory option moves the authors' clock: micro-batches of 4 launch after 25 updates.
        faster = with_overrides(cfg, train={"grad_accum": 4, "eval_every": 200})
        assert estimate_run(faster)["launch_update"] == 26 and estimate_run(faster)["layout"] == "4 x 4"


# --------------------------------------------------------------------------------------------------
# Scoring: both extraction rules in the record, the reference's merged batch-1 evaluation


def _separating_replies(test: dict) -> tuple[dict[str, str], dict[str, list[int]], dict[str, list[int]]]:
    """Per task, three golden outputs: whole-word right and reference blind (upper case), reference right and
    whole-word wrong (the label inside a longer word, then a wrong label), both right."""
    replies: dict[str, str] = {}
    whole, reference = {}, {}
    for task, items in test.items():
        for item, kind in zip(items, ("upper", "inside", "plain"), strict=True):
            wrong = next(label for label in LABELS[task] if label != item.answer)
            replies[item.question] = {
                "upper": f"the correct answer is {item.answer.upper()}",
                "inside": f"x{item.answer}, so {wrong}",
                "plain": f"the correct answer is {item.answer}",
            }[kind]
        whole[task], reference[task] = [1, 0, 1], [0, 1, 1]
    return replies, whole, reference


@pytest.mark.parametrize("primary", ["whole_word", "reference"])
def test_record_carries_both_extraction_rules_from_the_same_generations(tiny_model_dir, primary):
    cfg = tiny_config("llama-7b-lora-r4", tiny_model_dir, extraction=primary)
    family = CommonsenseCausalRun(cfg)
    replies, whole, reference = _separating_replies(family.test)
    model = ScriptedModel(family.tokenizer, replies)
    test = family.evaluate_test(model, "cpu")
    by_rule = {"whole_word": whole, "reference": reference}
    other = "reference" if primary == "whole_word" else "whole_word"
    assert test["extraction"]["primary"] == primary and test["extraction"]["secondary"] == [other]
    assert set(test["extraction"]["rules"]) == {"whole_word", "reference"}
    # 3 tasks x 3 items in batches of 3, and the first 2 items of each task again at batch 1.
    assert model.batch_sizes == [3, 1, 1] * 3
    for task, r in test["per_task"].items():
        assert r["items"]["correct"] == by_rule[primary][task]
        assert r["items"][f"correct_{other}"] == by_rule[other][task]
        assert r["accuracy"] == r[f"accuracy_{primary}"] == 2 / 3 and r[f"accuracy_{other}"] == 2 / 3
        assert r["no_answer_rate_whole_word"] == 0 and r["no_answer_rate_reference"] == 1 / 3
        assert r["no_answer_rate"] == r[f"no_answer_rate_{primary}"]
        assert r["batch1_check"]["equal_outputs"] == 1.0
    assert test["protocols"]["generation"]["adapter_merged"] is False  # not a peft model


def test_scoring_merges_the_adapter_and_unmerges_after(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama-7b-lora-r4", tiny_model_dir, batch1_check_items=0, max_new_tokens=4)
    family = CommonsenseCausalRun(cfg)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=list(TARGETS), init_lora_weights=False))
    layers = [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = family.evaluate_test(model, "cpu")
    unmerged = CommonsenseCausalRun(with_overrides(cfg, eval={"merge_adapter": False})).evaluate_test(
        model, "cpu"
    )
    assert merged["protocols"]["generation"]["adapter_merged"] is True
    assert unmerged["protocols"]["generation"]["adapter_merged"] is False
    assert not any(m.merged for m in layers)  # nothing stays merged
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    for task, r in merged["per_task"].items():  # fp32: merged and unmerged score alike
        assert r["outputs"] == unmerged["per_task"][task]["outputs"]


# --------------------------------------------------------------------------------------------------
# The paper plan


def test_paper_plan_is_exactly_the_protocol():
    p = load_profile("commonsense_llm", "paper")
    cfg = paper_config("llama3-8b-loradash-r32")
    assert cfg.model.target_modules == TARGETS and cfg.model.gradient_checkpointing is False
    t = cfg.train
    assert (t.epochs, t.batch_size, t.grad_accum, t.warmup_steps, t.lr) == (3, 16, 1, 100, 1e-4)
    assert (t.eval_every, t.eval_batch_size, t.weight_decay, t.mixed_precision) == (80, 8, 0.0, "fp16")
    d = cfg.data
    assert (d.val_examples, d.split_seed, d.cutoff_len, d.train_on_inputs) == (120, 42, 256, True)
    e = cfg.eval
    assert (e.num_beams, e.max_new_tokens, e.batch_size, e.merge_adapter) == (4, 32, 1, True)
    assert e.extraction == "whole_word" and e.prompt_template == "eval"
    assert cfg.method.params == {
        "r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "num_directions": 8,
        "prelaunch_steps": 100,
    }
    assert p.grid_for("loradash", cfg.train.lr) == (1e-4,)


def test_quoted_settings_are_their_own_experiments():
    paper = read_yaml(EXPERIMENTS_ROOT / "commonsense_llm" / "paper.yaml")
    lrs = {
        **{f"llama-7b-lora-r{r}-quoted": 3e-4 for r in (4, 8, 16, 32, 64)},
        "llama-7b-lora-r32-dora-readme": 3e-4,
        "llama-7b-dora-r32-quoted": 1e-4,
        "llama2-7b-lora-r32-quoted": 3e-4,
        "llama3-8b-lora-r32-quoted": 3e-4,
    }
    for name, lr in lrs.items():
        assert paper_config(name).train.lr == lr, name
        description = read_yaml(EXPERIMENTS_ROOT / "commonsense_llm" / name / "experiment.yaml")[
            "description"
        ]
        assert description.startswith("Quoted setting (labelled"), name
        assert name in paper["experiments"] and paper["experiments"][name]["source"], name
    llm_adapters = paper_config("llama-7b-lora-r32-quoted").train
    assert (llm_adapters.grad_accum, llm_adapters.eval_every) == (4, 200)
    assert paper_config("llama-7b-dora-r32").train.lr == 2e-4  # the same-lr grid stays beside them


def test_estimate_counts_the_paper_parameters():
    lora = estimate_run(paper_config("llama-7b-lora-r32"))
    dash = estimate_run(paper_config("llama-7b-loradash-r32"))
    assert dash["trainable"] - lora["trainable"] == 32 * 5 * 8  # the paper's "+1.3k"
    assert 0.0080 < lora["trainable"] / lora["total_params"] < 0.0086  # the paper's 0.83%
    assert lora["steps"] == 3 * -(-(170_420 - 120) // 16)
    assert "launch_update" not in lora and dash["launch_update"] == 100
