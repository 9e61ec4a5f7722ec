"""The LoRA-Dash launch on sharded models: the base weights (and LoRA's A and B) gathered whole before the SVD.

Two CPU processes over gloo shard a tiny LLaMA with torch's FSDP2 (`fully_shard`) and FSDP1
(`FullyShardedDataParallel`, use_orig_params, a unit per decoder block) and launch LoRA-Dash on it, between
steps and by the forward-call clock. Each process first launches an unsharded copy of the same weights before
any process group exists (a single-process launch, the reference). Checked: the sharded launch stores on every
rank the reference's chosen indices, U_s, Vh_s and singular values, bitwise equal across the two ranks; the
sharded model's outputs after the launch (non-zero lambda) match the reference's; the launches FSDP1 cannot
serve are refused with a message. These take 15-30 s each (slow); a one-process FSDP2 check runs by default.
DeepSpeed ZeRO-3 is checked through a stand-in for its partitioned parameters (not DeepSpeed) always, and
through DeepSpeed itself when it is installed (it is not a dependency).
"""

from __future__ import annotations

import enum
import os
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import loradash
from loradash.layer import launch_layer

WORLD = 2
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
BUFFERS = ("lora_dash_U", "lora_dash_Vh", "lora_dash_indices", "lora_dash_sigma", "lora_dash_launched")


def _model(*, clock: str = "optimizer_step", t: int = 0) -> Any:
    """A LoRA-Dash tiny LLaMA with a non-zero LoRA update (B) and non-zero scalars, the same in every call."""
    from tests.helpers import tiny_llama

    cfg = loradash.LoraDashConfig(r=4, lora_alpha=8, target_modules=TARGETS, num_directions=3,
                                  prelaunch_steps=t, prelaunch_clock=clock)  # fmt: skip
    model = loradash.get_loradash_model(tiny_llama(seed=0), cfg)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_dash_lambda" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))


def _dash_state(model: Any) -> dict[str, torch.Tensor]:
    """Every layer's launch state, keyed by the layer's name without FSDP1's wrapper segments."""
    state = {}
    for name, layer, adapter in loradash.dash_layers(model):
        key = name.replace("_fsdp_wrapped_module.", "")
        for buf in BUFFERS:
            state[f"{key}.{buf}"] = getattr(layer, buf)[adapter].detach().clone()
    return state


@torch.no_grad()
def _logits(model: Any, calls: int = 1) -> torch.Tensor:
    model.eval()
    for _ in range(calls):
        out = model(input_ids=_ids()).logits
    return out.detach().clone()


def _first_layer(model: Any) -> Any:
    return next(layer for _, layer, _ in loradash.dash_layers(model))


# -- the scenarios, run by every rank in the same order (each gather is a collective) -------------------------


def _fsdp2(clock: str) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    model = _model(clock=clock, t=1 if clock == "forward_call" else 0)
    for block in model.base_model.model.model.layers:
        fully_shard(block)
    fully_shard(model)
    sharded = type(_first_layer(model).get_base_layer().weight).__name__ == "DTensor"
    if clock == "forward_call":  # launched inside call 2, where FSDP2 has gathered its block's parameters
        logits = _logits(model, calls=2)
    else:
        assert loradash.launch_loradash(model) == 8
        logits = _logits(model)
    return {"sharded": sharded, "state": _dash_state(model), "logits": logits}


