"""The one training loop, for every method and family, on `accelerate`.

Read top to bottom: build the family's data and model, wrap it with the method, train with AdamW, linear
warm-up and decay, gradient accumulation and clipping, call the method's `on_optimizer_step` hook after every
optimizer step (LoRA-Dash's launch), validate periodically, keep the best checkpoint by the validation
metric, score the test sets with it, and write one self-describing record. `accelerate launch` runs the same
code on many GPUs.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from baselines import build_method
from experiments.harness import checkpoint as ckpt
from experiments.harness.config import ExperimentConfig, config_hash, with_overrides
from experiments.harness.errors import CorruptRecordError, DivergedError
from experiments.harness.loading import quiet_libraries
from experiments.harness.records import (
    REQUIRED_FIELDS,
    SCHEMA_VERSION,
    check_record,
    peak_memory_mib,
    provenance,
    read_record,
    run_path,
    set_aside,
    utc_stamp,
    validate_record,
    write_atomic,
)
from experiments.harness.registry import get_family
from experiments.harness.runlock import run_lock
from experiments.harness.schedule import lr_scheduler, total_steps
from experiments.harness.tracking import RunTracking, logs_dir, requested


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _selected(curve: list[dict[str, float]], step: int | None, metric: str) -> float:
    return next(p[metric] for p in curve if p["step"] == step)


def _snapshot(model: torch.nn.Module, *, clone: bool = True) -> dict[str, torch.Tensor]:
    """What the best checkpoint must hold: every trainable parameter and every buffer (LoRA-Dash's U, Vh and
    launch flag are buffers), copied (or not, for a checkpoint that copies them to the CPU itself)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() if clone else v.detach() for k, v in model.state_dict().items()
            if k in trainable or k in buffers}  # fmt: skip


