"""Build the LLM-Adapters commonsense files from the Hugging Face hub originals (needs the network and `datasets`).

The benchmark reads LLM-Adapters' JSON (README, "Data"); where that repository is not at hand, this script
rebuilds the eight tasks' train/test files from the hub datasets the items came from, in the same instruction
format (``render_instruction``), as ``<out>/<task>/<split>.json``:

    python scripts/prepare_commonsense.py --out ../shared/data/commonsense            # every task, both splits
    python scripts/prepare_commonsense.py --out DIR --tasks boolq piqa --splits test

``commonsense_170k.json`` (the paper's mixed training set) is not rebuilt: take it from LLM-Adapters.
Nothing in the harness imports this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.commonsense.data import LABELS, SPLITS, TASKS, render_instruction, write_items

__all__ = ["HUB_SOURCES", "HUB_SPLITS", "convert_hub_row", "load_hub_split", "main"]

_OUTPUT_PREFIX = "the correct answer is "  # LLM-Adapters' "output" field: this, then the answer


def _check_task(task: str) -> None:
    if task not in LABELS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


# task -> (hub dataset id, config).  WinoGrande: winogrande_xl is the 40,398-item training set that
# commonsense_170k uses; every size shares the same 1,267-item validation set.
HUB_SOURCES: dict[str, tuple[str, str | None]] = {
    "boolq": ("google/boolq", None),
    "piqa": ("ybisk/piqa", None),
    "social_i_qa": ("allenai/social_i_qa", None),
    "hellaswag": ("Rowan/hellaswag", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
    "ARC-Easy": ("allenai/ai2_arc", "ARC-Easy"),
    "ARC-Challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "openbookqa": ("allenai/openbookqa", "main"),
}

# LLM-Adapters split -> hub split.  Its "test" sets are the hub validation sets where the hub test
# labels are hidden (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande), and the labelled test sets otherwise.
HUB_SPLITS: dict[str, dict[str, str]] = {
    task: {
        "train": "train",
        "test": "test" if task in ("ARC-Easy", "ARC-Challenge", "openbookqa") else "validation",
    }
    for task in TASKS
}


def _as_item(task: str, instruction: str, label_index: int) -> dict[str, str]:
    answer = LABELS[task][label_index]
    return {"instruction": instruction, "input": "", "output": _OUTPUT_PREFIX + answer, "answer": answer}


def _label_index(value: Any, n_choices: int, *, one_based: bool, task: str) -> int:
    """Hub labels come as ints, digit strings (sometimes with a stray newline, e.g. old SIQA) or ""."""
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"{task}: hub row has no usable label ({value!r}); unlabelled test split?")
    index = int(text) - (1 if one_based else 0)
    if not 0 <= index < n_choices:
        raise ValueError(f"{task}: hub label {value!r} out of range for {n_choices} choices")
    return index


def _mc_choices(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """ARC/OBQA ``choices`` as (texts, labels): the hub's dict of lists, or the original list of dicts."""
    choices = row["choices"]
    if isinstance(choices, Mapping):
        return [str(t) for t in choices["text"]], [str(k).strip() for k in choices["label"]]
    return [str(c["text"]) for c in choices], [str(c["label"]).strip() for c in choices]


def _answer_key_index(key: Any, keys: Sequence[str], task: str) -> int:
    """ARC keys are letters ("A".."E") or, for some items, digits ("1".."5"); match either form."""
    text = str(key).strip()
    if text in keys:
        return list(keys).index(text)
    if len(text) == 1 and text.isalpha():
        index = ord(text.upper()) - ord("A")
    elif text.isdigit():
        index = int(text) - 1
    else:
        raise ValueError(f"{task}: unusable answerKey {key!r} for choice labels {list(keys)}")
    if not 0 <= index < len(keys):
        raise ValueError(f"{task}: answerKey {key!r} out of range for choice labels {list(keys)}")
    return index


def _convert_boolq(row: Mapping[str, Any]) -> dict[str, str]:
    question = str(row["question"])
    # Hub questions carry no question mark; every LLM-Adapters BoolQ item ends with one.
    if not question.endswith("?"):
        question += "?"
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip().lower() in ("true", "false"):
        answer = answer.strip().lower() == "true"
    if not isinstance(answer, bool):
        raise ValueError(f"boolq: hub answer must be a bool, got {answer!r}")
    return _as_item("boolq", render_instruction("boolq", question), 0 if answer else 1)


