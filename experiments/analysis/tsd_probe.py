"""The training probe behind `analyze --train` (issue 9, "TSD analysis"): do the directions LoRA-Dash picks after
t LoRA steps match the directions that full fine-tuning changes most?

Reference: full fine-tuning of every weight for `full_steps` optimizer steps; for each target layer its update
dW* = W_after - W_before gives the change rate of every singular direction of W,
delta_i = |u_i^T dW* v_i| / (sigma_i + eps) (METHOD.md sec. 1). The paper's W* is the task-optimal weight; a
short full fine-tuning run on the same task stands in for it here.
Prediction: LoRA at each rank trains from the same pretrained weights, and at every t in `snapshots` (one run,
read at several steps) the s directions LoRA-Dash would launch on are read off its update (alpha/r) B A exactly
as the launch reads them (`select_task_specific_directions` with a `LowRankUpdate`).
The SVD of every W is computed once and shared by both rankings, so they index the same basis.

Both runs use the family's data, loss and training loader and the config's schedule (warm-up, linear or
constant decay, clipping, weight decay, accumulation), AdamW; LoRA's schedule spans the config's whole run
(what the pre-launch phase of a real run sees), full fine-tuning's spans its `full_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

import loradash
from baselines import build_method
from experiments.harness.config import ExperimentConfig
from experiments.harness.errors import DivergedError
from experiments.harness.registry import Family, get_family
from experiments.harness.schedule import lr_scheduler, total_steps

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class ProbeSettings:
    """Scale of the probe. The defaults fit the GLUE `cpu` setup (MiniLM-L6 on SST-2, batch 16; an estimated 5-10
    minutes on one thread, from measured step times of about 0.5 s for full fine-tuning): full fine-tuning as that
    profile's full-FT runs (400 steps at its chosen 5e-5), LoRA at rank 2's chosen rate. A full fine-tuning run
    that has not learned the task (check its validation score in the report) gives a reference dW* that says
    little.

    Args:
        full_steps: optimizer steps of the full fine-tuning run whose update is the reference dW*.
        full_lr: its learning rate (full fine-tuning needs a much smaller rate than LoRA).
        lora_lr: learning rate of the LoRA runs.
        snapshots: the pre-launch lengths t (the paper's t) at which LoRA's choice is read, ascending; one LoRA
            run per rank lasts max(snapshots) steps.
        ranks: LoRA ranks r probed.
        num_directions: s, the number of directions LoRA-Dash keeps (the paper's 8); the scores compare LoRA's
            top s with full fine-tuning's top s, 2s and s/2.
        eps: eps of the change rate; None takes the experiment's `change_rate_eps` when it has one, else 1e-8.
        seed: seed of the models' initialisation, dropout and data order.
        batch_size: examples per optimizer step; None: the config's.
        num_threads: torch CPU threads; None: the config's (else torch's default).
        device: where to train ("cpu", "cuda").
    """

    full_steps: int = 400
    full_lr: float = 5e-5
    lora_lr: float = 2e-3
    snapshots: tuple[int, ...] = (25, 50, 100, 200)
    ranks: tuple[int, ...] = (2, 8)
    num_directions: int = 8
    eps: float | None = None
    seed: int = 0
    batch_size: int | None = None
    num_threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("full_steps", "num_directions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_directions < 2:
            raise ValueError(f"num_directions must be >= 2 (its half is scored), got {self.num_directions}")
        if not self.snapshots or list(self.snapshots) != sorted(set(self.snapshots)) or self.snapshots[0] < 1:
            raise ValueError(
                f"snapshots must be distinct steps >= 1 in ascending order, got {self.snapshots}"
            )
        if not self.ranks or min(self.ranks) < 1 or len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"ranks must be distinct integers >= 1, got {self.ranks}")
        if not (self.full_lr > 0 and self.lora_lr > 0):
            raise ValueError("learning rates must be > 0")
        if self.eps is not None and self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")


@dataclass
class ProbeResult:
    """What the probe measured. Indices are positions in the descending singular spectrum of each layer's W."""

    layers: list[str]  # target layers, in model order
    dims: dict[str, int]  # min(out, in) per layer
    sigma: dict[str, list[float]]  # singular values of W per layer (descending)
    full_rates: dict[str, list[float]]  # change rate of every direction under dW*, per layer
    full_order: dict[str, list[int]]  # full fine-tuning's top 2s directions per layer, by descending rate
    lora_top: dict[tuple[int, int], dict[str, list[int]]]  # (rank, t) -> layer -> LoRA's top s directions
    eps: float
    training: dict[str, Any] = field(default_factory=dict)  # losses and validation metrics of each run


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _seed(seed: int) -> None:
    # The probe owns its process while it runs (as the training loop does): the head's initialisation, LoRA's A
    # and dropout follow the probe's seed, so a rerun gives the same numbers.
    from accelerate.utils import set_seed

    set_seed(seed)


def train_steps(
    model: nn.Module,
    family: Family,
    cfg: ExperimentConfig,
    *,
    lr: float,
    steps: int,
    horizon: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """`steps` AdamW steps under the config's schedule spanning `horizon` steps; the loss of every step."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
    scheduler = lr_scheduler(optimizer, cfg, horizon)
    batches = _cycle(family.train_loader(seed, max(1, batch_size // t.grad_accum)))
    losses = []
    model.train()
    for step in range(1, steps + 1):
        total = 0.0
        for _ in range(t.grad_accum):
            loss = family.loss(model, _to(next(batches), device)) / t.grad_accum
            if not torch.isfinite(loss):
                raise DivergedError(f"non-finite training loss {loss.item()} at step {step}")
            loss.backward()
            total += float(loss.detach())
        if t.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        if on_step is not None:
            on_step(step)
    return losses


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """The LoRA-wrapped target layers of a peft model, keyed by their name in the base model."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            if not isinstance(base, nn.Linear):  # as LoRA-Dash itself (loradash.layer.UnsupportedTarget)
                raise TypeError(
                    f"the probe supports nn.Linear targets only; {name!r} is a {type(base).__name__}"
                )
            out[name.removeprefix(_PEFT_PREFIX)] = module
    return out


def _summary(losses: list[float]) -> dict[str, float]:
    tail = losses[-max(1, len(losses) // 10) :]
    return {"first_loss": losses[0], "last_10pct_loss": sum(tail) / len(tail), "steps": len(losses)}


def run_probe(
    cfg: ExperimentConfig, settings: ProbeSettings, *, log: Callable[[str], None] = print
) -> ProbeResult:
    """Train LoRA at each rank (reading LoRA-Dash's choice at every snapshot), then full fine-tuning, on `cfg`'s
    model, task and data; return both rankings per target layer."""
    s = settings.num_directions
    device = torch.device(settings.device)
    threads = settings.num_threads or cfg.train.num_threads
    if threads:
        torch.set_num_threads(threads)
    family = get_family(cfg.family)(cfg)
    batch = settings.batch_size or cfg.train.batch_size
    targets, modules_to_save = list(cfg.model.target_modules), list(cfg.model.modules_to_save)
    resolved = build_method(cfg.method.name, **cfg.method.params).params
    eps = settings.eps if settings.eps is not None else float(resolved.get("change_rate_eps", 1e-8))
    # LoRA-Dash's pre-launch phase is plain LoRA with the experiment's dropout; alpha = 2r at every rank (the
    # LoRA baseline's default, the paper's setting).
    dropout = float(resolved.get("lora_dropout", 0.0))
    horizon = max(total_steps(cfg, family.num_train), settings.snapshots[-1])

    svd: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    w0: dict[str, torch.Tensor] = {}
    lora_top: dict[tuple[int, int], dict[str, list[int]]] = {}
    training: dict[str, Any] = {}
    for rank in settings.ranks:
        _seed(settings.seed)
        model = build_method("lora", r=rank, lora_dropout=dropout).wrap(
            family.build_model(), target_modules=targets, modules_to_save=modules_to_save
        )
        model.to(device)
        layers = lora_layers(model)
        if not svd:
            for name, module in layers.items():
                w0[name] = module.get_base_layer().weight.detach().to(torch.float32).clone()  # [out, in]
                svd[name] = loradash.weight_svd(
                    w0[name]
                )  # U [out, k], S [k], Vh [k, in], shared by both runs
            too_small = {n: min(w.shape) for n, w in w0.items() if min(w.shape) < 2 * s}
            if too_small:
                raise ValueError(
                    f"num_directions={s}: layers with min(out, in) < 2s cannot be scored: {too_small}"
                )

        def read_choice(step: int, rank: int = rank, layers: dict[str, LoraLayer] = layers) -> None:
            if step not in settings.snapshots:
                return
            picks = {}
            for name, module in layers.items():
                adapter = module.active_adapters[0]
                update = loradash.LowRankUpdate(
                    B=module.lora_B[adapter].weight.detach(),  # [out, r]
                    A=module.lora_A[adapter].weight.detach(),  # [r, in]
                    scaling=module.scaling[adapter],  # alpha / r
                )
                chosen = loradash.select_task_specific_directions(w0[name], update, s, eps, svd=svd[name])
                picks[name] = [int(i) for i in chosen.indices.tolist()]
            lora_top[(rank, step)] = picks

        log(
            f"probe: LoRA r={rank}, {settings.snapshots[-1]} steps (choice read at t = {list(settings.snapshots)})"
        )
        losses = train_steps(model, family, cfg, lr=settings.lora_lr, steps=settings.snapshots[-1], horizon=horizon,
                             seed=settings.seed, batch_size=batch, device=device, on_step=read_choice)  # fmt: skip
        training[f"lora_r{rank}"] = _summary(losses) | family.validate(model, device)
        del model, layers

    log(f"probe: full fine-tuning, {settings.full_steps} steps")
    _seed(settings.seed)
    model = build_method("full").wrap(
        family.build_model(), target_modules=targets, modules_to_save=modules_to_save
    )
    model.to(device)
    before = {name: model.get_submodule(name).weight for name in w0}
    changed = [n for n, w in before.items() if not torch.equal(w.detach().to(torch.float32), w0[n])]
    if changed:  # both runs must start from the same pretrained W, or the two rankings are of different bases
        raise RuntimeError(
            f"the model built for full fine-tuning differs from LoRA's base weights at {changed[:3]}"
        )
    losses = train_steps(model, family, cfg, lr=settings.full_lr, steps=settings.full_steps,
                         horizon=settings.full_steps, seed=settings.seed, batch_size=batch, device=device)  # fmt: skip
    training["full"] = _summary(losses) | family.validate(model, device)

    full_rates, full_order, sigma = {}, {}, {}
    for name in w0:
        delta = model.get_submodule(name).weight.detach().to(torch.float32) - w0[name]  # dW*, [out, in]
        ranked = loradash.select_task_specific_directions(w0[name], delta, 2 * s, eps, svd=svd[name])
        full_rates[name] = [float(x) for x in ranked.change_rate.tolist()]
        full_order[name] = [int(i) for i in ranked.indices.tolist()]
        sigma[name] = [float(x) for x in svd[name][1].tolist()]
    return ProbeResult(
        layers=list(w0),
        dims={n: min(w.shape) for n, w in w0.items()},
        sigma=sigma,
        full_rates=full_rates,
        full_order=full_order,
        lora_top=lora_top,
        eps=eps,
        training=training,
    )
