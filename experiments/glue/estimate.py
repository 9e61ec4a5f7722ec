"""Rough GPU memory and GPU-hours of a full-scale GLUE run (`list --family glue --profile paper --estimate`).

The model is built on the meta device from its architecture (no weights, no download), so parameter and
adapter counts are exact; memory and time are estimates from the stated assumptions, printed with the plan.
"""

from __future__ import annotations

from typing import Any

import torch

from baselines import build_method
from baselines.budget import base_param_count, target_layer_shapes
from experiments.glue.data import spec
from experiments.harness.config import ExperimentConfig
from experiments.harness.schedule import total_steps

# config.json values of the paper's encoders, so the plan needs no hub access
KNOWN_ARCHS: dict[str, dict[str, Any]] = {
    "microsoft/deberta-v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                      intermediate_size=3072, vocab_size=128100, max_position_embeddings=512,
                                      relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                                      share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                                      position_biased_input=False, type_vocab_size=0, pooler_hidden_size=768),
    "microsoft/deberta-v3-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096, vocab_size=128100, max_position_embeddings=512,
                                       relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                                       share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                                       position_biased_input=False, type_vocab_size=0, pooler_hidden_size=1024),
}  # fmt: skip
TRAIN_SIZES = {"mnli": 392_702, "sst2": 67_349, "cola": 8_551, "qqp": 363_846, "qnli": 104_743, "rte": 2_490,
               "mrpc": 3_668, "stsb": 5_749, "wnli": 635}  # fmt: skip
DEV_SIZES = {"mnli": 9_815, "sst2": 872, "cola": 1_043, "qqp": 40_430, "qnli": 5_463, "rte": 277, "mrpc": 408,
             "stsb": 1_500, "wnli": 71}  # fmt: skip
ASSUMPTIONS = {
    "padded_fraction_of_max_len": 0.5,  # dynamic padding: batches average about half the maximum length
    "sustained_tflops": 150.0,  # bf16 on one H100 for a base-size encoder (small matrices, lower utilisation)
    "bytes_per_trainable": 16,  # fp32 weight + grad + two Adam moments
}


def meta_model(name: str, num_labels: int) -> torch.nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    if name not in KNOWN_ARCHS:
        raise ValueError(f"no architecture on record for {name!r} (known: {', '.join(KNOWN_ARCHS)})")
    with torch.device("meta"):
        return DebertaV2ForSequenceClassification(DebertaV2Config(**KNOWN_ARCHS[name], num_labels=num_labels))  # type: ignore[call-arg]  # a PretrainedConfig kwarg


def estimate_run(cfg: ExperimentConfig) -> dict[str, Any] | None:
    if cfg.model.name not in KNOWN_ARCHS:
        return None  # a CPU-sized or local model: no GPU estimate
    a, t, d = ASSUMPTIONS, cfg.train, cfg.data
    arch = KNOWN_ARCHS[cfg.model.name]
    model = meta_model(cfg.model.name, spec(d.task).num_labels)
    total = base_param_count(model, list(cfg.model.modules_to_save))
    method = build_method(cfg.method.name, **cfg.method.params)
    shapes = target_layer_shapes(model, list(cfg.model.target_modules))
    trainable = type(method).analytic_trainable(shapes, method.rank, total, **method.params)
    n_train = TRAIN_SIZES[d.task] - d.val_examples
    steps = total_steps(cfg, n_train)
    seq = d.max_seq_len * a["padded_fraction_of_max_len"]
    tokens = steps * t.batch_size * seq
    flops_per_token = (6 if type(method).trains_base_weights else 4) * total
    evals = steps // t.eval_every + 1
    eval_tokens = evals * d.val_examples * seq + DEV_SIZES[d.task] * seq
    hours = (tokens * flops_per_token + eval_tokens * 2 * total) / (a["sustained_tflops"] * 1e12) / 3600
    h, layers = arch["hidden_size"], arch["num_hidden_layers"]
    micro = t.batch_size // t.grad_accum
    # activations per layer (Korthikanti et al., 2022, 2-byte activations) x layers, plus fp32 weights
    acts = d.max_seq_len * micro * h * (34 + 5 * arch["num_attention_heads"] * d.max_seq_len / h) * layers
    memory_gb = (total * 4 + trainable * a["bytes_per_trainable"] + acts) / 1e9
    return {
        "total_params": total,
        "trainable": trainable,
        "steps": steps,
        "memory_gb": memory_gb,
        "fits_80gb": memory_gb < 80,
        "gpu_hours": hours,
        "layout": f"{micro} x {t.grad_accum}",
        "eval_every": t.eval_every,
        "assumptions": f"one H100, {ASSUMPTIONS}",
    }
