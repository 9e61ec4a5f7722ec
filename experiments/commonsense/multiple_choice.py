"""Commonsense reasoning scored as multiple choice by an encoder (the embedded CPU default).

Each question is paired with each of its choices, ``[CLS] question [SEP] choice [SEP]``, and
`AutoModelForMultipleChoice` scores the pairs; the prediction is the best-scoring choice. Questions with
fewer choices than the batch maximum are padded with empty choices whose logits are masked to -inf, so a
2-choice BoolQ question and a 5-choice ARC question share a batch without changing either's scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from experiments.commonsense.data import Example


def collate(tokenizer, examples: Sequence[Example], max_seq_len: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids: [B, C, L]; choice_mask: [B, C] (False = padding choice);
    labels: [B]. A plain dict of tensors, so accelerate can move and shard it."""
    n_choices = max(len(e.choices) for e in examples)
    firsts, seconds, mask = [], [], []
    for e in examples:
        for c in range(n_choices):
            firsts.append(e.question)
            seconds.append(e.choices[c] if c < len(e.choices) else "")
            mask.append(c < len(e.choices))
    enc = tokenizer(
        firsts, seconds, padding=True, truncation="longest_first", max_length=max_seq_len, return_tensors="pt"
    )
    shape = (len(examples), n_choices, -1)
    batch = {
        k: v.view(shape) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    batch["choice_mask"] = torch.tensor(mask).view(len(examples), n_choices)
    batch["labels"] = torch.tensor([e.label for e in examples])
    return batch


def choice_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, C] logits with padding choices at -inf."""
    inputs = {k: v for k, v in batch.items() if k not in ("choice_mask", "labels")}
    logits = model(**inputs).logits.float()
    return logits.masked_fill(~batch["choice_mask"], float("-inf"))


def loss_fn(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(choice_logits(model, batch), batch["labels"])


@torch.no_grad()
def predict(
    model, tokenizer, examples: Sequence[Example], *, batch_size: int, max_seq_len: int, device
) -> dict:
    """Predictions in the order of `examples`, and the mean loss."""
    was_training = model.training
    model.eval()
    order = sorted(
        range(len(examples)),
        key=lambda i: len(examples[i].question) + max(len(c) for c in examples[i].choices),
    )
    preds = [0] * len(examples)
    total_loss = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {
            k: v.to(device) for k, v in collate(tokenizer, [examples[i] for i in idx], max_seq_len).items()
        }
        logits = choice_logits(model, batch)
        total_loss += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        for i, p in zip(idx, logits.argmax(dim=-1).tolist(), strict=True):
            preds[i] = p
    model.train(was_training)
    return {"predictions": preds, "loss": total_loss / max(1, len(examples))}
