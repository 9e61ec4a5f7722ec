"""The commonsense family for causal LMs (the paper's Table 1 setup), for the same training loop.

Training: the Alpaca prompt + output of every commonsense_170k item (loss on the prompt too by default,
cutoff 256, EOS appended), 120 items held out with seed 42 for the validation loss (best checkpoint by it).
Test: the paper protocol (beam-4 generation, first label match; accuracy and no-answer rate) and, when asked,
the log-likelihood protocol through lm-eval. Each result says which protocol produced it.
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
from experiments.commonsense_llm.generation import evaluate_generation, pad_token_id
from experiments.commonsense_llm.prompts import tokenize_for_training, validation_split
from experiments.config import ExperimentConfig
from experiments.registry import Metric, register_family


@dataclass(frozen=True)
class CausalEval:
    """How the test sets are scored by a causal LM."""

    protocols: tuple[Literal["generation", "loglikelihood"], ...] = ("generation",)
    num_beams: int = 4
    max_new_tokens: int = 32
    greedy: bool = False
    batch_size: int = 16
    prompt_template: Literal["train", "eval"] = "eval"
    reference_extraction: bool = False  # True: the reference's case-sensitive substring matching
    loglikelihood_limit: int | None = None  # lm-eval items per task (None = all)


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
    protocol_version = "commonsense-llm-generation-v2"
    eval_config = CausalEval
    validation_metrics: ClassVar[Mapping[str, Metric]] = {"val_loss": Metric("val_loss", False)}

    @classmethod
    def estimate(cls, cfg: ExperimentConfig) -> dict[str, Any] | None:
        from experiments.commonsense_llm.estimate import estimate_run

        return estimate_run(cfg)

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
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

    def split_validation(self, pool: list[Example]) -> tuple[list[Example], list[Example]]:
        # The reference's split (datasets train_test_split, shuffle, seed 42): the same 120 items as the paper.
        return validation_split(pool, n=self.cfg.data.val_examples, seed=self.cfg.data.split_seed)

    def build_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=getattr(torch, self.cfg.model.dtype)
        )

    def train_loader(self, seed: int, micro_batch_size: int) -> DataLoader:
        return DataLoader(
            self._train_features,  # type: ignore[arg-type]
            batch_size=micro_batch_size,
            shuffle=True,
            drop_last=False,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=partial(_pad_collate, pad_id=self.pad_id),
        )

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
        e = self.cfg.eval
        protocols: dict[str, Any] = {}
        per_task: dict[str, Any] = {}
        if "generation" in e.protocols:
            model.eval()
            for task, items in self.test.items():
                res = evaluate_generation(
                    model,
                    self.tokenizer,
                    items,
                    batch_size=e.batch_size,
                    num_beams=e.num_beams,
                    max_new_tokens=e.max_new_tokens,
                    greedy=e.greedy,
                    template=e.prompt_template,
                    reference_extraction=e.reference_extraction,
                )
                per_task[task] = {
                    "accuracy": res.accuracy,
                    "no_answer_rate": res.no_answer_rate,
                    "n": res.n,
                    "items": {"ids": self.test_ids[task], "correct": [int(i.correct) for i in res.items]},
                    "outputs": res.outputs[:20],  # a sample of raw outputs, for format failures
                }
            protocols["generation"] = {"settings": res.settings} if self.test else {}
        if "loglikelihood" in e.protocols:
            protocols["loglikelihood"] = self._loglikelihood(model)
        return {
            "protocol": "generation (paper: beam search, first label match)" if per_task else "loglikelihood",
            "per_task": per_task,
            "missing_tasks": self.missing_tasks,
            "protocols": protocols,
        }

    def _loglikelihood(self, model: torch.nn.Module) -> dict[str, Any]:
        from experiments.commonsense_llm.lmeval import run_lmeval

        return run_lmeval(
            model,
            tasks=list(self.test),
            data_dir=self.data_dir,
            tokenizer=self.tokenizer,
            limit=self.cfg.eval.loglikelihood_limit,
            batch_size=self.cfg.eval.batch_size,
        )
