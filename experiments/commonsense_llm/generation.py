"""The paper's evaluation protocol: generate an answer, take the first label it names, score exact match.

Mirrors LLM-Adapters / Subspace-Tuning ``commonsense_evaluate.py`` (``evaluate`` + ``extract_answer``):
4-beam search, 32 new tokens, the Alpaca eval prompt, accuracy = share of items whose extracted label
equals ``answer``.  Two things differ on purpose, neither changing what a batch-size-1 run computes:

- Batching.  The reference left-pads with ``pad_token_id = 0`` but passes no attention mask, so at
  batch size > 1 the pads are attended to and take position ids: answers change with the batch size,
  which is why its scripts run batch 1.  Here every prompt is left-padded and the attention mask goes
  to ``model.generate``, which derives the position ids from it; the answers equal those at batch 1
  (tests/test_commonsense_causal.py proves it on a tiny LLaMA, beam and greedy), so evaluation can
  run batched.  "Equal" is exact in fp32 on CPU; in fp16/bf16 on a GPU the kernels picked for a batch
  shape may round differently, which can flip a near-tie between beams: padding no longer can.
- Decoding.  The reference decodes prompt + continuation and keeps what follows ``"### Response:"``;
  we decode only the new tokens.

Every output is scored under both extraction rules (``EXTRACTION_RULES``), from the same generation:

- ``"reference"``: the reference's split (Subspace-Tuning's ``split("### Response:")[-1]``, the text
  after the last marker) and its case-sensitive, unanchored regex, first match.  The paper's numbers
  are under this rule: "True" is no answer, "untrue" counts as "true", "solution12" as "solution1".
- ``"whole_word"``: the first label that stands as a whole word, case-insensitive (the project's rule,
  for comparing methods fairly; ``data.extract_answer``).

``extraction`` names the rule that ``accuracy``, ``no_answer_rate`` and ``predictions`` report; the
other is always available through ``accuracy_for(rule)`` and friends.

The no-answer rate (share of outputs naming no label) is reported beside accuracy because the
below-chance scores in the literature are format failures, not wrong answers (METHOD.md, section 3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from transformers import GenerationConfig

from experiments.commonsense.data import Example, extract_answer
from experiments.commonsense_llm.prompts import PromptTemplate, build_prompt

__all__ = [
    "EXTRACTION_RULES",
    "PROTOCOL",
    "REFERENCE_SAMPLING",
    "ExtractionRule",
    "GenerationResult",
    "ItemResult",
    "evaluate_generation",
    "generation_config",
    "pad_token_id",
]

# The label written into every result of this protocol (the other one is lmeval.PROTOCOL).
PROTOCOL = "generation"

# commonsense_evaluate.py ``evaluate`` defaults.  The reference passes them but never samples
# (do_sample stays False), so they only matter with ``do_sample=True``.
REFERENCE_SAMPLING: dict[str, float | int] = {"temperature": 0.1, "top_p": 0.75, "top_k": 40}

# The reference cuts the decoded prompt + continuation at this marker (commonsense_evaluate.py).
_RESPONSE_MARKER = "### Response:"

# How a label is read out of a generated answer (see the module docstring and data.extract_answer).
ExtractionRule = Literal["whole_word", "reference"]
EXTRACTION_RULES: tuple[ExtractionRule, ...] = get_args(ExtractionRule)


def check_rule(rule: str) -> None:
    if rule not in EXTRACTION_RULES:
        raise ValueError(f"unknown extraction rule {rule!r}; known rules: {', '.join(EXTRACTION_RULES)}")


@dataclass(frozen=True)
class ItemResult:
    """One evaluated item: the gold label, the raw output (new tokens, stripped) and the label each
    extraction rule reads out of it (None = no answer)."""

    task: str
    answer: str
    output: str
    whole_word: str | None
    reference: str | None

    def prediction(self, rule: ExtractionRule = "whole_word") -> str | None:
        check_rule(rule)
        return self.reference if rule == "reference" else self.whole_word

    def correct(self, rule: ExtractionRule = "whole_word") -> bool:
        """Exact match of the extracted label; a no-answer counts as wrong (as in the reference)."""
        return self.prediction(rule) == self.answer


def _accuracy(items: Sequence[ItemResult], rule: ExtractionRule) -> float:
    return sum(item.correct(rule) for item in items) / len(items) if items else float("nan")


def _no_answer_rate(items: Sequence[ItemResult], rule: ExtractionRule) -> float:
    return sum(item.prediction(rule) is None for item in items) / len(items) if items else float("nan")


@dataclass(frozen=True)
class GenerationResult:
    """Per-item results in the order of the examples, plus the decoding settings that produced them.

    ``extraction`` is the rule that ``accuracy``, ``no_answer_rate``, ``predictions`` and ``correct``
    report; ``*_for(rule)`` give either rule from the same outputs."""

    items: tuple[ItemResult, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    extraction: ExtractionRule = "whole_word"

    def __post_init__(self) -> None:
        check_rule(self.extraction)

    @property
    def n(self) -> int:
        return len(self.items)

    def accuracy_for(self, rule: ExtractionRule) -> float:
        return _accuracy(self.items, rule)

    def no_answer_rate_for(self, rule: ExtractionRule) -> float:
        return _no_answer_rate(self.items, rule)

    def predictions_for(self, rule: ExtractionRule) -> list[str | None]:
        return [item.prediction(rule) for item in self.items]

    def correct_for(self, rule: ExtractionRule) -> list[int]:
        return [int(item.correct(rule)) for item in self.items]

    @property
    def accuracy(self) -> float:
        """Exact-match accuracy under ``extraction``; a no-answer counts as wrong (as in the reference)."""
        return self.accuracy_for(self.extraction)

    @property
    def no_answer_rate(self) -> float:
        """Share of outputs in which ``extraction`` found no label of the task."""
        return self.no_answer_rate_for(self.extraction)

    @property
    def predictions(self) -> list[str | None]:
        return self.predictions_for(self.extraction)

    @property
    def correct(self) -> list[int]:
        return self.correct_for(self.extraction)

    @property
    def outputs(self) -> list[str]:
        return [item.output for item in self.items]

    def per_task(self) -> dict[str, dict[str, float]]:
        """``{task: {"n", "accuracy", "no_answer_rate", "accuracy_<rule>", "no_answer_rate_<rule>"}}`` for a
        mixed evaluation: the unsuffixed numbers under ``extraction``, the suffixed ones under every rule."""
        groups: dict[str, list[ItemResult]] = defaultdict(list)
        for item in self.items:
            groups[item.task].append(item)
        out: dict[str, dict[str, float]] = {}
        for task, g in groups.items():
            row: dict[str, float] = {
                "n": len(g),
                "accuracy": _accuracy(g, self.extraction),
                "no_answer_rate": _no_answer_rate(g, self.extraction),
            }
            for rule in EXTRACTION_RULES:
                row[f"accuracy_{rule}"] = _accuracy(g, rule)
                row[f"no_answer_rate_{rule}"] = _no_answer_rate(g, rule)
            out[task] = row
        return out

    def summary(self) -> dict[str, Any]:
        """Everything a result file needs, labelled with the protocol."""
        return {
            "protocol": PROTOCOL,
            "extraction": self.extraction,
            "n": self.n,
            "accuracy": self.accuracy,
            "no_answer_rate": self.no_answer_rate,
            **{f"accuracy_{rule}": self.accuracy_for(rule) for rule in EXTRACTION_RULES},
            **{f"no_answer_rate_{rule}": self.no_answer_rate_for(rule) for rule in EXTRACTION_RULES},
            "per_task": self.per_task(),
            "settings": dict(self.settings),
        }


# --------------------------------------------------------------------------------------------------
# Tokens and the generation config


def pad_token_id(tokenizer: Any) -> int:
    """The id used to left-pad prompts, without touching the tokenizer.

    The tokenizer's own pad token when it has one; otherwise ``unk`` (the reference sets
    ``pad_token_id = 0``, which is ``<unk>`` for LLaMA-1/2, "different from the eos token"), otherwise
    ``eos`` (LLaMA-3 has neither pad nor unk; the reference's 0 is a real token there).  Because every
    pad position is masked out, the choice cannot change an answer; it only has to be a valid id.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has no pad, unk or eos token to pad with")


def _eos_token_id(model: Any, tokenizer: Any) -> int | list[int] | None:
    # The model's generation config knows model-specific stop ids (LLaMA-3 has several); the reference
    # (transformers 4.36) fell back to it too, since its GenerationConfig left eos unset.
    model_config = getattr(model, "generation_config", None)
    eos = getattr(model_config, "eos_token_id", None)
    return eos if eos is not None else tokenizer.eos_token_id


def generation_config(
    *,
    pad_id: int,
    eos_id: int | list[int] | None,
    num_beams: int = 4,
    max_new_tokens: int = 32,
    do_sample: bool = False,
) -> GenerationConfig:
    """The reference's decoding as a ``GenerationConfig``: beam search, no sampling, 32 new tokens."""
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")
    sampling = REFERENCE_SAMPLING if do_sample else {}
    return GenerationConfig(
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        **sampling,
    )


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a common length so every prompt ends where generation starts."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # [batch, width]
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # [batch, width]
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# Evaluation


def _generate_batch(
    model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], config: GenerationConfig
) -> list[str]:
    """Generate for one batch and decode only the new tokens of each row."""
    input_ids, attention_mask = _left_pad(prompt_ids, config.pad_token_id)
    device = _model_device(model)
    with torch.inference_mode():
        sequences = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
    new_tokens = sequences[:, input_ids.shape[1] :]  # [batch, <= max_new_tokens]; pads after EOS are special
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _score(example: Example, text: str) -> ItemResult:
    """Both rules on one generation.  The reference decodes prompt + continuation and keeps what follows
    the last "### Response:"; on the continuation alone that is the whole text unless the model wrote the
    marker itself, so only the reference rule applies the cut (the whole-word rule reads the whole output)."""
    output = text.strip()
    cut = text.split(_RESPONSE_MARKER)[-1].strip()
    return ItemResult(
        task=example.task,
        answer=example.answer,
        output=output,
        whole_word=extract_answer(example.task, output),
        reference=extract_answer(example.task, cut, reference=True),
    )


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    num_beams: int = 4,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    greedy: bool = False,
    template: PromptTemplate = "eval",
    extraction: ExtractionRule = "whole_word",
) -> GenerationResult:
    """Run the paper protocol on ``examples`` (any mix of tasks) and score every item.

    ``greedy=True`` replaces beam search by greedy decoding (``num_beams=1``).  ``do_sample=True``
    samples with the reference's declared temperature/top-p/top-k; sampled answers depend on the global
    torch RNG and on the batch composition, so they are not reproducible across batch sizes.
    ``template`` picks the prompt (default: the reference evaluator's, see prompts.py).
    Every output is scored under both extraction rules; ``extraction`` names the one that the result's
    ``accuracy`` / ``no_answer_rate`` / ``predictions`` report (see the module docstring).

    Prompts are tokenized as the reference does (with the tokenizer's special tokens, e.g. LLaMA's BOS)
    and processed longest first, which only changes how much padding each batch holds; the result lists
    items in the order of ``examples``.  The model is put in eval mode for the call and restored after.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_rule(extraction)
    if greedy and do_sample:
        raise ValueError("greedy=True and do_sample=True exclude each other")
    beams = 1 if greedy else num_beams
    pad_id = pad_token_id(tokenizer)
    config = generation_config(
        pad_id=pad_id,
        eos_id=_eos_token_id(model, tokenizer),
        num_beams=beams,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
    )
    prompts = [build_prompt(ex.instruction, ex.input, template=template) for ex in examples]
    prompt_ids = [list(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else []
    # Longest first: similar lengths share a batch (less padding), and an out-of-memory error shows early.
    order = sorted(range(len(examples)), key=lambda i: -len(prompt_ids[i]))

    texts: list[str] = [""] * len(examples)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            decoded = _generate_batch(model, tokenizer, [prompt_ids[i] for i in rows], config)
            for i, text in zip(rows, decoded, strict=True):
                texts[i] = text
    finally:
        model.train(was_training)

    items = tuple(_score(ex, text) for ex, text in zip(examples, texts, strict=True))
    settings = {
        "protocol": PROTOCOL,
        "template": template,
        "num_beams": beams,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "batch_size": batch_size,
        "padding_side": "left",
        "pad_token_id": pad_id,
        "extraction": extraction,
        "extraction_rules": list(EXTRACTION_RULES),
    }
    return GenerationResult(items=items, settings=settings, extraction=extraction)
