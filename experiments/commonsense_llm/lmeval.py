"""The log-likelihood protocol: the 8 commonsense tasks scored by lm-evaluation-harness.

lm-eval ranks each choice by the model's log-likelihood of it after the prompt (``acc``; ``acc_norm``
divides by the choice's length in bytes) instead of generating text.  Its stock tasks use their own
prompts and data copies, so here every task is defined over the same local LLM-Adapters JSON the paper
protocol reads (``<data_dir>/<task>/test.json``):

- ``doc_to_text``: the Alpaca eval prompt around the item's instruction (prompts.build_prompt) followed by
  ``answer_prefix``, by default ``"the correct answer is"``, the words that open every training target;
- choices: the task's label strings as the instruction's ``Answer format:`` line lists them
  (BoolQ ``true``/``false``, ARC ``answer1``..``answer4``, ...), each continuation being " " + label;
- target: the index of ``answer`` among those labels.

The definitions are plain YAML with Jinja fields, written into a directory: ``lm_eval --include_path
<dir> --tasks llmadapters_commonsense`` runs them without this package.  Numbers from this protocol are
not comparable with the paper's (METHOD.md, section 3); every result carries ``protocol``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML ships no types

from experiments.commonsense.data import TASKS, default_data_dir, task_file
from experiments.commonsense_llm.prompts import PromptTemplate, build_prompt
from experiments.harness.errors import MissingFileError

__all__ = [
    "DEFAULT_ANSWER_PREFIX",
    "PROTOCOL",
    "TAG",
    "is_loradash_adapter",
    "lmeval_task_name",
    "load_loradash_model",
    "run_lmeval",
    "task_config",
    "write_task_configs",
]

PROTOCOL = "loglikelihood"
TAG = "llmadapters_commonsense"  # lm-eval tag that selects all 8 tasks
DEFAULT_ANSWER_PREFIX = "the correct answer is"  # every LLM-Adapters "output" starts with it

# Sentinels swapped for Jinja fields after build_prompt has laid out the exact whitespace.
_INSTRUCTION_SLOT = "\x00INSTRUCTION\x00"
_INPUT_SLOT = "\x00INPUT\x00"
# The label list of an item = its "Answer format: a/b/c" line; the last occurrence is the real one.
_CHOICES_JINJA = "{{ instruction.split('Answer format: ')[-1].split('/') }}"
_TARGET_JINJA = "{{ instruction.split('Answer format: ')[-1].split('/').index(answer) }}"
_METRICS = ("acc", "acc_norm")


def lmeval_task_name(task: str) -> str:
    """``ARC-Easy`` -> ``llmadapters_arc_easy`` (lm-eval names are lower-case identifiers)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return "llmadapters_" + task.lower().replace("-", "_")


def _doc_to_text(template: PromptTemplate, answer_prefix: str) -> str:
    """A Jinja template rendering ``build_prompt(instruction, input, template=...) + answer_prefix``."""

    def jinja(with_input: bool) -> str:
        text = build_prompt(_INSTRUCTION_SLOT, _INPUT_SLOT if with_input else "", template=template)
        text += answer_prefix
        if "{" in text.replace(_INSTRUCTION_SLOT, "").replace(_INPUT_SLOT, ""):
            raise ValueError(f"answer_prefix must not contain Jinja syntax: {answer_prefix!r}")
        return text.replace(_INSTRUCTION_SLOT, "{{instruction}}").replace(_INPUT_SLOT, "{{input}}")

    # build_prompt picks its variant with `if input:`; so does the template.
    return "{% if input %}" + jinja(True) + "{% else %}" + jinja(False) + "{% endif %}"


def task_config(
    task: str,
    data_file: str | os.PathLike[str],
    *,
    template: PromptTemplate = "eval",
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
) -> dict[str, Any]:
    """The lm-eval task definition (a YAML-ready dict) of ``task`` over one LLM-Adapters file."""
    name = lmeval_task_name(task)
    return {
        "task": name,
        "tag": [TAG],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": _doc_to_text(template, answer_prefix),
        "doc_to_choice": _CHOICES_JINJA,
        "doc_to_target": _TARGET_JINJA,
        # " " + label after "the correct answer is", as in the training targets; with no prefix the prompt
        # already ends in the template's indentation and the label follows it directly.
        "target_delimiter": " " if answer_prefix else "",
        "num_fewshot": 0,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in _METRICS],
        "metadata": {"version": 1.0, "source": "LLM-Adapters dataset/ layout", "template": template},
    }


def write_task_configs(
    directory: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] = TASKS,
    *,
    template: PromptTemplate = "eval",
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    split: str = "test",
) -> dict[str, Path]:
    """Write one ``<lm-eval name>.yaml`` per task into ``directory``; returns ``{task: path}``.

    Each data file must exist (``FileNotFoundError`` otherwise): a missing one would only fail deep
    inside lm-eval.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for task in tasks:
        data_file = task_file(task, split, data_dir)
        if not data_file.is_file():
            raise MissingFileError(f"no {task} {split} file at {data_file}")
        config = task_config(task, data_file, template=template, answer_prefix=answer_prefix)
        path = out / f"{config['task']}.yaml"
        # width=inf: never fold the long prompt strings (folding is lossless, but unreadable).
        path.write_text(
            yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=float("inf")), encoding="utf-8"
        )
        written[task] = path
    return written


# --------------------------------------------------------------------------------------------------
# Models


def is_loradash_adapter(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a LoRA-Dash adapter (its adapter_config.json says peft_type LORADASH)."""
    from loradash.config import LORADASH_PEFT_TYPE

    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("peft_type") == LORADASH_PEFT_TYPE


