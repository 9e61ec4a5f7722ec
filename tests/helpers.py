"""Helpers the tests (and bench/) share: tiny models built from configs, tiny tokenizers, simulated benchmarks.
Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.commonsense import TASKS, Example, load_examples, task_file
from experiments.commonsense_llm.prompts import IGNORE_INDEX, build_prompt, tokenize_for_training
from experiments.harness.profiles import load_profile
from experiments.harness.registry import get_family
from loradash import LoraDashConfig

FIXTURES = Path(__file__).parent / "fixtures" / "commonsense"


def tiny_bert(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


# --------------------------------------------------------------------------------------------------
# Tiny causal LM and tokenizer (tests and bench/bench_generation.py)


def fixture_examples() -> list[Example]:
    """The 24 fixture test items, 3 per task, in TASKS order."""
    return [ex for task in TASKS for ex in load_examples(task, task_file(task, "test", FIXTURES))]


def build_tokenizer(texts: Sequence[str], vocab_size: int = 700) -> Any:
    """A byte-level BPE trained on ``texts``, wrapped as a LLaMA-like fast tokenizer without a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # LLaMA prepends BOS to every encoded text.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])


def train_tiny(
    model: Any, tokenizer: Any, examples: Sequence[Example], steps: int = 30, lr: float = 1e-2
) -> Any:
    """Full-batch AdamW on the answers only, so the tiny model learns to say "the correct answer is X"."""
    rows = [
        tokenize_for_training(
            tokenizer, {"instruction": e.instruction, "output": e.output}, train_on_inputs=False
        )
        for e in examples
    ]
    input_ids = _pad_right([r["input_ids"] for r in rows], 0)
    attention_mask = _pad_right([r["attention_mask"] for r in rows], 0)
    labels = _pad_right([r["labels"] for r in rows], IGNORE_INDEX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def tiny_causal_lm(train_steps: int = 30, seed: int = 0) -> tuple[Any, Any, list[Example]]:
    """(model, tokenizer, examples): a 2-layer LLaMA trained briefly on the fixture items."""
    examples = fixture_examples()
    texts = [
        build_prompt(e.instruction, e.input, e.output, template=t)
        for e in examples
        for t in ("train", "eval")
    ]
    tokenizer = build_tokenizer(texts)
    model = build_tiny_llama(len(tokenizer), seed=seed)
    if train_steps:
        train_tiny(model, tokenizer, examples, steps=train_steps)
    return model, tokenizer, examples


class ScriptedModel(torch.nn.Module):
    """A stand-in for a causal LM whose generate() appends fixed text per prompt; checks the padding."""

    def __init__(self, tokenizer: Any, replies: dict[str, str]) -> None:
        super().__init__()
        self.tokenizer, self.replies = tokenizer, replies
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("GC", (), {"eos_token_id": tokenizer.eos_token_id})()
        self.batch_sizes: list[int] = []

    def generate(
        self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: Any
    ) -> Any:
        self.batch_sizes.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            n_pad = int((mask == 0).sum())
            assert mask[n_pad:].all() and not mask[:n_pad].any()  # pads on the left only
            assert (ids[:n_pad] == generation_config.pad_token_id).all()
            prompt = self.tokenizer.decode(ids[n_pad:], skip_special_tokens=True)
            reply = next(r for key, r in self.replies.items() if key in prompt)
            new = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            rows.append(ids.tolist() + new)
        width = max(map(len, rows))  # finished rows are padded after EOS, as generate() does
        return torch.tensor([r + [generation_config.pad_token_id] * (width - len(r)) for r in rows])


# --------------------------------------------------------------------------------------------------
# LoRA-Dash layer helpers

BERT_TARGETS = ["query", "key", "value", "dense"]


def dash_config(**kw):
    base = dict(r=4, lora_alpha=8, target_modules=BERT_TARGETS, num_directions=3, prelaunch_steps=2)
    base.update(kw)
    return LoraDashConfig(**base)


def train_steps(model, batch, steps, *, micro_batches=1, lr=1e-2, on_step=None):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(1, steps + 1):
        for _ in range(micro_batches):
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        if on_step:
            on_step(step)
    return opt


# --------------------------------------------------------------------------------------------------
# Simulated benchmarks (statistics tests)


def mean_correct(task, items, idx):
    return np.asarray(items["correct"], float)[idx].mean(axis=1)


def simulate_tables(rng, *, effects, n_items=200, k=5, n_tasks=2, sd_seed=0.015, sd_item=0.05):
    """Correctness of several experiments on the same items: p = base_i + effect + v_{m,i} + u_{m,s}, where
    base_i is the item's difficulty (shared), v an item x method effect (the test set is a sample, so the
    difference on it is noisy) and u a seed effect. The true difference of two experiments is the difference
    of their `effects` (v and u have mean 0 in the population)."""
    tables = {name: {} for name in effects}
    for t in range(n_tasks):
        base = rng.uniform(0.3, 0.7, n_items)
        v = {name: rng.normal(0, sd_item, n_items) for name in effects}
        for s in range(k):
            for name, effect in effects.items():
                p = np.clip(base + effect + v[name] + rng.normal(0, sd_seed), 0, 1)
                y = (rng.random(n_items) < p).astype(int)
                tables[name].setdefault(f"t{t}", {})[s] = {"ids": np.arange(n_items), "correct": y}
    return tables


# --- a stand-in for the training (sweeps, plans and tables tested in no time) ------------------------------------

N_ITEMS = 40


def fake_items(family: str, task: str, quality: float, seed: int) -> dict:
    """Per-item arrays in the family's own format (the first of the known layouts its `task_score` reads),
    with about `quality` of the items right."""
    rng = np.random.default_rng(seed)
    right = rng.random(N_ITEMS) < quality
    ids = list(range(N_ITEMS))
    fam = get_family(family)
    if task == "stsb":
        labels = np.linspace(0, 5, N_ITEMS).round(2).tolist()
        preds = [y if r else 5 - y for y, r in zip(labels, right, strict=True)]
    else:
        labels = (np.arange(N_ITEMS) % 2).tolist()
        preds = [y if r else 1 - y for y, r in zip(labels, right, strict=True)]
    layouts = [
        {"ids": ids, "correct": right.astype(int).tolist()},
        {"ids": ids, "labels": labels, "predictions": preds},
        {"ids": ids, fam.primary_metric: np.where(right, 0.9, 0.1).tolist()},
        # a distance to a target and the baseline's distance (a ratio of sums, as planted's `matched`)
        {"ids": ids, "distance": np.where(right, 0.1, 0.9).tolist(), "base_distance": [1.0] * N_ITEMS},
    ]
    for items in layouts:
        try:
            fam.task_score(task, {k: np.asarray(v) for k, v in items.items()})
        except KeyError:
            continue
        return items
    raise AssertionError(f"no known item layout for {family}")


def fake_result(cfg, seed, *, test_best_lr=1e-4, val_best_lr=1e-3):
    """Validation prefers `val_best_lr`, the test set `test_best_lr`: a harness that picked on test would fail."""
    fam = get_family(cfg.family)
    val = 0.5 + 0.01 * seed + (0.05 if cfg.train.lr == val_best_lr else 0.0)
    quality = 0.6 + (0.3 if cfg.train.lr == test_best_lr else 0.0)
    tasks = [cfg.task] if cfg.task else [t for t in cfg.data.eval_tasks if t in ("boolq", "ARC-Easy")]
    per_task = {}
    for task in tasks:
        items = fake_items(cfg.family, task, quality, seed)
        arrays = {k: np.asarray(v) for k, v in items.items()}
        per_task[task] = {fam.primary_metric: fam.task_score(task, arrays), "n": N_ITEMS, "items": items}
    score = float(np.mean([r[fam.primary_metric] for r in per_task.values()]))
    metric = cfg.train.selection_metric
    v = val if fam.higher_is_better(metric) else 1 - val
    return {
        "param_counts": {"trainable": 10, "head": 1, "stored": 10, "total_model": 100},
        "test": {
            "protocol": "fake",
            "per_task": per_task,
            "missing_tasks": [],
            "score": score,
            "primary_metric": fam.primary_metric,
        },
        "validation_curve": [{"step": 1, metric: v}],
        "best_step": 1,
        "selection_metric": metric,
        "diagnostics": {},
    }


def fake_train(cfg, *, seed, profile, progress=True):
    return fake_result(cfg, seed)


def n_planned(family: str) -> int:
    p = load_profile(family, "smoke")
    return len(p.experiments) * len(p.task_list) * len(p.tune_seeds)


def tiny_config(experiment: str, model_dir, **eval_overrides):
    """A commonsense_llm experiment at the `tiny` profile, on the tiny LLaMA saved in `model_dir`."""
    from experiments.harness.config import with_overrides
    from experiments.harness.profiles import experiment_config

    cfg = experiment_config(load_profile("commonsense_llm", "tiny"), experiment)
    return with_overrides(cfg, model={"name": str(model_dir)}, eval=eval_overrides)
