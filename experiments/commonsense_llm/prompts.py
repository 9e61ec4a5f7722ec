"""The Alpaca prompt of the commonsense protocol, its training tokenization and the validation split.

The reference is Subspace-Tuning ``CR_MR/finetune.py`` / ``commonsense_evaluate.py``, which produced the
paper's Table 1.  They are NVlabs/DoRA's ``commonsense_reasoning/`` versions, byte for byte apart from the
licence header, not LLM-Adapters' originals: DoRA's add a DoRA config, a ``weight_decay`` argument, a
tokenizer branch for LLaMA-3 (``AutoTokenizer`` when the model name holds "Llama-3", the slow
``LlamaTokenizer`` otherwise), the merge of the LoRA/DoRA weights into the fp16 base before evaluation, and
``split("### Response:")[-1]`` (LLM-Adapters: ``[1]``) to cut the decoded answer.  The prompt builders are
LLM-Adapters' unchanged.

The reference builds the prompt with two different ``generate_prompt`` functions.  Both are f-strings
written inside indented code, so every line after the header carries the 16 spaces of source indentation.  Without an ``input`` (the case of every
commonsense item) they differ in exactly two places:

=========================================  ============================  =============================
                                           ``"train"`` (finetune.py)      ``"eval"`` (commonsense_evaluate.py)
=========================================  ============================  =============================
spaces after "...completes the request."   two                           one
line between instruction and "### Response" 16 spaces                     empty
=========================================  ============================  =============================

With an ``input`` the header ends in one space (train) or none (eval), and both blank lines (after the
instruction, after the input) hold 16 spaces (train) or nothing (eval).  Everything else is shared: an
empty line after the header, "### Instruction:" / "### Input:" / "### Response:" each on its own line
indented by 16 spaces, the instruction and the answer on the next line after 16 spaces.  The eval prompt
ends with those 16 spaces, the generation starts right after them; the train prompt puts the output
there.  A model trained by the reference therefore sees a (slightly) different prompt at test time;
``PromptTemplate`` names the two so a run can choose and record which one it used.

(LLM-Adapters commits before b6f55cd, 2023-04-07, had ``  # noqa: E501`` inside the training header;
the paper's code and every later revision have the strings reproduced here.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args

__all__ = [
    "INDENT",
    "PromptTemplate",
    "build_prompt",
    "tokenize_for_training",
    "validation_split",
]

# "train": finetune.py's generate_prompt; "eval": commonsense_evaluate.py's generate_prompt.
PromptTemplate = Literal["train", "eval"]
PROMPT_TEMPLATES: tuple[str, ...] = get_args(PromptTemplate)

# The source indentation that ends up inside the reference's f-strings (16 spaces).
INDENT = " " * 16

_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_HEAD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# Trailing spaces after the header, keyed by (template, has_input): read off the reference with cat -A.
_HEAD_TRAILING: dict[tuple[str, bool], str] = {
    ("train", False): "  ",
    ("train", True): " ",
    ("eval", False): " ",
    ("eval", True): "",
}

# The "blank" line between sections: finetune.py's holds the 16 indentation spaces, the evaluator's is empty.
_BLANK_LINE: dict[str, str] = {"train": INDENT, "eval": ""}

# Label value that the loss ignores (torch.nn.CrossEntropyLoss ignore_index; the reference's -100).
IGNORE_INDEX = -100


def _check_template(template: str) -> None:
    if template not in PROMPT_TEMPLATES:
        raise ValueError(
            f"unknown prompt template {template!r}; known templates: {', '.join(PROMPT_TEMPLATES)}"
        )


def build_prompt(
    instruction: str, input: str = "", output: str | None = None, *, template: PromptTemplate = "train"
) -> str:
    """The reference's Alpaca prompt, byte for byte, followed by ``output`` (``None`` = ``""``).

    ``template="train"`` is finetune.py's ``generate_prompt(data_point)``; ``template="eval"`` is
    commonsense_evaluate.py's ``generate_prompt(instruction, input)``, which has no output slot (we append
    ``output`` after it all the same).  An empty ``input`` selects the no-input variant, as the reference's
    ``if input:`` does.  See the module docstring for the exact differences.
    """
    _check_template(template)
    has_input = bool(input)
    head = (_HEAD_WITH_INPUT if has_input else _HEAD_NO_INPUT) + _HEAD_TRAILING[template, has_input]
    blank = _BLANK_LINE[template]
    lines = [head, "", f"{INDENT}### Instruction:", f"{INDENT}{instruction}", blank]
    if has_input:
        lines += [f"{INDENT}### Input:", f"{INDENT}{input}", blank]
    lines += [f"{INDENT}### Response:", f"{INDENT}{output or ''}"]
    return "\n".join(lines)


def _tokenize(tokenizer: Any, text: str, *, cutoff_len: int, add_eos: bool) -> dict[str, list[int]]:
    """finetune.py ``tokenize``: truncate to ``cutoff_len``; append EOS unless truncated or already there."""
    result = tokenizer(text, truncation=True, max_length=cutoff_len, padding=False, return_tensors=None)
    input_ids = list(result["input_ids"])
    attention_mask = list(result["attention_mask"])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; the protocol appends EOS to every example")
    # Only a sequence shorter than the cutoff gets EOS, so a truncated example never learns to stop there.
    if add_eos and (not input_ids or input_ids[-1] != eos) and len(input_ids) < cutoff_len:
        input_ids.append(eos)
        attention_mask.append(1)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tokenize_for_training(
    tokenizer: Any,
    example: Mapping[str, Any],
    *,
    cutoff_len: int = 256,
    train_on_inputs: bool = True,
    add_eos: bool = True,
    template: PromptTemplate = "train",
) -> dict[str, list[int]]:
    """finetune.py ``generate_and_tokenize_prompt`` on one ``{"instruction", "input", "output"}`` item.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (plain lists, unpadded).  Labels copy the
    input ids (loss on the prompt too: the paper's ``train_on_inputs=True``).  With
    ``train_on_inputs=False`` the first ``len(tokenize(prompt without output))`` labels become -100, as in
    the reference; that length is measured on the prompt tokenized alone (no EOS), so where the tokenizer
    merges across the prompt/output boundary the mask may be off by a token, exactly as in the reference.
    """
    if cutoff_len < 1:
        raise ValueError(f"cutoff_len must be >= 1, got {cutoff_len}")
    instruction, input_text = str(example["instruction"]), str(example.get("input") or "")
    full = build_prompt(instruction, input_text, str(example.get("output") or ""), template=template)
    tokens = _tokenize(tokenizer, full, cutoff_len=cutoff_len, add_eos=add_eos)
    labels = list(tokens["input_ids"])
    if not train_on_inputs:
        user = build_prompt(instruction, input_text, "", template=template)
        n_prompt = len(_tokenize(tokenizer, user, cutoff_len=cutoff_len, add_eos=False)["input_ids"])
        labels = [IGNORE_INDEX] * n_prompt + labels[n_prompt:]
        labels = labels[: len(tokens["input_ids"])]  # a fully truncated output leaves no target at all
    return {**tokens, "labels": labels}


_Item = TypeVar("_Item")


def validation_split(items: Sequence[_Item], n: int = 120, seed: int = 42) -> tuple[list[_Item], list[_Item]]:
    """Split ``items`` into (train, validation) exactly as finetune.py's ``val_set_size`` split.

    The reference calls ``data["train"].train_test_split(test_size=val_set_size, shuffle=True, seed=42)``
    on ``load_dataset("json", data_files=...)``; the permutation depends only on the number of rows and
    the seed, so ``Dataset.from_list`` over the same items (same order) holds out the same ``n`` items.
    Both parts keep the permuted order that ``datasets`` gives them (the reference then reshuffles them
    without a seed, so only the membership is reproducible).  The items come back as the objects passed
    in, never as re-serialised copies.
    """
    if not 0 < n < len(items):
        raise ValueError(f"validation size must be in 1..{len(items) - 1} for {len(items)} items, got {n}")
    from datasets import Dataset  # lazy: heavy, and only training needs it

    index = Dataset.from_list([{"row": i} for i in range(len(items))])
    split = index.train_test_split(test_size=n, shuffle=True, seed=seed)
    train = [items[i] for i in split["train"]["row"]]
    validation = [items[i] for i in split["test"]["row"]]
    return train, validation
