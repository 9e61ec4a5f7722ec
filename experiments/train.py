"""The one training loop, for every method and family, on `accelerate`.

Read top to bottom: build the family's data and model, wrap it with the method, train with AdamW, linear
warm-up and decay, gradient accumulation and clipping, call the method's `on_optimizer_step` hook after every
optimizer step (LoRA-Dash's launch), validate periodically, keep the best checkpoint by the validation
metric, score the test sets with it, and write one self-describing record. `accelerate launch` runs the same
code on many GPUs.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from baselines import build_method
from experiments.config import ExperimentConfig, config_hash, with_overrides
from experiments.registry import get_family
from experiments.results import (
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    peak_memory_mib,
    provenance,
    run_path,
    validate_record,
    write_atomic,
)


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the best checkpoint must hold: every trainable parameter and every buffer (LoRA-Dash's U, Vh and
    launch flag are buffers), copied."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable or k in buffers}


def train_and_evaluate(
    cfg: ExperimentConfig, *, seed: int, profile: str, progress: bool = True
) -> dict[str, Any]:
    """Train one run and return the record fields of a complete run."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    set_seed(seed)  # the harness owns the process: dropout and the head's init follow the run's seed
    # Runs of one in-process sweep may differ in mixed precision; the process-level state is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum)
    family = get_family(cfg.family)(cfg)
    max_steps = t.max_steps or (t.epochs or 0) * math.ceil(family.num_train / t.batch_size)
    method = build_method(cfg.method.name, **cfg.method.params)
    warmup = round(t.warmup_ratio * max_steps) if t.warmup_ratio is not None else t.warmup_steps
    base = family.build_model()
    if cfg.model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad
    model = method.wrap(
        base, target_modules=list(cfg.model.target_modules), modules_to_save=list(cfg.model.modules_to_save)
    )
    counts = method.counts(model)
    total_model = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [g for g in method.param_groups(model, t.lr) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup, max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    loader = family.train_loader(seed, t.batch_size // t.grad_accum)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw_model = accelerator.unwrap_model(model)

    curve: list[dict[str, float]] = []
    lrs: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    sign = 1.0 if type(family).higher_is_better(t.selection_metric) else -1.0
    step, examples, t0 = 0, 0, time.perf_counter()
    bar = tqdm(total=max_steps, disable=not progress, desc=f"{cfg.name} s{seed} lr{t.lr:g}", mininterval=5)
    batches = _cycle(loader)
    model.train()
    while step < max_steps:
        batch = next(batches)
        lr_now = optimizer.param_groups[0]["lr"]  # the rate this optimizer step uses
        with accelerator.accumulate(model):
            loss = family.loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.max_grad_norm:
                accelerator.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        examples += family.batch_size_of(batch)
        if not accelerator.sync_gradients:
            continue
        lrs.append(lr_now)  # lrs[i] is the rate of step i + 1
        step += 1
        method.on_optimizer_step(raw_model, step)  # method hooks run on the optimizer-step clock
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{examples / (time.perf_counter() - t0):.1f}")
        if step % t.eval_every == 0 or step == max_steps:
            metrics = family.validate(model, accelerator.device)
            curve.append({"step": step, **metrics})
            score = sign * metrics[t.selection_metric]
            if best is None or score > best[0]:
                best = (score, step, _snapshot(raw_model))
            model.train()
    bar.close()
    train_time = time.perf_counter() - t0
    assert best is not None
    raw_model.load_state_dict(best[2], strict=False)
    test = family.evaluate_test(model, accelerator.device)
    fam = type(family)
    scores = [r[fam.primary_metric] for r in test["per_task"].values()]
    test |= {"primary_metric": fam.primary_metric, "score": sum(scores) / len(scores)}  # unweighted over tasks
    diagnostics = method.diagnostics(raw_model, lrs=lrs, best_step=best[1])
    return {
        "param_counts": {
            "trainable": counts.trainable,
            "head": counts.head,
            "stored": counts.stored,
            "total_model": total_model,
        },
        "test": test,
        "validation_curve": curve,
        "best_step": best[1],
        "selection_metric": t.selection_metric,
        "train_time_s": train_time,
        "examples_seen": examples,
        "max_steps": max_steps,
        "diagnostics": diagnostics,
        "identity": family.identity(),
    }


def run(
    cfg: ExperimentConfig,
    *,
    seed: int,
    lr: float,
    profile: str,
    results_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (experiment, seed, lr) and write its record; a failure or an interrupt is
    recorded as such (and retried by the next sweep), never left as a half-written file."""
    cfg = with_overrides(cfg, train={"lr": float(lr)})
    fam = get_family(cfg.family)
    path = run_path(results_dir, profile, cfg.family, cfg.name, seed, lr, cfg.task)
    resolved = dict(build_method(cfg.method.name, **cfg.method.params).params)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "family": cfg.family,
        "profile": profile,
        "experiment": cfg.name,
        "task": cfg.task,
        "method": cfg.method.name,
        "method_params": resolved,
        "seed": seed,
        "lr": float(lr),
        "config": cfg.to_dict(),
        "config_hash": config_hash(cfg, resolved),
        "provenance": provenance(fam.protocol_version),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    t0 = time.perf_counter()
    try:
        record |= train_and_evaluate(cfg, seed=seed, profile=profile, progress=progress)
        record["status"] = "complete"
        record["wall_time_s"] = time.perf_counter() - t0
        record["peak_memory_mib"] = peak_memory_mib()
        record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        problems = validate_record(record, fam.primary_metric)
        if problems:  # a bug in the harness, not in the run: fail loudly rather than write a bad record
            raise RuntimeError(f"run record for {path} does not match the schema: {problems}")
    except KeyboardInterrupt:
        record |= {"status": "interrupted", "wall_time_s": time.perf_counter() - t0}
        write_atomic(path, record)
        raise
    except Exception as e:
        # Only the fields every record has survive into a failed record (a half-filled result would mislead).
        record = {k: v for k, v in record.items() if k in REQUIRED_FIELDS or k in ("task", "started_at")}
        record |= {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "wall_time_s": time.perf_counter() - t0,
        }
        write_atomic(path, record)
        raise
    write_atomic(path, record)
    return record