def train_and_evaluate(
    cfg: ExperimentConfig,
    *,
    seed: int,
    profile: str,
    progress: bool = True,
    checkpoint: Path | None = None,
    tracking_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one run and return the record fields of a complete run. With `checkpoint` (a folder) and
    `train.checkpoint_every`, the run's state is saved there every that many optimizer steps, and a run that
    finds a checkpoint of its own config there resumes from it (experiments/harness/checkpoint.py). With
    `tracking_dir` (a folder), the trackers of `train.report_to` log the run there (experiments/harness/tracking.py);
    they are closed however the run ends."""
    track = RunTracking(requested(cfg.train.report_to), tracking_dir, cfg=cfg, seed=seed, profile=profile)
    try:
        return _train_and_evaluate(cfg, seed=seed, progress=progress, checkpoint=checkpoint, track=track,
                                   log=log)  # fmt: skip
    finally:
        track.end()


def _train_and_evaluate(cfg: ExperimentConfig, *, seed: int, progress: bool, checkpoint: Path | None,
                        track: RunTracking, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import send_to_device, set_seed

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    set_seed(seed)  # the harness owns the process: dropout and the head's init follow the run's seed
    reset_accelerate_state()  # runs of one in-process sweep may differ in mixed precision
    # split_batches: the batch of an optimizer step is split over the processes, so that N processes train on
    # the batches (and step the schedule once per step) as one process does; with one process nothing changes.
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        **track.accelerator_kwargs(),
    )
    with quiet_libraries(progress):  # a family may load models of its own (planted: its teacher)
        family = get_family(cfg.family)(cfg, seed=seed)
        max_steps = total_steps(cfg, family.num_train)
        method = build_method(cfg.method.name, **cfg.method.params)
        base = family.build_model()
        if cfg.model.gradient_checkpointing:
            family.enable_gradient_checkpointing(base)
        model = method.wrap(
            base,
            target_modules=list(cfg.model.target_modules),
            modules_to_save=list(cfg.model.modules_to_save),
        )
    counts = method.counts(model)
    total_model = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [g for g in method.param_groups(model, t.lr) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = lr_scheduler(optimizer, cfg, max_steps)
    micro_batch = t.batch_size // t.grad_accum
    if micro_batch % accelerator.num_processes:
        raise ValueError(
            f"a micro-batch of {micro_batch} cannot be split over {accelerator.num_processes} processes"
        )
    loader = family.train_loader(seed, micro_batch)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw_model = accelerator.unwrap_model(model)

    sign = 1.0 if type(family).higher_is_better(t.selection_metric) else -1.0
    done = ckpt.Progress()
    best_state: dict[str, torch.Tensor] | None = None
    every = t.checkpoint_every if checkpoint is not None else None
    owner = {"config_hash": config_hash(cfg, dict(method.params)), "seed": seed, "lr": t.lr}
    restored = ckpt.load(checkpoint, owner) if every else None
    batches = _cycle(loader)
    if restored is not None:
        ckpt.restore(restored, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                     accelerator=accelerator, method=method)  # fmt: skip
        done, best_state = restored.progress, restored.best_state
        for _ in range(done.micro_batches):  # the loader's generator advances as it did (epochs included)
            next(batches)
        ckpt.restore_rng(restored)  # after the fast-forward: dropout continues where it stopped
        log(f"  resuming {cfg.name} seed={seed} lr={t.lr:g} from step {done.step} ({checkpoint})")
    track.start(accelerator, resumed_step=done.step, config_hash=owner["config_hash"])
    step, examples, curve, lrs = done.step, done.examples, done.curve, done.lrs
    best = None if best_state is None else (sign * _selected(curve, done.best_step, t.selection_metric),
                                            done.best_step, best_state)  # fmt: skip
    t0 = time.perf_counter() - done.train_time_s
    bar = tqdm(total=max_steps, initial=step, disable=not progress, desc=f"{cfg.name} s{seed} lr{t.lr:g}",
               mininterval=5)  # fmt: skip
    model.train()
    while step < max_steps:
        batch = next(batches)
        done.micro_batches += 1
        lr_now = optimizer.param_groups[0]["lr"]  # the rate this optimizer step uses
        with accelerator.accumulate(model):
            loss = family.loss(model, batch)
            if not torch.isfinite(loss):
                raise DivergedError(f"non-finite training loss {loss.item()} at step {step}")
            track.micro_batch(loss)
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.max_grad_norm:
                accelerator.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        examples += family.batch_size_of(batch) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        lrs.append(lr_now)  # lrs[i] is the rate of step i + 1
        step += 1
        method.on_optimizer_step(raw_model, step)  # method hooks run on the optimizer-step clock
        track.step(step, lr=lr_now)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{examples / (time.perf_counter() - t0):.1f}")
        if step % t.eval_every == 0 or step == max_steps:
            metrics = family.validate(model, accelerator.device)
            curve.append({"step": step, **metrics})
            track.validation(step, metrics, method=method, model=raw_model, lrs=lrs)
            score = sign * metrics[t.selection_metric]
            if best is None or score > best[0]:
                best = (score, step, _snapshot(raw_model))
            model.train()
        if every and step % every == 0 and step < max_steps and accelerator.is_main_process:
            done.step, done.examples, done.train_time_s = step, examples, time.perf_counter() - t0
            done.best_step = None if best is None else best[1]
            ckpt.save(checkpoint, owner=owner, progress=done, model_state=_snapshot(raw_model, clone=False),  # type: ignore[arg-type]
                      best_state=None if best is None else best[2], optimizer=optimizer, scheduler=scheduler,
                      accelerator=accelerator, method=method)  # fmt: skip
    bar.close()
    train_time = time.perf_counter() - t0
    assert best is not None
    raw_model.load_state_dict(best[2], strict=False)
    test = family.evaluate_test(model, accelerator.device)
    fam = type(family)
    scores = [r[fam.primary_metric] for r in test["per_task"].values()]
    test |= {
        "primary_metric": fam.primary_metric,
        "score": sum(scores) / len(scores),
    }  # unweighted over tasks
    # Diagnostics measured on activations use one fixed batch: the first micro-batch of seed 0's training order,
    # the same for every seed and method of a profile.
    probe = send_to_device(next(iter(family.train_loader(0, micro_batch))), accelerator.device)
    diagnostics = method.diagnostics(
        raw_model, lrs=lrs, best_step=best[1], forward=lambda: family.loss(model, probe)
    )
    track.test(max_steps, test, best_step=best[1], metrics=fam.metrics, method=method, diagnostics=diagnostics,
               images=family.tracked_images())  # fmt: skip
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


def reset_accelerate_state() -> None:
    """Forget the accelerator settings of the previous run in this process, keeping the process-level state
    (PartialState: device, ranks). accelerate holds one process-wide AcceleratorState and GradientState and
    refuses a new Accelerator whose mixed precision differs; runs of one in-process sweep may differ in it.
    accelerate (1.15) has no public reset; its own tests call the private class methods used here, and this is
    the only place that calls them. tests/test_accelerate_reset.py fails if accelerate removes them."""
    from accelerate.state import AcceleratorState, GradientState

    for state in (AcceleratorState, GradientState):
        reset = getattr(state, "_reset_state", None)
        if not callable(reset):
            raise RuntimeError(
                f"accelerate has no {state.__name__}._reset_state: update reset_accelerate_state"
            )
        reset()


def run(
    cfg: ExperimentConfig,
    *,
    seed: int,
    lr: float,
    profile: str,
    results_dir: str | Path,
    progress: bool = True,
    rerun_complete: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate one (experiment, seed, lr) and write its record; a failure or an interrupt is
    recorded as such (and retried by the next sweep), never left as a half-written file.

    The run holds its lock (`runlock.py`) from the first look at its record to the last write, so that sweeps
    sharing a folder never train one run twice or touch each other's checkpoint (RunLockedError: a live process
    holds it). Under the lock, what is at the record's path is never lost: a record that does not check
    (`check_record`) is set aside as `.invalid-<time>`, a stale one as `.stale-<hash>`; a complete, current one
    is returned untouched unless `rerun_complete`, and then kept until the new record is complete (as
    `.replaced-<time>`); a complete record is never replaced by a failed or interrupted one."""
    cfg = with_overrides(cfg, train={"lr": float(lr)})
    fam = get_family(cfg.family)
    path = run_path(results_dir, profile, cfg.family, cfg.name, seed, lr, cfg.task)
    resolved = dict(build_method(cfg.method.name, **cfg.method.params).params)
    main = _is_main_process()  # under `accelerate launch` every process trains; one writes
    if not main:  # the main process holds the lock and looks after the record; the others only train
        return _run(
            cfg, fam, path, resolved, seed=seed, lr=lr, profile=profile, progress=progress, main=False
        )
    with run_lock(path):
        existing = read_record(path)
        this_hash = config_hash(cfg, resolved)
        if existing is not None:
            problems = check_record(path, existing, fam)
            if problems:
                moved = set_aside(path, f"invalid-{utc_stamp()}")
                log(f"  invalid record {path} ({problems[0]}) set aside as {moved.name}")
            elif existing.get("status") == "complete" and existing.get("config_hash") != this_hash:
                moved = set_aside(path, f"stale-{existing.get('config_hash') or 'unhashed'}")
                log(f"  stale record kept as {moved.name}")
            elif existing.get("status") == "complete" and not rerun_complete:
                return existing  # another process finished it meanwhile
        return _run(cfg, fam, path, resolved, seed=seed, lr=lr, profile=profile, progress=progress, main=True)


def _complete_at(path: Path) -> bool:
    try:
        return (read_record(path) or {}).get("status") == "complete"
    except CorruptRecordError:
        return False


def _run(cfg: ExperimentConfig, fam: Any, path: Path, resolved: dict[str, Any], *, seed: int, lr: float,
         profile: str, progress: bool, main: bool) -> dict[str, Any]:  # fmt: skip
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
    # Checkpointing is opt-in (train.checkpoint_every); the keyword is passed only then, so a stand-in for
    # train_and_evaluate (tests) needs no checkpoint argument. Tracking likewise (train.report_to).
    ckpt_dir = ckpt.checkpoint_dir(path)
    resume: dict[str, Any] = {"checkpoint": ckpt_dir} if cfg.train.checkpoint_every else {}
    if requested(cfg.train.report_to):
        resume["tracking_dir"] = logs_dir(path, task=cfg.task)
    try:
        record |= train_and_evaluate(cfg, seed=seed, profile=profile, progress=progress, **resume)
        record["status"] = "complete"
        record["wall_time_s"] = time.perf_counter() - t0
        record["peak_memory_mib"] = peak_memory_mib()
        record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        problems = validate_record(record, fam.primary_metric)
        if problems:  # a bug in the harness, not in the run: fail loudly rather than write a bad record
            raise RuntimeError(f"run record for {path} does not match the schema: {problems}")
    except KeyboardInterrupt as e:
        record |= {"status": "interrupted", "wall_time_s": time.perf_counter() - t0}
        if main:
            _write_unless_complete(path, record, e)
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
        if main:
            _write_unless_complete(path, record, e)
        raise
    if main:
        if _complete_at(path):  # `--force`: the old record was kept until now
            set_aside(path, f"replaced-{utc_stamp()}")
        write_atomic(path, record)
        ckpt.remove(ckpt_dir)  # the record is complete: its checkpoint has served
    return record


def _write_unless_complete(path: Path, record: dict[str, Any], e: BaseException) -> None:
    """Record a failed or interrupted run, unless a complete record is there (`--force` of a complete run):
    that one is kept, and the failure is only reported."""
    if _complete_at(path):
        e.add_note(f"(the complete record {path} is kept)")
        return
    write_atomic(path, record)
    e.add_note(f"(run recorded as {record['status']} in {path})")


def _is_main_process() -> bool:
    """Rank 0 of a launch (or no launch), read from the launcher's environment: initialising accelerate's state
    here, before the run's Accelerator, would fix its settings (e.g. `ACCELERATE_USE_CPU`) too early."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0) == 0
