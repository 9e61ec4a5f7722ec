"""The causal-LM path of the commonsense protocol: prompts, training tokenization, the validation split,
batched generation (paper protocol) and lm-eval scoring (log-likelihood protocol), on a tiny LLaMA.

The tokenizer is a byte-level BPE trained here on the fixture prompts (so whitespace round-trips
exactly) with LLaMA's special-token layout: <unk>=0, <s>=1 (prepended), </s>=2, and no pad token.
The helpers at the top are plain functions so bench/bench_generation.py can reuse them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.commonsense import LABELS, TASKS, Example, load_examples, load_mixed, task_file
from experiments.commonsense_llm.generation import (
    GenerationResult,
    ItemResult,
    _left_pad,
    evaluate_generation,
    generation_config,
    pad_token_id,
)
from experiments.commonsense_llm.prompts import (
    IGNORE_INDEX,
    INDENT,
    build_prompt,
    tokenize_for_training,
    validation_split,
)
from tests.helpers import ScriptedModel, fixture_examples, tiny_causal_lm, train_tiny

FIXTURES = Path(__file__).parent / "fixtures" / "commonsense"
I16 = " " * 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # Models this small gain nothing from intra-op threads, and when other processes share the CPUs the
    # threads' spin-waiting makes them several times slower; the previous setting is restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_lm(_one_thread: None) -> tuple[Any, Any, list[Example]]:
    return tiny_causal_lm()


# --------------------------------------------------------------------------------------------------
# Prompts: golden strings read off the reference with `cat -A`

TRAIN_GOLDEN = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    "                ### Instruction:\n"
    "                Is the sky blue?\n"
    "                \n"
    "                ### Response:\n"
    "                the correct answer is true"
)
EVAL_GOLDEN = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                Is the sky blue?\n"
    "\n"
    "                ### Response:\n"
    "                "
)
TRAIN_INPUT_GOLDEN = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                Q\n"
    "                \n"
    "                ### Input:\n"
    "                ctx\n"
    "                \n"
    "                ### Response:\n"
    "                A"
)
EVAL_INPUT_GOLDEN = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "                ### Instruction:\n"
    "                Q\n"
    "\n"
    "                ### Input:\n"
    "                ctx\n"
    "\n"
    "                ### Response:\n"
    "                "
)


def test_prompt_golden_strings() -> None:
    assert (
        build_prompt("Is the sky blue?", output="the correct answer is true", template="train")
        == TRAIN_GOLDEN
    )
    assert build_prompt("Is the sky blue?", template="eval") == EVAL_GOLDEN
    assert build_prompt("Q", "ctx", "A", template="train") == TRAIN_INPUT_GOLDEN
    assert build_prompt("Q", "ctx", template="eval") == EVAL_INPUT_GOLDEN
    assert INDENT == I16


def test_prompt_templates_differ_only_in_whitespace() -> None:
    train = build_prompt("Is the sky blue?", template="train")  # output None == "" (the user prompt)
    assert train == build_prompt("Is the sky blue?", output="", template="train")
    # Exactly the two documented differences: two vs one trailing space, 16 spaces vs an empty line.
    assert train.replace("request.  \n", "request. \n").replace(f"\n{I16}\n", "\n\n") == EVAL_GOLDEN
    assert build_prompt("Is the sky blue?", output="X", template="eval") == EVAL_GOLDEN + "X"


def test_prompt_unknown_template() -> None:
    with pytest.raises(ValueError, match="known templates: train, eval"):
        build_prompt("q", template="alpaca")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Training tokenization


def _reference_tokenize(
    tokenizer: Any, item: dict[str, str], cutoff: int, train_on_inputs: bool
) -> dict[str, list]:
    """finetune.py's tokenize + generate_and_tokenize_prompt, restated independently for parity."""

    def tokenize(prompt: str, add_eos_token: bool = True) -> dict[str, list]:
        result = dict(
            tokenizer(prompt, truncation=True, max_length=cutoff, padding=False, return_tensors=None)
        )
        ids, mask = list(result["input_ids"]), list(result["attention_mask"])
        if ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff and add_eos_token:
            ids.append(tokenizer.eos_token_id)
            mask.append(1)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.copy()}

    full = tokenize(TRAIN_TEMPLATE_REF.format(**item))
    if not train_on_inputs:
        n = len(
            tokenize(TRAIN_TEMPLATE_REF.format(**{**item, "output": ""}), add_eos_token=False)["input_ids"]
        )
        full["labels"] = [-100] * n + full["labels"][n:]
    return full