def _fsdp1(how: str) -> dict[str, Any]:
    """FSDP1 with use_orig_params and one unit per decoder block (accelerate's TRANSFORMER_BASED_WRAP)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = _model(clock=_clock(how), t=1 if _clock(how) == "forward_call" else 0)
    fsdp = FSDP(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True,
                device_id=torch.device("cpu"))  # fmt: skip
    sharded = _first_layer(fsdp).get_base_layer().weight.ndim == 1  # a flat 1-D shard of the block
    errors = {}
    if how == "fsdp1-root":  # through the root, before its first forward pass (initialised by the launch)
        assert loradash.launch_loradash(fsdp) == 8
        logits = _logits(fsdp)
    elif how == "fsdp1-inner":  # on the module inside the root, as the harness (accelerate's unwrap_model)
        inner = fsdp.module
        for name, call in (("inner before forward", lambda: loradash.launch_loradash(inner)),
                           ("layer outside its unit", lambda: launch_layer(_first_layer(inner), "default"))):  # fmt: skip
            try:
                call()
            except RuntimeError as e:
                errors[name] = str(e)
        _logits(fsdp)  # the root's first forward pass initialises every unit
        assert loradash.launch_loradash(inner) == 8
        logits = _logits(fsdp)
    else:  # the forward-call clock: launched inside call 2, where FSDP1 has gathered the block's parameters
        logits = _logits(fsdp, calls=2)
    return {"sharded": sharded, "state": _dash_state(fsdp), "logits": logits, "errors": errors}


SCENARIOS = {
    "fsdp2": lambda: _fsdp2("optimizer_step"),
    "fsdp2-forward-call": lambda: _fsdp2("forward_call"),
    "fsdp1-root": lambda: _fsdp1("fsdp1-root"),
    "fsdp1-inner": lambda: _fsdp1("fsdp1-inner"),
    "fsdp1-forward-call": lambda: _fsdp1("fsdp1-forward-call"),
}


def _reference(clock: str) -> dict[str, Any]:
    """The same weights launched in this process alone (no process group yet), then the same forward passes."""
    if clock == "forward_call":
        model = _model(clock=clock, t=1)
        logits = _logits(model, calls=2)  # launched at the start of call 2
    else:
        model = _model()
        loradash.launch_loradash(model)
        logits = _logits(model)
    return {"state": _dash_state(model), "logits": logits}


def _clock(scenario: str) -> str:
    return "forward_call" if scenario.endswith("forward-call") else "optimizer_step"


def _worker(rank: int, port: int, out: str, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    references = {s: _reference(_clock(s)) for s in scenarios}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {s: SCENARIOS[s]() for s in scenarios}
    finally:
        dist.destroy_process_group()
    torch.save({"references": references, "results": results}, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path: Path, scenarios: list[str]) -> list[dict[str, Any]]:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), scenarios), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _check_against_reference(ranks: list[dict[str, Any]], scenario: str) -> None:
    states = [r["results"][scenario]["state"] for r in ranks]
    assert states[0].keys() == states[1].keys() and len(states[0]) == 8 * len(BUFFERS)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{scenario}: {key} differs between the ranks"
    for rank in ranks:
        got, ref = rank["results"][scenario], rank["references"][scenario]
        assert got["sharded"], f"{scenario}: the weights were not sharded, nothing was tested"
        for key, value in got["state"].items():
            if key.endswith(("indices", "launched")):
                assert torch.equal(value, ref["state"][key]), f"{scenario}: {key}"
            else:  # the same SVD of the same bits in the same process: equal up to fp32 rounding at most
                torch.testing.assert_close(
                    value, ref["state"][key], rtol=1e-5, atol=1e-6, msg=f"{scenario}: {key}"
                )
        assert all(bool(v) for k, v in got["state"].items() if k.endswith("launched"))
        torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-5, atol=1e-5)


def test_fsdp2_launch_in_one_process(tmp_path):
    """The quick check of the default suite: FSDP2 over a one-process group still makes every parameter a DTensor,
    so the launch must gather with full_tensor (it used to fail on LoRA's DTensor factors); the two-process test
    below shards them for real."""
    references = {s: _reference(_clock(s)) for s in ("fsdp2", "fsdp2-forward-call")}
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        results = {s: SCENARIOS[s]() for s in references}
    finally:
        dist.destroy_process_group()
    for scenario, got in results.items():
        ref = references[scenario]
        assert got["sharded"]
        assert got["state"].keys() == ref["state"].keys()
        for key, value in got["state"].items():
            assert torch.equal(value, ref["state"][key]), f"{scenario}: {key}"
        torch.testing.assert_close(got["logits"], ref["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_launch_gathers_the_sharded_weights(tmp_path):
    """FSDP2: launch_loradash between steps (parameters are DTensors: full_tensor) and the forward-call clock
    (the launch inside a forward pass, on the block's gathered parameters) give the unsharded launch."""
    ranks = _spawn(tmp_path, ["fsdp2", "fsdp2-forward-call"])
    for scenario in ("fsdp2", "fsdp2-forward-call"):
        _check_against_reference(ranks, scenario)


@pytest.mark.slow
def test_fsdp1_launch_gathers_the_sharded_weights(tmp_path):
    """FSDP1 (use_orig_params, a unit per decoder block): launched through the root before any forward pass,
    on the module inside the root after one (as the harness does), and by the forward-call clock, the sharded
    launch is the unsharded one; a launch FSDP1 cannot serve is refused, not decomposed."""
    scenarios = ["fsdp1-root", "fsdp1-inner", "fsdp1-forward-call"]
    ranks = _spawn(tmp_path, scenarios)
    for scenario in scenarios:
        _check_against_reference(ranks, scenario)
    for rank in ranks:
        errors = rank["results"]["fsdp1-inner"]["errors"]
        assert "before the first forward pass" in errors["inner before forward"]
        assert "not whole on this rank (shape (" in errors["layer outside its unit"]


# -- DeepSpeed ZeRO-3 --------------------------------------------------------------------------------------------


class _Status(enum.Enum):  # the names of deepspeed's ZeroParamStatus
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


class _GatheredParameters:
    """A STAND-IN for `deepspeed.zero.GatheredParameters`, not DeepSpeed: it restores the full data of the
    parameters `_partition` emptied while the context is open, and empties them again on exit."""

    calls: list[int] = []

    def __init__(self, params: Any, modifier_rank: int | None = None, fwd_module: Any = None, enabled=True):
        assert modifier_rank is None, "the launch only reads the weights: nothing to write back"
        self.params = [p for p in params if hasattr(p, "ds_id")]

    def __enter__(self) -> None:
        _GatheredParameters.calls.append(len(self.params))
        for p in self.params:
            assert p.ds_status is _Status.NOT_AVAILABLE
            p.data, p.ds_status = p.ds_full, _Status.AVAILABLE

    def __exit__(self, *exc: Any) -> None:
        for p in self.params:
            p.data, p.ds_status = torch.empty(0, dtype=p.dtype), _Status.NOT_AVAILABLE


def _partition(model: Any, *, keep: str = "") -> None:
    """ZeRO-3's contract for a partitioned parameter, as far as the launch sees it: it carries `ds_id`,
    `ds_shape` and `ds_status`, and is an empty tensor until gathered (parameters named `keep`: gathered, as
    DeepSpeed keeps small "persistent" ones or those it fetched for a running forward pass)."""
    for i, (name, p) in enumerate(model.named_parameters()):
        if any(t in name for t in TARGETS):
            p.ds_id, p.ds_shape, p.ds_full, p.ds_status = i, p.shape, p.data, _Status.AVAILABLE
            if not (keep and keep in name):
                p.data, p.ds_status = torch.empty(0, dtype=p.dtype), _Status.NOT_AVAILABLE


def test_zero3_launch_gathers_the_partitioned_weights(monkeypatch):
    """Through a STAND-IN for DeepSpeed (injected as `deepspeed` in sys.modules; DeepSpeed itself: the slow test
    below): ZeRO-3 partitioned parameters are gathered read-only, one context per layer, and the launch equals
    the unpartitioned one; they are partitioned again afterwards, and a parameter DeepSpeed holds gathered is
    read as it is and left to DeepSpeed. Without the gather (a GatheredParameters that restores nothing) the
    launch refuses to decompose the empty tensors."""
    fake = types.SimpleNamespace(zero=types.SimpleNamespace(GatheredParameters=_GatheredParameters))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    monkeypatch.setattr(_GatheredParameters, "calls", [])
    reference = _model()
    loradash.launch_loradash(reference)
    expected = _dash_state(reference)
    partitioned = _model()
    _partition(partitioned)
    assert loradash.launch_loradash(partitioned) == 8
    assert _GatheredParameters.calls == [3] * 8  # W, B and A of each of the 8 layers
    for key, value in _dash_state(partitioned).items():
        assert torch.equal(value, expected[key]), key
    zero3 = [p for p in partitioned.parameters() if hasattr(p, "ds_id")]
    assert zero3 and all(p.numel() == 0 and p.ds_status is _Status.NOT_AVAILABLE for p in zero3)

    monkeypatch.setattr(_GatheredParameters, "calls", [])
    held = _model()
    _partition(held, keep="lora_")  # LoRA's factors gathered (persistent), the base weights partitioned
    assert loradash.launch_loradash(held) == 8
    assert _GatheredParameters.calls == [1] * 8
    assert all(torch.equal(v, expected[k]) for k, v in _dash_state(held).items())
    assert all((p.numel() > 0) == ("lora_" in n) for n, p in held.named_parameters() if hasattr(p, "ds_id"))

    monkeypatch.setattr(_GatheredParameters, "__enter__", lambda self: None)
    again = _model()
    _partition(again)
    with pytest.raises(
        RuntimeError, match=r"base weight of a 32 x 32 layer is not whole on this rank \(shape \(0,\)"
    ):
        launch_layer(_first_layer(again), "default")


ZERO3 = {  # scenario: ZeRO-3's stage3_param_persistence_threshold (0: nothing persistent, every weight partitioned;
    # None: DeepSpeed's default, under which all of the tiny model's weights are small enough to stay gathered)
    "zero3": 0,
    "zero3-forward-call": 0,
    "zero3-persistent": None,
    "zero3-persistent-forward-call": None,
}


def _zero3_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), DS_ACCELERATOR="cpu")  # fmt: skip
    torch.set_num_threads(1)
    references = {s: _reference(_clock(s)) for s in ZERO3}
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for scenario, threshold in ZERO3.items():
        zero = {"stage": 3} | ({} if threshold is None else {"stage3_param_persistence_threshold": threshold})
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
        }
        clock = _clock(scenario)
        model = _model(clock=clock, t=1 if clock == "forward_call" else 0)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        weight = _first_layer(engine.module).get_base_layer().weight
        sharded = hasattr(weight, "ds_id") and (threshold is None or weight.numel() == 0)
        if clock == "forward_call":  # launched inside call 2, on the weights DeepSpeed fetched for it
            logits = _logits(engine, calls=2)
        else:
            assert loradash.launch_loradash(engine.module) == 8
            logits = _logits(engine)
        results[scenario] = {"sharded": sharded, "state": _dash_state(engine.module), "logits": logits}
    torch.save({"references": references, "results": results}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_zero3_launch_with_deepspeed(tmp_path):
    """DeepSpeed ZeRO-3 itself on two CPU processes (DeepSpeed's CPU accelerator, gloo), when it is installed:
    launch_loradash on the engine's module between steps, and the forward-call clock inside a forward pass, with
    every weight partitioned and with DeepSpeed's default persistence, match the single-process launch, bitwise
    equal across the ranks."""
    pytest.importorskip(
        "deepspeed", reason="DeepSpeed is not a dependency; pip install deepspeed to run this"
    )
    mp.spawn(_zero3_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for scenario in ZERO3:
        _check_against_reference(ranks, scenario)
