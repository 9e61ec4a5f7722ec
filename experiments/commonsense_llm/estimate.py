"""Rough GPU memory and GPU-hours of a full-scale run, and its LoRA-Dash launch update, for the dry run
(`list --estimate`).

The model is built on the meta device from its architecture (no weights, no download), so parameter and
adapter counts are exact; memory and time are estimates from stated assumptions, printed with the plan. The
launch update is exact (`launch_update`): it depends only on the run's layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from baselines import build_method, get_method
from baselines.budget import base_param_count, target_layer_shapes
from experiments.harness.config import ExperimentConfig
from experiments.harness.schedule import total_steps

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
    "decode_ms_per_step": 30.0,  # one beam-search step of a 1- to 16-item batch on a 7-8B model (memory-bound)
    "bytes_per_trainable": 16,  # fp32 weight + grad + two Adam moments
}


def meta_model(name: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in KNOWN_ARCHS:
        raise ValueError(f"no architecture on record for {name!r} (known: {', '.join(KNOWN_ARCHS)})")
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**KNOWN_ARCHS[name]))


def forward_call_launch_update(
    *, prelaunch_calls: int, calls_per_update: int, eval_every: int, val_batches: int, max_steps: int
) -> int | None:
    """The update at which the authors' forward-call clock launches a layer (METHOD.md section 2), as the
    record's `diagnostics.launch_step` shows it; None if it never does during training.

    Each target layer counts its forward calls and launches at the start of call t + 1 (t = prelaunch_calls).
    A training update makes `calls_per_update` calls (one per micro-batch, two with gradient checkpointing,
    whose backward recomputes the forward); a validation after every `eval_every`-th update (and after the
    last) makes one per validation batch. A launch inside update k's passes shows as k (the layer ran
    launched in that update); one inside the validation after update k shows as k + 1, the first update
    that runs launched. Under the authors' layout (16 x 1, validation every 80 updates in 15 batches of 8,
    t = 100) that is 86: the switch fires after 85 updates, as in their runs.
    """
    calls = 0
    for step in range(1, max_steps + 1):
        calls += calls_per_update
        if calls > prelaunch_calls:
            return step
        if step % eval_every == 0 or step == max_steps:
            calls += val_batches
            if calls > prelaunch_calls:
                return step + 1 if step < max_steps else None
    return None


def launch_update(cfg: ExperimentConfig, n_train: int) -> int | None:
    """The optimizer step `diagnostics.launch_step` will show for a LoRA-Dash run of `cfg` on `n_train`
    training items (None: not a LoRA-Dash run, or no launch during training).

    Optimizer-step clock (the paper's): after update t (the dash term acts from update t + 1; t = 0 launches
    after update 1). Forward-call clock (the authors' code): `forward_call_launch_update` under the run's
    layout: micro-batches per update, gradient checkpointing, validation interval and batches."""
    params = build_method(cfg.method.name, **cfg.method.params).params
    if "prelaunch_steps" not in params:
        return None
    t, steps = int(params["prelaunch_steps"]), total_steps(cfg, n_train)
    if params.get("prelaunch_clock", "optimizer_step") == "optimizer_step":
        return max(t, 1) if max(t, 1) <= steps else None
    return forward_call_launch_update(
        prelaunch_calls=t,
        calls_per_update=cfg.train.grad_accum * (2 if cfg.model.gradient_checkpointing else 1),
        eval_every=cfg.train.eval_every,
        val_batches=math.ceil(cfg.data.val_examples / cfg.train.eval_batch_size),
        max_steps=steps,
    )


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
    steps = total_steps(cfg, n_train - d.val_examples)
    tokens = steps * t.batch_size * a["mean_tokens_per_example"]
    flops_per_token = (
        6 if get_method(cfg.method.name).trains_base_weights else 4
    ) * total  # adapters: no weight gradients
    train_h = tokens * flops_per_token / (a["sustained_tflops"] * 1e12) / 3600
    test_items = 22_349 if d.test_examples_per_task is None else d.test_examples_per_task * len(d.eval_tasks)
    e = cfg.eval
    batches = math.ceil(test_items / e.batch_size)
    if e.batch_size > 1:  # the batch-1 check generates the first items of each task again, alone
        per_task = e.batch1_check_items if d.test_examples_per_task is None else d.test_examples_per_task
        batches += min(e.batch1_check_items, per_task) * len(d.eval_tasks)
    eval_h = batches * e.max_new_tokens * a["decode_ms_per_step"] / 1000 / 3600
    # LoRA-Dash runs: the update their diagnostics will name as the launch (None: not during training)
    is_dash = "prelaunch_steps" in method.params
    launch = {"launch_update": launch_update(cfg, n_train - d.val_examples)} if is_dash else {}
    return {
        "total_params": total,
        "trainable": trainable,
        "steps": steps,
        "memory_gb": memory_gb,
        "fits_80gb": memory_gb < 80,
        "gpu_hours": train_h + eval_h,
        "layout": f"{micro} x {t.grad_accum}",
        "eval_every": t.eval_every,
        **launch,
        "assumptions": f"one H100, {ASSUMPTIONS}",
    }