# The no-input training template as a format string, typed out independently of prompts.py.
TRAIN_TEMPLATE_REF = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
    "                ### Instruction:\n                {instruction}\n                \n"
    "                ### Response:\n                {output}"
)


@pytest.mark.parametrize("cutoff", [256, 64, 30])
@pytest.mark.parametrize("train_on_inputs", [True, False])
def test_tokenize_matches_reference(tiny_lm, cutoff: int, train_on_inputs: bool) -> None:
    _, tokenizer, examples = tiny_lm
    for ex in examples:
        item = {"instruction": ex.instruction, "input": "", "output": ex.output}
        ours = tokenize_for_training(tokenizer, item, cutoff_len=cutoff, train_on_inputs=train_on_inputs)
        ref = _reference_tokenize(tokenizer, item, cutoff, train_on_inputs)
        assert ours == ref


def test_tokenize_eos_bos_and_labels(tiny_lm) -> None:
    _, tokenizer, examples = tiny_lm
    item = {"instruction": examples[0].instruction, "input": "", "output": examples[0].output}
    out = tokenize_for_training(tokenizer, item)
    assert out["input_ids"][0] == tokenizer.bos_token_id
    assert out["input_ids"][-1] == tokenizer.eos_token_id
    assert out["labels"] == out["input_ids"]  # train_on_inputs: loss on the prompt too
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    text = tokenizer.decode(out["input_ids"], skip_special_tokens=True)
    assert text == build_prompt(item["instruction"], output=item["output"], template="train")

    masked = tokenize_for_training(tokenizer, item, train_on_inputs=False)
    n_prompt = len(tokenizer(build_prompt(item["instruction"], template="train"))["input_ids"])
    assert masked["input_ids"] == out["input_ids"]
    assert masked["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert masked["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert masked["labels"][-1] == tokenizer.eos_token_id  # the model learns to stop

    assert tokenize_for_training(tokenizer, item, add_eos=False)["input_ids"] == out["input_ids"][:-1]
    # An output that already ends with EOS gets no second one.
    already = tokenize_for_training(tokenizer, {**item, "output": item["output"] + "</s>"})
    assert already["input_ids"] == out["input_ids"]


def test_tokenize_cutoff(tiny_lm) -> None:
    _, tokenizer, examples = tiny_lm
    item = {"instruction": examples[0].instruction, "output": examples[0].output}
    full = tokenize_for_training(tokenizer, item)
    n = len(full["input_ids"])
    cut = tokenize_for_training(tokenizer, item, cutoff_len=n - 5)
    assert cut["input_ids"] == full["input_ids"][: n - 5]  # truncated: no EOS appended
    assert len(cut["labels"]) == len(cut["attention_mask"]) == n - 5
    # One token short of the cutoff: EOS still fits.
    assert tokenize_for_training(tokenizer, item, cutoff_len=n)["input_ids"] == full["input_ids"]
    # The prompt alone fills the cutoff: every label is masked, lengths still agree.
    tiny = tokenize_for_training(tokenizer, item, cutoff_len=8, train_on_inputs=False)
    assert tiny["labels"] == [IGNORE_INDEX] * 8 and len(tiny["input_ids"]) == 8
    with pytest.raises(ValueError, match="cutoff_len"):
        tokenize_for_training(tokenizer, item, cutoff_len=0)


# --------------------------------------------------------------------------------------------------
# Validation split


def _synthetic_items(n: int) -> list[dict[str, str]]:
    return [
        {"instruction": f"question {i}", "input": "", "output": f"the correct answer is answer{i % 3 + 1}"}
        for i in range(n)
    ]


@pytest.mark.parametrize(("n_items", "n_val"), [(7, 2), (300, 120)])
def test_validation_split_matches_reference_call(tmp_path: Path, n_items: int, n_val: int) -> None:
    from datasets import load_dataset

    items = _synthetic_items(n_items)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    # finetune.py: load_dataset("json", data_files=...)["train"].train_test_split(test_size=120, shuffle=True, seed=42)
    ref = load_dataset("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))[
        "train"
    ].train_test_split(test_size=n_val, shuffle=True, seed=42)
    train, val = validation_split(items, n=n_val, seed=42)
    assert [x["instruction"] for x in val] == ref["test"]["instruction"]
    assert [x["instruction"] for x in train] == ref["train"]["instruction"]


def test_validation_split_deterministic_and_partitions() -> None:
    items = load_mixed(FIXTURES / "commonsense_170k.json") + fixture_examples()  # objects, not dicts
    train, val = validation_split(items, n=5)
    assert (train, val) == validation_split(items, n=5)
    assert len(val) == 5 and len(train) == len(items) - 5
    assert sorted(map(id, train + val)) == sorted(map(id, items))  # the caller's objects, each once
    assert validation_split(items, n=5, seed=1)[1] != val
    with pytest.raises(ValueError, match="validation size"):
        validation_split(items, n=len(items))


# --------------------------------------------------------------------------------------------------
# Paper protocol: generation


def test_batched_generation_equals_batch_1_beam4(tiny_lm) -> None:
    model, tokenizer, examples = tiny_lm
    one = evaluate_generation(model, tokenizer, examples, batch_size=1)
    many = evaluate_generation(model, tokenizer, examples, batch_size=16)
    assert many.outputs == one.outputs
    assert many.predictions == one.predictions
    # The trained tiny model answers some items and not others: the comparison covers both kinds.
    assert 0 < sum(p is not None for p in one.predictions) < len(examples)
    assert one.settings["num_beams"] == 4 and one.settings["max_new_tokens"] == 32


def test_batched_generation_equals_batch_1_greedy(tiny_lm) -> None:
    model, tokenizer, examples = tiny_lm
    one = evaluate_generation(model, tokenizer, examples, batch_size=1, greedy=True)
    for batch_size in (5, 16):
        many = evaluate_generation(model, tokenizer, examples, batch_size=batch_size, greedy=True)
        assert many.outputs == one.outputs
        assert many.predictions == one.predictions
    assert one.settings["num_beams"] == 1


def test_left_padding_without_mask_changes_answers(tiny_lm) -> None:
    """Negative control: the reference's batching (left pads, no attention mask) does change outputs."""
    model, tokenizer, examples = tiny_lm
    config = generation_config(pad_id=pad_token_id(tokenizer), eos_id=2, num_beams=1)
    prompts = [build_prompt(e.instruction, template="eval") for e in examples]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    padded, mask = _left_pad(ids, config.pad_token_id)
    assert (mask.sum(1) == torch.tensor([len(i) for i in ids])).all()
    with torch.inference_mode():
        masked = model.generate(input_ids=padded, attention_mask=mask, generation_config=config)
        unmasked = model.generate(
            input_ids=padded, attention_mask=torch.ones_like(mask), generation_config=config
        )
    width = padded.shape[1]
    assert not torch.equal(masked[:, width:], unmasked[:, width:])


def test_generation_leaves_tokenizer_and_mode_alone(tiny_lm) -> None:
    model, tokenizer, examples = tiny_lm
    side = tokenizer.padding_side
    model.train()
    try:
        result = evaluate_generation(model, tokenizer, examples[:2], batch_size=2, max_new_tokens=4)
        assert model.training
    finally:
        model.eval()
    assert tokenizer.pad_token is None and tokenizer.padding_side == side
    assert result.settings["pad_token_id"] == tokenizer.unk_token_id == 0  # the reference's pad id 0 = <unk>
    assert all("### Instruction" not in o for o in result.outputs)  # only new tokens are decoded


def test_pad_token_fallbacks(tiny_lm) -> None:
    _, tokenizer, _ = tiny_lm

    class Tok:
        def __init__(self, pad: int | None, unk: int | None, eos: int | None) -> None:
            self.pad_token_id, self.unk_token_id, self.eos_token_id = pad, unk, eos

    assert pad_token_id(Tok(7, 0, 2)) == 7
    assert pad_token_id(Tok(None, 0, 2)) == 0  # LLaMA-1/2: unk, as the reference
    assert pad_token_id(Tok(None, None, 2)) == 2  # LLaMA-3: eos
    with pytest.raises(ValueError):
        pad_token_id(Tok(None, None, None))
    assert pad_token_id(tokenizer) == 0


def test_scoring_both_extraction_rules_from_one_generation(tiny_lm) -> None:
    """Golden outputs that separate the two rules, scored from the same generations."""
    _, tokenizer, examples = tiny_lm
    boolq = [e for e in examples if e.task == "boolq"]
    piqa = [e for e in examples if e.task == "piqa"]
    replies = {
        boolq[0].question: " the correct answer is True",  # whole-word: true; reference: none (case)
        boolq[1].question: "untrue, so the correct answer is false",  # reference reads "true" out of "untrue"
        boolq[2].question: f"the correct answer is {boolq[2].answer}",
        piqa[0].question: "solution12",  # reference: solution1 (a label inside a longer token)
        piqa[1].question: "solution1 ### Response: solution2",  # reference keeps what follows the last marker
        piqa[2].question: "I do not know",
    }
    chosen = boolq + piqa
    model = ScriptedModel(tokenizer, replies)
    result = evaluate_generation(model, tokenizer, chosen, batch_size=4)
    assert model.batch_sizes == [4, 2]  # one generation serves both rules
    whole = ["true", "false", boolq[2].answer, None, "solution1", None]
    reference = [None, "true", boolq[2].answer, "solution1", "solution2", None]
    assert result.predictions == result.predictions_for("whole_word") == whole
    assert result.predictions_for("reference") == reference
    assert result.outputs[0] == "the correct answer is True"  # stripped, special tokens dropped
    assert result.outputs[4] == "solution1 ### Response: solution2"  # the raw output is kept whole
    gold = [e.answer for e in chosen]
    for rule, predicted in (("whole_word", whole), ("reference", reference)):
        correct = [int(p == g) for p, g in zip(predicted, gold, strict=True)]
        assert result.correct_for(rule) == correct
        assert result.accuracy_for(rule) == sum(correct) / 6
        assert result.no_answer_rate_for(rule) == sum(p is None for p in predicted) / 6
    assert result.accuracy == result.accuracy_for("whole_word") and result.extraction == "whole_word"
    assert result.settings["extraction"] == "whole_word"
    assert result.settings["extraction_rules"] == ["whole_word", "reference"]

    # extraction="reference" only changes which rule the unsuffixed numbers report.
    model.batch_sizes.clear()
    as_reference = evaluate_generation(model, tokenizer, chosen, batch_size=4, extraction="reference")
    assert as_reference.predictions == reference and as_reference.correct == result.correct_for("reference")
    assert as_reference.accuracy == result.accuracy_for("reference")
    assert as_reference.no_answer_rate == result.no_answer_rate_for("reference")
    with pytest.raises(ValueError, match="known rules: whole_word, reference"):
        evaluate_generation(model, tokenizer, chosen, extraction="regex")  # type: ignore[arg-type]


def test_generation_result_metrics() -> None:
    items = (
        ItemResult("boolq", "true", "the correct answer is true", "true", "true"),
        ItemResult("boolq", "false", "the correct answer is True", "true", None),
        ItemResult("piqa", "solution1", "no idea", None, None),
        ItemResult("piqa", "solution2", "solution22", None, "solution2"),
    )
    result = GenerationResult(items=items, settings={"num_beams": 4})
    assert result.n == 4 and result.accuracy == 0.25 and result.no_answer_rate == 0.5
    assert result.accuracy_for("reference") == 0.5 and result.no_answer_rate_for("reference") == 0.5
    assert result.correct == [1, 0, 0, 0] and result.correct_for("reference") == [1, 0, 0, 1]
    assert result.per_task() == {
        "boolq": {
            "n": 2, "accuracy": 0.5, "no_answer_rate": 0.0,
            "accuracy_whole_word": 0.5, "no_answer_rate_whole_word": 0.0,
            "accuracy_reference": 0.5, "no_answer_rate_reference": 0.5,
        },
        "piqa": {
            "n": 2, "accuracy": 0.0, "no_answer_rate": 1.0,
            "accuracy_whole_word": 0.0, "no_answer_rate_whole_word": 1.0,
            "accuracy_reference": 0.5, "no_answer_rate_reference": 0.5,
        },
    }  # fmt: skip
    summary = result.summary()
    assert summary["protocol"] == "generation" and summary["settings"] == {"num_beams": 4}
    assert summary["extraction"] == "whole_word" and summary["accuracy_reference"] == 0.5
    as_reference = GenerationResult(items=items, extraction="reference")
    assert as_reference.accuracy == 0.5 and as_reference.per_task()["piqa"]["accuracy"] == 0.5
    empty = GenerationResult(items=())
    assert empty.n == 0 and empty.accuracy != empty.accuracy  # nan
    with pytest.raises(ValueError, match="unknown extraction rule"):
        GenerationResult(items=items, extraction="exact")  # type: ignore[arg-type]


def test_generation_argument_errors(tiny_lm) -> None:
    model, tokenizer, examples = tiny_lm
    with pytest.raises(ValueError, match="exclude"):
        evaluate_generation(model, tokenizer, examples[:1], greedy=True, do_sample=True)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_generation(model, tokenizer, examples[:1], batch_size=0)
    assert evaluate_generation(model, tokenizer, []).n == 0


# --------------------------------------------------------------------------------------------------
# Log-likelihood protocol: lm-eval


def test_lmeval_tasks_render_the_prompt_exactly(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    from experiments.commonsense_llm.lmeval import (
        DEFAULT_ANSWER_PREFIX,
        TAG,
        lmeval_task_name,
        write_task_configs,
    )

    paths = write_task_configs(tmp_path / "tasks", FIXTURES)
    assert sorted(p.name for p in paths.values()) == sorted(f"{lmeval_task_name(t)}.yaml" for t in TASKS)
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    loaded = manager.load([TAG])["tasks"]
    assert sorted(loaded) == sorted(lmeval_task_name(t) for t in TASKS)
    for task in TASKS:
        lm_task = loaded[lmeval_task_name(task)]
        docs = list(lm_task.test_docs())
        examples = load_examples(task, task_file(task, "test", FIXTURES))
        assert len(docs) == len(examples)
        for doc, ex in zip(docs, examples, strict=True):
            assert (
                lm_task.doc_to_text(doc)
                == build_prompt(ex.instruction, template="eval") + DEFAULT_ANSWER_PREFIX
            )
            assert lm_task.doc_to_choice(doc) == list(LABELS[task][: len(ex.choices)])
            assert lm_task.doc_to_target(doc) == ex.label
        assert lm_task.config.target_delimiter == " "


def test_lmeval_prompt_with_input_and_without_prefix(tmp_path: Path) -> None:
    from lm_eval.utils import apply_template

    from experiments.commonsense_llm.lmeval import task_config

    config = task_config("boolq", FIXTURES / "boolq" / "test.json", template="train", answer_prefix="")
    doc = {"instruction": "Q {{x}}", "input": "ctx", "answer": "true"}  # braces in data stay literal
    assert apply_template(config["doc_to_text"], doc) == build_prompt("Q {{x}}", "ctx", template="train")
    assert apply_template(config["doc_to_text"], {**doc, "input": ""}) == build_prompt(
        "Q {{x}}", template="train"
    )
    assert config["target_delimiter"] == ""
    with pytest.raises(ValueError, match="Jinja"):
        task_config("boolq", FIXTURES / "boolq" / "test.json", answer_prefix="{{ oops }}")


def _save_tiny(model: Any, tokenizer: Any, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_run_lmeval_base_model_path_and_object_agree(tiny_lm, tmp_path: Path) -> None:
    from experiments.commonsense_llm.lmeval import run_lmeval

    model, tokenizer, _ = tiny_lm
    base = _save_tiny(model, tokenizer, tmp_path / "base")
    tasks = ["boolq", "ARC-Easy"]
    by_path = run_lmeval(
        f"pretrained={base},dtype=float32", tasks, FIXTURES, limit=2, batch_size=4, device="cpu"
    )
    by_object = run_lmeval(model, tasks, FIXTURES, tokenizer=tokenizer, limit=2, batch_size=4)
    assert set(by_path) == set(tasks)
    for task in tasks:
        assert by_path[task]["protocol"] == "loglikelihood" and by_path[task]["n"] == 2
        for metric in ("acc", "acc_norm"):
            assert 0.0 <= by_path[task][metric] <= 1.0
            assert by_path[task][metric] == by_object[task][metric]
    assert tokenizer.pad_token is None  # HFLM got a copy


def test_run_lmeval_peft_and_loradash_adapters(tiny_lm, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    import loradash
    from experiments.commonsense_llm.lmeval import is_loradash_adapter, load_loradash_model, run_lmeval

    model, tokenizer, examples = tiny_lm
    base = _save_tiny(model, tokenizer, tmp_path / "base")
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    tasks = ["boolq", "piqa"]
    base_args = f"pretrained={base},dtype=float32"

    def fresh() -> Any:  # the saved base, as lm-eval loads it
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    # A stock peft LoRA adapter, through lm-eval's own peft= loading and as an object: same scores.
    lora = get_peft_model(fresh(), LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    assert not is_loradash_adapter(tmp_path / "lora")
    via_peft = run_lmeval(
        base_args, tasks, FIXTURES, peft=tmp_path / "lora", limit=3, batch_size=4, device="cpu"
    )
    as_object = PeftModel.from_pretrained(fresh(), tmp_path / "lora").eval()
    object_scores = run_lmeval(as_object, tasks, FIXTURES, tokenizer=tokenizer, limit=3, batch_size=4)
    assert {t: via_peft[t]["acc"] for t in tasks} == {t: object_scores[t]["acc"] for t in tasks}

    # A launched LoRA-Dash adapter: peft= routes through loradash.from_pretrained; merged gives the same scores.
    config = loradash.LoraDashConfig(
        r=4, lora_alpha=8, target_modules=targets, num_directions=2, prelaunch_steps=1
    )
    dash = loradash.get_loradash_model(fresh(), config)
    train_tiny(dash, tokenizer, examples[:4], steps=1)
    loradash.update_loradash(dash, 1)
    train_tiny(dash, tokenizer, examples[:4], steps=2)
    assert all(m.is_launched(a) for _, m, a in loradash.dash_layers(dash))
    dash.save_pretrained(tmp_path / "dash")
    assert is_loradash_adapter(tmp_path / "dash")
    via_dash = run_lmeval(
        base_args, tasks, FIXTURES, peft=tmp_path / "dash", limit=3, batch_size=4, device="cpu"
    )
    merged, merged_tok = load_loradash_model(base, tmp_path / "dash", merge=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    merged_scores = run_lmeval(merged, tasks, FIXTURES, tokenizer=merged_tok, limit=3, batch_size=4)
    for task in tasks:
        assert via_dash[task]["n"] == 3
        assert via_dash[task]["acc"] == merged_scores[task]["acc"]
        assert via_dash[task]["acc_norm"] == merged_scores[task]["acc_norm"]
