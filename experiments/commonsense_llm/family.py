"""The commonsense family for causal LMs (the paper's Table 1 setup), for the same training loop.

Training: the Alpaca prompt + output of every commonsense_170k item (loss on the prompt too by default,
cutoff 256, EOS appended), 120 items held out with seed 42 for the validation loss (best checkpoint by it).
Test: the paper protocol (beam-4 generation, first label match; accuracy and no-answer rate) and, when asked,
the log-likelihood protocol through lm-eval. Each result says which protocol produced it.

Generation is scored as the reference scores it (DoRA's / Subspace-Tuning's ``commonsense_evaluate.py``):
the adapter merged into the base weights (fp16 at paper scale), batch 1. Every generation is read by both
answer-extraction rules (generation.EXTRACTION_RULES): `accuracy` (and `items.correct`) is the rule named by
`eval.extraction` (whole-word by default), and the record carries the other rule's numbers beside it
(`accuracy_reference`, `items.correct_reference`, ...); `test.extraction` says which is which. The paper's
numbers are under the reference rule (`paper_metric`: the tables print it beside them).

The tokenizer is AutoTokenizer's (the fast one) unless `model.slow_tokenizer` asks for the reference's slow
sentencepiece LlamaTokenizer (LLaMA-1/2; tokenizer.py); `identity.tokenizer` records the class that ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch.utils.data import DataLoader

from experiments.commonsense.data import Example
from experiments.commonsense.family import CommonsenseRun
from experiments.commonsense_llm.generation import (
    EXTRACTION_RULES,
    GenerationResult,
    evaluate_generation,
    pad_token_id,
)
from experiments.commonsense_llm.prompts import tokenize_for_training, validation_split
from experiments.commonsense_llm.tokenizer import load_tokenizer, tokenizer_identity
from experiments.harness.config import ExperimentConfig
from experiments.harness.registry import Metric, register_family, shuffled_loader

EXTRACTION_DESCRIPTIONS = {
    "whole_word": "first label of the task as a whole word, case-insensitive (data.extract_answer)",
    "reference": "the reference's re.findall(label alternatives)[0]: case-sensitive, unanchored, after the last "
    "'### Response:' (the rule behind the paper's numbers)",
}


@dataclass(frozen=True)
class CausalEval:
    """How the test sets are scored by a causal LM. The defaults are the reference's evaluation."""

    protocols: tuple[Literal["generation", "loglikelihood"], ...] = ("generation",)
    num_beams: int = 4
    max_new_tokens: int = 32
    greedy: bool = False
    batch_size: int = 1  # the reference's; > 1 batches with left padding and attention masks
    # With batch_size > 1: the first N items of each task are generated again at batch 1 (same weights, same
    # precision) and the shares of equal outputs and answers are recorded (`batch1_check`); 0 = no check.
    batch1_check_items: int = 200
    # Merge the adapter into the base weights (in their dtype) for scoring, as the reference does.
    merge_adapter: bool = True
    prompt_template: Literal["train", "eval"] = "eval"
    # The answer-extraction rule that `accuracy` reports; both rules are always scored and recorded.
    extraction: Literal["whole_word", "reference"] = "whole_word"
    loglikelihood_limit: int | None = None  # lm-eval items per task (None = all)
    loglikelihood_batch_size: int = 16  # lm-eval pads correctly: its scores do not depend on the batch size


def _as_item(e: Example) -> dict[str, str]:
    return {"instruction": e.instruction, "input": e.input, "output": e.output}