def _convert_piqa(row: Mapping[str, Any]) -> dict[str, str]:
    choices = [str(row["sol1"]), str(row["sol2"])]
    label = _label_index(row["label"], 2, one_based=False, task="piqa")
    return _as_item("piqa", render_instruction("piqa", str(row["goal"]), choices), label)


def _convert_siqa(row: Mapping[str, Any]) -> dict[str, str]:
    # LLM-Adapters joins SIQA's context and question with one space.
    question = f"{row['context']} {row['question']}"
    choices = [str(row["answerA"]), str(row["answerB"]), str(row["answerC"])]
    label = _label_index(row["label"], 3, one_based=True, task="social_i_qa")
    return _as_item("social_i_qa", render_instruction("social_i_qa", question, choices), label)


def _convert_hellaswag(row: Mapping[str, Any]) -> dict[str, str]:
    # "<activity_label>: <ctx>" with the raw ctx (= ctx_a + " " + ctx_b), no WikiHow clean-up.
    question = f"{row['activity_label']}: {row['ctx']}"
    endings = [str(e) for e in row["endings"]]
    label = _label_index(row["label"], len(endings), one_based=False, task="hellaswag")
    return _as_item("hellaswag", render_instruction("hellaswag", question, endings), label)


def _convert_winogrande(row: Mapping[str, Any]) -> dict[str, str]:
    choices = [str(row["option1"]), str(row["option2"])]
    label = _label_index(row["answer"], 2, one_based=True, task="winogrande")
    return _as_item("winogrande", render_instruction("winogrande", str(row["sentence"]), choices), label)


def _convert_multiple_choice(task: str, row: Mapping[str, Any]) -> dict[str, str]:
    # ARC has "question"; OpenBookQA has "question_stem".
    question = str(row["question_stem"] if "question_stem" in row else row["question"])
    texts, keys = _mc_choices(row)
    label = _answer_key_index(row["answerKey"], keys, task)
    return _as_item(task, render_instruction(task, question, texts), label)


def convert_hub_row(task: str, row: Mapping[str, Any]) -> dict[str, str]:
    """Turn one row of the task's hub dataset (``HUB_SOURCES``) into an LLM-Adapters item.

    Column names: BoolQ question/answer(bool); PIQA goal/sol1/sol2/label(0|1); SIQA context/question/
    answerA..C/label("1".."3"); HellaSwag activity_label/ctx/endings/label("0".."3"); WinoGrande
    sentence/option1/option2/answer("1"|"2"); ARC question, OBQA question_stem, both with
    choices{text,label} and answerKey (letter or digit).  Unlabelled rows (hub test splits) raise
    ``ValueError``.
    """
    _check_task(task)
    try:
        if task == "boolq":
            return _convert_boolq(row)
        if task == "piqa":
            return _convert_piqa(row)
        if task == "social_i_qa":
            return _convert_siqa(row)
        if task == "hellaswag":
            return _convert_hellaswag(row)
        if task == "winogrande":
            return _convert_winogrande(row)
        return _convert_multiple_choice(task, row)
    except KeyError as exc:
        raise ValueError(f"{task}: hub row lacks column {exc.args[0]!r} (has {sorted(row)})") from exc


def load_hub_split(task: str, split: str) -> list[dict[str, str]]:
    """Download ``task``'s hub original for an LLM-Adapters ``split`` and convert every row.

    Needs network access and the ``datasets`` package (imported here, so nothing else needs it).
    Several of these repositories (PIQA, SIQA, HellaSwag) are loading-script datasets that recent
    ``datasets`` releases refuse to run; for those we fall back to the hub's auto-converted Parquet
    branch, which holds the same rows.
    """
    _check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    from datasets import load_dataset  # lazy: heavy, and only hub users need it

    name, config = HUB_SOURCES[task]
    hub_split = HUB_SPLITS[task][split]
    try:
        rows = load_dataset(name, config, split=hub_split)
    except Exception as exc:  # the datasets library raises many exception types here
        if "script" not in str(exc).lower():
            raise
        rows = load_dataset(name, config, split=hub_split, revision="refs/convert/parquet")
    return [convert_hub_row(task, row) for row in rows]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write LLM-Adapters commonsense files (<out>/<task>/<split>.json) built from the hub originals."
    )
    parser.add_argument("--out", type=Path, required=True, help="the data folder (LORADASH_DATA_DIR)")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK", help="default: all eight"
    )
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="default: both")
    args = parser.parse_args(argv)
    for task in args.tasks:
        for split in args.splits:
            path = write_items(load_hub_split(task, split), args.out / task / f"{split}.json")
            print(f"{task} {split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