def load_loradash_model(
    base_model: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    *,
    merge: bool = False,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Base model + LoRA-Dash adapter through ``loradash.from_pretrained``; returns (model, tokenizer).

    Stock peft refuses LoRA-Dash folders (their peft_type is LORADASH), so lm-eval's ``peft=`` cannot load
    them.  ``merge=True`` folds W + (alpha/r) B A + U_s diag(lambda) V_s^T into the base weights and returns
    a plain transformers model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import loradash
    from experiments.harness.loading import load_pretrained

    if isinstance(dtype, str) and dtype != "auto":  # lm-eval's model_args spell it "float16", "bfloat16", ...
        dtype = getattr(torch, dtype)
    base = load_pretrained(AutoModelForCausalLM, os.fspath(base_model), dtype=dtype)
    model = loradash.from_pretrained(base, os.fspath(adapter))
    if merge:
        model = model.merge_and_unload()
    if device is not None:
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(base_model))
    return model.eval(), tokenizer


def _parse_model_args(model_args: str) -> dict[str, str]:
    """lm-eval's "key=value,key=value" string."""
    pairs = [part.split("=", 1) for part in model_args.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"model_args must be 'key=value,...', got {model_args!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def _build_lm(
    model_args: Any,
    *,
    model: str,
    peft: str | None,
    tokenizer: Any,
    batch_size: int | str,
    device: str | None,
) -> tuple[Any, str | None]:
    """Return (lm-eval LM or model name, model_args string) for simple_evaluate."""
    from lm_eval.models.huggingface import HFLM

    if isinstance(model_args, Mapping):  # lm-eval also takes {"pretrained": ..., ...}
        model_args = ",".join(f"{key}={value}" for key, value in model_args.items())
    if not isinstance(model_args, str):
        # A model object (e.g. a PeftModel from loradash.from_pretrained): HFLM wraps it as it is.
        if tokenizer is None:
            raise ValueError("pass tokenizer= together with a model object")
        # HFLM sets a pad token on the tokenizer it gets; keep the caller's untouched.
        lm = HFLM(pretrained=model_args, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        return lm, None
    if peft is not None and is_loradash_adapter(peft):
        args = _parse_model_args(model_args)
        if "pretrained" not in args:
            raise ValueError(
                f"model_args needs pretrained=<base model> to load a LoRA-Dash adapter: {model_args!r}"
            )
        obj, tok = load_loradash_model(args["pretrained"], peft, dtype=args.get("dtype"), device=device)
        return _build_lm(
            obj, model=model, peft=None, tokenizer=tokenizer or tok, batch_size=batch_size, device=None
        )
    if peft is not None:
        model_args = f"{model_args},peft={os.fspath(peft)}"  # stock peft adapters: lm-eval loads them itself
    return model, model_args


def run_lmeval(
    model_args: Any,
    tasks: Sequence[str] = TASKS,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    model: str = "hf",
    peft: str | os.PathLike[str] | None = None,
    tokenizer: Any = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    template: PromptTemplate = "eval",
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    task_dir: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score ``tasks`` by log-likelihood through ``lm_eval.simple_evaluate``; returns per-task metrics.

    ``model_args`` is lm-eval's model string (``"pretrained=<path>,dtype=float32"``) or dict, or a model
    object (a transformers model, a peft/LoRA-Dash ``PeftModel``, a merged model) with ``tokenizer=``.
    ``peft`` names an adapter folder: stock peft adapters go to lm-eval as ``peft=``; LoRA-Dash adapters
    are loaded through ``loradash.from_pretrained`` (see ``load_loradash_model``; only ``pretrained`` and
    ``dtype`` of ``model_args`` are read then).  ``limit`` caps the items per task (for smoke tests).
    The task YAMLs go to ``task_dir`` (default: a temporary folder).

    Returns ``{task: {"protocol", "lmeval_task", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}}``.
    """
    import tempfile

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    names = {task: lmeval_task_name(task) for task in tasks}
    lm, lm_args = _build_lm(
        model_args,
        model=model,
        peft=os.fspath(peft) if peft else None,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=device,
    )
    with tempfile.TemporaryDirectory(prefix="lmeval_tasks_") as scratch:
        include = Path(task_dir) if task_dir is not None else Path(scratch)
        write_task_configs(include, root, tasks, template=template, answer_prefix=answer_prefix)
        # include_defaults=False: indexing lm-eval's own ~10k task files takes seconds and is not needed.
        manager = TaskManager(include_path=str(include), include_defaults=False)
        output = simple_evaluate(
            model=lm,
            model_args=lm_args,
            tasks=list(names.values()),
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
    if output is None:  # simple_evaluate returns None on non-zero ranks of a distributed run
        return {}
    return {task: _metrics(output, name) for task, name in names.items()}


def _metrics(output: dict[str, Any], name: str) -> dict[str, Any]:
    scores = output["results"][name]
    n_samples = output.get("n-samples", {}).get(name, {})
    result: dict[str, Any] = {"protocol": PROTOCOL, "lmeval_task": name, "n": n_samples.get("effective")}
    for metric in _METRICS:
        result[metric] = scores.get(f"{metric},none")
        result[f"{metric}_stderr"] = scores.get(f"{metric}_stderr,none")
    return result