def _pad_collate(features: list[dict[str, list[int]]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad input_ids / attention_mask with pad_id / 0 and labels with -100 (ignored by the loss)."""
    n = max(len(f["input_ids"]) for f in features)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([f[key] + [value] * (n - len(f[key])) for f in features])

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }


@register_family
class CommonsenseCausalRun(CommonsenseRun):
    """Data, model, loss, validation and test scoring of one causal-LM run (the contract of CommonsenseRun;
    data loading and identity are shared with it, the validation split is the reference's)."""

    name = "commonsense_llm"
    description = "commonsense reasoning at full scale (the paper's Table 1): causal LMs, paper protocol"
    protocol_version = "commonsense-llm-generation-v3"  # v3: both extraction rules, merged batch-1 scoring
    eval_config = CausalEval
    metrics: ClassVar[Mapping[str, Metric]] = {
        "accuracy": Metric(
            "accuracy", True, "exact match of the first label generated (test.extraction.primary)"
        ),
        "accuracy_whole_word": Metric("accuracy_whole_word", True, EXTRACTION_DESCRIPTIONS["whole_word"]),
        "accuracy_reference": Metric("accuracy_reference", True, EXTRACTION_DESCRIPTIONS["reference"]),
        "no_answer_rate": Metric("no_answer_rate", False, "share of outputs naming no label (primary rule)"),
    }
    validation_metrics: ClassVar[Mapping[str, Metric]] = {"val_loss": Metric("val_loss", False)}
    paper_metric = "accuracy_reference"  # the paper's numbers are under the reference's extraction
    supports_slow_tokenizer = True

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> list[tuple[str, str]]:
        e = cfg.eval
        problems = super().check_config(cfg)
        for key in ("num_beams", "max_new_tokens", "batch_size", "loglikelihood_batch_size"):
            if getattr(e, key) < 1:
                problems.append((f"eval.{key}", f"must be >= 1, got {getattr(e, key)}"))
        if e.batch1_check_items < 0:
            problems.append(("eval.batch1_check_items", f"must be >= 0, got {e.batch1_check_items}"))
        if not e.protocols:
            problems.append(("eval.protocols", "must name at least one protocol"))
        if cfg.model.slow_tokenizer and "loglikelihood" in e.protocols:
            problems.append(
                (
                    "eval.protocols",
                    "lm-eval's loglikelihood protocol needs the fast tokenizer (model.slow_tokenizer)",
                )
            )
        return problems

    def __init__(self, cfg: ExperimentConfig, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        d = cfg.data
        self.pad_id = pad_token_id(self.tokenizer)
        tok = partial(
            tokenize_for_training,
            self.tokenizer,
            cutoff_len=d.cutoff_len,
            train_on_inputs=d.train_on_inputs,
            template=d.prompt_template,
        )
        self._train_features = [tok(_as_item(e)) for e in self.train]
        self._val_features = [tok(_as_item(e)) for e in self.val]

    @classmethod
    def scoring_rule(cls, record: Mapping[str, Any]) -> str | None:
        """The answer-extraction rule of the record's `accuracy` (test.extraction.primary), described."""
        extraction = record.get("test", {}).get("extraction")
        if not extraction:
            return None
        rule = extraction["primary"]
        return f"the {rule} rule: {extraction.get('rules', EXTRACTION_DESCRIPTIONS).get(rule, rule)}"

    def load_tokenizer(self) -> Any:
        # model.slow_tokenizer: the reference's slow sentencepiece LlamaTokenizer (LLaMA-1/2); else AutoTokenizer's
        path = self.cfg.model.tokenizer or self.model_path
        return load_tokenizer(path, slow=self.cfg.model.slow_tokenizer)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {
            "tokenizer": tokenizer_identity(self.tokenizer, slow=self.cfg.model.slow_tokenizer)
        }

    def split_validation(self, pool: list[Example]) -> tuple[list[Example], list[Example]]:
        # The reference's split (datasets train_test_split, shuffle, seed 42): the same 120 items as the paper.
        return validation_split(pool, n=self.cfg.data.val_examples, seed=self.cfg.data.split_seed)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        from experiments.harness.loading import load_pretrained

        return load_pretrained(
            AutoModelForCausalLM, self.model_path, dtype=getattr(torch, self.cfg.model.dtype)
        )

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        collate_fn = partial(_pad_collate, pad_id=self.pad_id)
        return shuffled_loader(self._train_features, micro_batch_size, seed, collate_fn, drop_last=False)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, device: Any) -> dict[str, float]:
        """Mean token loss over the held-out items (the reference's eval_loss, the checkpoint criterion)."""
        was_training = model.training
        model.eval()
        total, tokens = 0.0, 0
        bs = self.cfg.train.eval_batch_size
        for start in range(0, len(self._val_features), bs):
            batch = _pad_collate(self._val_features[start : start + bs], pad_id=self.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            tokens += n
        model.train(was_training)
        return {"val_loss": total / max(1, tokens)}

    def evaluate_test(self, model: torch.nn.Module, device: Any) -> dict[str, Any]:
        from accelerate.utils import extract_model_from_parallel
        from peft import PeftModel

        e = self.cfg.eval
        raw = extract_model_from_parallel(model)
        # The reference merges LoRA/DoRA into the fp16 weights before generating (module.train(False) with
        # merge_weights=True); a method without an adapter (full fine-tuning) has nothing to merge. Unmerged
        # after scoring, so nothing stays merged as a side effect.
        merged = e.merge_adapter and isinstance(raw, PeftModel)
        if merged:
            raw.merge_adapter()
        try:
            per_task: dict[str, Any] = {}
            protocols: dict[str, Any] = {}
            if "generation" in e.protocols:
                per_task, protocols["generation"] = self._generation(model)
                protocols["generation"] |= {"adapter_merged": merged, "weights_dtype": self.cfg.model.dtype}
            if "loglikelihood" in e.protocols:
                protocols["loglikelihood"] = self._loglikelihood(model)
        finally:
            if merged:
                raw.unmerge_adapter()
        out: dict[str, Any] = {
            "protocol": self._protocol_label() if per_task else "loglikelihood",
            "per_task": per_task,
            "missing_tasks": self.missing_tasks,
            "protocols": protocols,
        }
        if per_task:
            secondary = [r for r in EXTRACTION_RULES if r != e.extraction]
            out["extraction"] = {
                "primary": e.extraction,  # the rule of `accuracy`, `no_answer_rate` and `items.correct`
                "secondary": secondary,  # also recorded: accuracy_<rule>, items.correct_<rule>
                "rules": dict(EXTRACTION_DESCRIPTIONS),
            }
        return out

    def _protocol_label(self) -> str:
        e = self.cfg.eval
        decoding = "greedy" if e.greedy else f"{e.num_beams}-beam search"
        return f"generation (paper protocol: {decoding}, first label match, {e.extraction} extraction)"

    def _generation(self, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per task: accuracy and no-answer rate under the primary rule, the same under every rule (suffixed),
        per-item correctness under each rule, a sample of raw outputs, and the batch-1 check when batched."""
        e = self.cfg.eval
        generate = partial(
            evaluate_generation,
            model,
            self.tokenizer,
            num_beams=e.num_beams,
            max_new_tokens=e.max_new_tokens,
            greedy=e.greedy,
            template=e.prompt_template,
            extraction=e.extraction,
        )
        model.eval()
        per_task: dict[str, Any] = {}
        checks: list[dict[str, Any]] = []
        settings: dict[str, Any] = {}
        for task, items in self.test.items():
            res = generate(items, batch_size=e.batch_size)
            settings = res.settings
            row: dict[str, Any] = dict(res.per_task()[task])
            row["items"] = {
                "ids": self.test_ids[task],
                "correct": res.correct,
                **{f"correct_{r}": res.correct_for(r) for r in EXTRACTION_RULES if r != e.extraction},
            }
            row["outputs"] = res.outputs[:20]  # a sample of raw outputs, for format failures
            if e.batch_size > 1 and e.batch1_check_items:
                single = generate(items[: e.batch1_check_items], batch_size=1)
                row["batch1_check"] = _batch1_check(res, single)
                checks.append(row["batch1_check"])
            per_task[task] = row
        info: dict[str, Any] = {"settings": settings}
        if checks:
            n = sum(c["n"] for c in checks)
            info["batch1_check"] = {
                "n": n,
                "items_per_task": e.batch1_check_items,
                **{k: sum(c[k] * c["n"] for c in checks) / n for k in ("equal_outputs", "equal_answers")},
            }
        return per_task, info

    def _loglikelihood(self, model: torch.nn.Module) -> dict[str, Any]:
        from experiments.commonsense_llm.lmeval import run_lmeval

        return run_lmeval(
            model,
            tasks=list(self.test),
            data_dir=self.data_dir,
            tokenizer=self.tokenizer,
            limit=self.cfg.eval.loglikelihood_limit,
            batch_size=self.cfg.eval.loglikelihood_batch_size,
        )


def _batch1_check(batched: GenerationResult, single: GenerationResult) -> dict[str, Any]:
    """How many of the first `single.n` items got the same output (and the same answer under the primary rule)
    at batch 1 as in the batched run: equality holds exactly in fp32 on the CPU, not necessarily in fp16/bf16
    on a GPU, where the kernels chosen for a batch shape may round differently and flip a near-tie."""
    n = single.n
    same_out = sum(a == b for a, b in zip(batched.outputs[:n], single.outputs, strict=True))
    same_ans = sum(a == b for a, b in zip(batched.predictions[:n], single.predictions, strict=True))
    return {"n": n, "equal_outputs": same_out / n, "equal_answers": same_ans / n}
