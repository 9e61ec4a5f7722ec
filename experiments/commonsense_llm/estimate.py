"""Rough GPU memory and GPU-hours of a full-scale run, for the dry run (`list --estimate`).

The model is built on the meta device from its architecture (no weights, no download), so parameter and
adapter counts are exact; memory and time are estimates from stated assumptions, printed with the plan.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from baselines import build_method
from baselines.budget import base_param_count, target_layer_shapes
from experiments.config import ExperimentConfig

# Architectures of the paper's models (their config.json values), so the plan needs no hub access.
KNOWN_ARCHS: dict[str, dict[str, Any]] = {
    "yahma/llama-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "meta-llama/Meta-Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
}  # fmt: skip
COMMONSENSE_170K = 170_420  # items in commonsense_170k.json (LLM-Adapters)
ASSUMPTIONS = {
    "mean_tokens_per_example": 150,  # Alpaca prompt + answer, under the 256 cutoff
    "sustained_tflops": 300.0,  # bf16/fp16 on one H100 (about 30% of peak)
    "decode_ms_per_step": 30.0,  # one beam-search step of a 16-item batch on a 7-8B model
    "bytes_per_trainable": 16,  # fp32 weight + grad + two Adam moments
}


def meta_model(name: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in KNOWN_ARCHS:
        raise ValueError(f"no architecture on record for {name!r} (known: {', '.join(KNOWN_ARCHS)})")
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**KNOWN_ARCHS[name]))


def estimate_run(cfg: ExperimentConfig, n_train: int = COMMONSENSE_170K) -> dict[str, Any]:
    a = ASSUMPTIONS
    model = meta_model(cfg.model.name)
    arch = KNOWN_ARCHS[cfg.model.name]
    total = base_param_count(model, list(cfg.model.modules_to_save))
    method = build_method(cfg.method.name, **cfg.method.params)
    shapes = target_layer_shapes(model, list(cfg.model.target_modules))
    trainable = type(method).analytic_trainable(shapes, method.rank, total, **method.params)
    weight_bytes = {"float32": 4, "float16": 2, "bfloat16": 2}[cfg.model.dtype]
    t, d = cfg.train, cfg.data
    micro = t.batch_size // t.grad_accum
    h, layers, seq = arch["hidden_size"], arch["num_hidden_layers"], d.cutoff_len
    # activations per layer without recomputation: s*b*h*(34 + 5*a*s/h) bytes (Korthikanti et al., 2022)
    per_layer = seq * micro * h * (34 + 5 * arch["num_attention_heads"] * seq / h)
    acts = per_layer * (1 if cfg.model.gradient_checkpointing else layers) + 2 * seq * micro * h * layers
    logits = 3 * micro * seq * arch["vocab_size"] * 4
    memory_gb = (total * weight_bytes + trainable * a["bytes_per_trainable"] + acts + logits) / 1e9
    steps = (
        (t.epochs or 1) * math.ceil((n_train - d.val_examples) / t.batch_size)
        if t.max_steps is None
        else t.max_steps
    )
    tokens = steps * t.batch_size * a["mean_tokens_per_example"]
    flops_per_token = (6 if cfg.method.name == "full" else 4) * total  # adapters: no weight gradients
    train_h = tokens * flops_per_token / (a["sustained_tflops"] * 1e12) / 3600
    test_items = 22_349 if d.test_examples_per_task is None else d.test_examples_per_task * len(d.eval_tasks)
    eval_h = (
        math.ceil(test_items / cfg.eval.batch_size)
        * cfg.eval.max_new_tokens
        * a["decode_ms_per_step"]
        / 1000
        / 3600
    )
    return {
        "total_params": total,
        "trainable": trainable,
        "steps": steps,
        "memory_gb": memory_gb,
        "fits_80gb": memory_gb < 80,
        "gpu_hours": train_h + eval_h,
        "layout": f"{micro} x {t.grad_accum}",
        "eval_every": t.eval_every,
        "assumptions": f"one H100, {ASSUMPTIONS}",
    }
