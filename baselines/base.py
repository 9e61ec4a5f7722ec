"""The interface every fine-tuning method implements, and the registry that names them.

Why one interface: the harness trains, counts, saves and diagnoses every method through the same calls, so a
difference between two runs comes from the method, never from a per-method branch in the loop. A method is a
`Method` subclass decorated with `@register`; its hyper-parameters are validated once, when it is built.
"""

from __future__ import annotations

import abc
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import get_peft_model_state_dict
from torch import nn

from .errors import UserError
from .registry import Registry, import_modules

__all__ = [
    "AdapterMethod",
    "Method",
    "ParamCounts",
    "Shape",
    "UnknownMethodError",
    "available_methods",
    "build_method",
    "check_choice",
    "check_int",
    "check_number",
    "get_method",
    "register",
    "target_layers",
]

Shape = tuple[int, int]  # (out_features, in_features) of one target nn.Linear, i.e. its weight's shape


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts of a wrapped model, as reported in every result file.

    Attributes:
        trainable: parameters the optimizer updates that belong to the method (adapter weights; every weight
            for full fine-tuning), excluding modules_to_save / task heads.
        head: trainable parameters of modules_to_save (e.g. the classifier head), counted apart so that methods
            are compared on what they add, not on a head every method trains alike.
        stored: numbers that must be stored to reproduce the adapted model, excluding the head: for adapters,
            every element `save_adapter` writes (trainable weights plus persistent adapter buffers); for full
            fine-tuning, every weight.
    """

    trainable: int
    head: int
    stored: int


# ----------------------------------------------------------------------------------------------------------------
# Hyper-parameter checks (ValueError for wrong types too: a bad config is a value error of the experiment).


def check_int(params: Mapping[str, Any], key: str, *, minimum: int) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def check_number(
    params: Mapping[str, Any],
    key: str,
    *,
    minimum: float,
    maximum: float | None = None,
    open_max: bool = False,
) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    too_big = maximum is not None and (value >= maximum if open_max else value > maximum)
    if value < minimum or too_big:
        high = "" if maximum is None else f" and {'<' if open_max else '<='} {maximum}"
        raise ValueError(f"{key} must be >= {minimum}{high}, got {value}")


def check_choice(params: Mapping[str, Any], key: str, choices: Sequence[Any]) -> None:
    if params[key] not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {params[key]!r}")


# ----------------------------------------------------------------------------------------------------------------
# Target layers


def first_too_narrow(layers: Sequence[tuple[str, nn.Linear]], n: int) -> tuple[str, nn.Linear, int] | None:
    """The first target layer that cannot hold n independent directions (n > min(out, in)), with that minimum."""
    for name, layer in layers:
        k = min(layer.out_features, layer.in_features)
        if n > k:
            return name, layer, k
    return None


def target_layers(model: nn.Module, target_modules: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear modules peft would adapt for `target_modules`, with their names, in model order.

    Uses peft's own matching (`check_target_module_exists` with a LoraConfig) so that shape checks and analytic
    counts see exactly the layers the adapter will wrap. Raises if nothing matches.
    """
    config = LoraConfig(target_modules=list(target_modules))
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name and isinstance(module, nn.Linear) and check_target_module_exists(config, name)
    ]
    if not found:
        raise ValueError(f"No nn.Linear module matches target_modules={list(target_modules)!r}")
    return found


def _is_under(name: str, modules: Sequence[str]) -> bool:
    """Whether parameter `name` lies in a module named (or ending with) one of `modules`, peft-style suffix match."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
    return any(p == m or p.endswith("." + m) for p in prefixes for m in modules)


# ----------------------------------------------------------------------------------------------------------------
# The interface

M = TypeVar("M", bound="Method")


class Method(abc.ABC):
    """One fine-tuning method: builds the model to train, hooks into the loop, counts and saves.

    Subclasses set `name` and `defaults`, implement `_wrap`, and, for a method with a rank, `layer_trainable`
    (the analytic count that `counts().trainable` must match). `params` are final once `wrap` has run (VeRA
    caps a defaulted rank to the model there).
    """

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]]
    supports_merge: ClassVar[bool] = True  # merge_adapter()/unmerge_adapter() reproduce the unmerged outputs
    needs_target_modules: ClassVar[bool] = True  # False: the method ignores target_modules (full FT)
    # True: the backward pass computes the base weights' gradients too (full FT): ~6 instead of ~4 FLOPs per
    # parameter and token, for the GPU estimates
    trains_base_weights: ClassVar[bool] = False
    # the method's colour in every plot (a matplotlib colour); None: one derived from its name, also fixed
    plot_color: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        self._params: Mapping[str, Any] = MappingProxyType(self.resolve_params(params))
        self._given = frozenset(params)  # which hyper-parameters the experiment set (the others are defaults)
        self._modules_to_save: tuple[str, ...] = ()

    # -- hyper-parameters -----------------------------------------------------------------------------------
    @classmethod
    def resolve_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `params` over `defaults`, reject unknown keys, validate and fill derived values."""
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise ValueError(
                f"{cls.name}: unknown hyper-parameter(s) {unknown}; known: {sorted(cls.defaults)}"
            )
        return cls.check_params({**cls.defaults, **params})

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Validate resolved hyper-parameters (ValueError on a wrong type or impossible value); may fill
        derived defaults (lora_alpha=None -> 2r). Override and chain with super()."""
        return params

    @classmethod
    def has_rank(cls) -> bool:
        return "r" in cls.defaults

    @property
    def params(self) -> Mapping[str, Any]:
        """The resolved hyper-parameters (read-only), recorded in results."""
        return self._params

    @property
    def rank(self) -> int | None:
        return self._params.get("r")

    # -- building -------------------------------------------------------------------------------------------
    def wrap(
        self, model: nn.Module, *, target_modules: Sequence[str], modules_to_save: Sequence[str] = ()
    ) -> nn.Module:
        """Return the model to train. Checks the rank against every target layer before anything is built."""
        if self.rank is not None:
            self.fit_rank(target_layers(model, target_modules))
        self._modules_to_save = tuple(modules_to_save)
        return self._wrap(model, list(target_modules), list(modules_to_save))

    def fit_rank(self, layers: Sequence[tuple[str, nn.Linear]]) -> None:
        """Reject a rank no target layer can hold: r > min(out, in) only adds redundant parameters."""
        r = self.rank
        assert r is not None
        if (bad := first_too_narrow(layers, r)) is not None:
            name, layer, k = bad
            raise ValueError(
                f"{self.name}: impossible rank r={r} for target layer {name!r} "
                f"({layer.out_features} x {layer.in_features}): r must be <= min(out, in) = {k}"
            )

    def check_run(
        self, layers: Sequence[tuple[str, nn.Linear]], *, total_steps: int, micro_batches_per_step: int = 1
    ) -> None:
        """Reject hyper-parameters a run cannot honour, before any run starts (ValueError naming the problem).

        `layers` are the target layers (on the meta device: shapes only), `total_steps` the run's optimizer
        steps, `micro_batches_per_step` its gradient-accumulation micro-batches. Default: the rank check of
        `wrap`. A method whose hyper-parameters depend on the schedule (LoRA-Dash's t) extends it."""
        if self.rank is not None and layers:
            self.fit_rank(layers)

    def _replace_params(self, **changes: Any) -> None:
        """Record a hyper-parameter decided at wrap time (e.g. a capped rank) so results show what ran."""
        warnings.warn(f"{self.name}: {changes} set from the model at wrap time", stacklevel=3)
        self._params = MappingProxyType({**self._params, **changes})

    @abc.abstractmethod
    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module: ...

    # -- training-loop hooks --------------------------------------------------------------------------------
    def on_optimizer_step(self, model: nn.Module, global_step: int) -> None:
        """Called by the loop after every optimizer step with the number of steps done; no-op by default."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the method object itself keeps across optimizer steps (JSON-serialisable), saved with a run's
        checkpoint; its tensors live in the model and are saved with it. Empty by default."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()` when a run resumes from a checkpoint."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}")

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (every trainable parameter at `lr` by default). A method with
        parameters that need their own rate (LoRA-Dash's scalars) splits them here."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def diagnostics(
        self,
        model: nn.Module,
        *,
        lrs: Sequence[float] | None = None,
        best_step: int | None = None,
        forward: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Method-specific state worth recording in the result file (JSON-serialisable). The loop passes the
        base learning rate of every optimizer step (`lrs[i]` for step i + 1) and the step of the kept
        checkpoint, for diagnostics that depend on the schedule; `forward`, where given, runs the model (the
        kept checkpoint, in eval mode, no grad) on one fixed batch, for diagnostics measured on activations."""
        return {}

    @classmethod
    def summarize_diagnostics(cls, diagnostics: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """What the tables show of one record's diagnostics (a few numbers, averaged over seeds) and a note, if
        any; a method whose diagnostics changed over time reads its older records here."""
        return dict(diagnostics.get("summary") or {}), diagnostics.get("note")

    @classmethod
    def manipulation_measures(cls, diagnostics: Mapping[str, Any]) -> dict[str, float | None]:
        """How far the method's addition to its control moved in one run (shown beside a verdict's
        manipulation check; None where the record did not measure it). Nothing for most methods."""
        return {}

    # -- counting -------------------------------------------------------------------------------------------
    def counts(self, model: nn.Module) -> ParamCounts:
        """Exact counts from the wrapped model (see `ParamCounts`)."""
        trainable = head = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "modules_to_save" in name.split(".") or _is_under(name, self._modules_to_save):
                head += p.numel()
            else:
                trainable += p.numel()
        return ParamCounts(trainable=trainable, head=head, stored=self._stored(model, trainable, head))

    def _stored(self, model: nn.Module, trainable: int, head: int) -> int:
        return trainable

    @classmethod
    def layer_trainable(
        cls, out_features: int, in_features: int, rank: int, params: Mapping[str, Any]
    ) -> int:
        """Trainable parameters the method adds to one (out x in) target layer at `rank`."""
        raise NotImplementedError(f"{cls.name} has no per-layer count")

    @classmethod
    def _extra_stored(cls, layer_shapes: Sequence[Shape], rank: int, params: Mapping[str, Any]) -> int:
        """Stored numbers beyond the trainable ones (frozen adapter buffers); 0 by default."""
        return 0

    @classmethod
    def _analytic_params(cls, rank: int | None, params: Mapping[str, Any]) -> dict[str, Any]:
        if not cls.has_rank():
            return cls.resolve_params(params)
        if rank is None:
            raise ValueError(f"{cls.name} needs a rank")
        return cls.resolve_params({**params, "r": rank})  # `rank` wins over params["r"]

    @classmethod
    def analytic_trainable(
        cls, layer_shapes: Sequence[Shape], rank: int | None, total_params: int, **params: Any
    ) -> int:
        """`counts().trainable` computed from the (out, in) shapes of the target layers, without a model.

        `total_params` is the base model's parameter count outside modules_to_save (only full FT uses it).
        """
        p = cls._analytic_params(rank, params)
        return sum(cls.layer_trainable(o, i, p["r"], p) for o, i in layer_shapes)

    @classmethod
    def analytic_stored(
        cls, layer_shapes: Sequence[Shape], rank: int | None, total_params: int, **params: Any
    ) -> int:
        """`counts().stored` computed from the target shapes, without a model."""
        p = cls._analytic_params(rank, params)
        trainable = cls.analytic_trainable(layer_shapes, rank, total_params, **params)
        return trainable + cls._extra_stored(layer_shapes, p["r"], p)

    # -- saving ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def save_adapter(self, model: nn.Module, directory: str | os.PathLike[str]) -> None:
        """Write what reproduces the adapted model (with the base model) to `directory`."""

    @abc.abstractmethod
    def load_adapter(
        self, base_model: nn.Module, directory: str | os.PathLike[str], *, is_trainable: bool = False
    ) -> nn.Module:
        """Inverse of `save_adapter`: the adapted model rebuilt from a fresh `base_model` and `directory`."""


class AdapterMethod(Method):
    """A method that wraps the model in a `peft.PeftModel`: peft saves, loads and merges it."""

    def _stored(self, model: nn.Module, trainable: int, head: int) -> int:
        # Exactly what save_pretrained writes (trainable weights + persistent adapter buffers), minus the head,
        # which peft saves too.
        state = get_peft_model_state_dict(model)
        return sum(t.numel() for t in state.values()) - head

    def save_adapter(self, model: nn.Module, directory: str | os.PathLike[str]) -> None:
        assert isinstance(model, PeftModel), f"{self.name}.save_adapter expects the PeftModel from wrap()"
        model.save_pretrained(os.fspath(directory))

    def load_adapter(
        self, base_model: nn.Module, directory: str | os.PathLike[str], *, is_trainable: bool = False
    ) -> nn.Module:
        return PeftModel.from_pretrained(base_model, os.fspath(directory), is_trainable=is_trainable)


# ----------------------------------------------------------------------------------------------------------------
# Registry


class UnknownMethodError(UserError, KeyError, ValueError):
    """An unknown method name (a KeyError for lookups, a ValueError for config validation)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def _discover_methods() -> None:
    """Import every module of `baselines/`: each `@register`s its method (no list of them to keep)."""
    import_modules("baselines", Path(__file__).parent, skip=NOT_METHODS)


NOT_METHODS = ("base", "budget", "errors", "registry")  # the modules of baselines/ that define no method
METHODS: Registry[type[Method]] = Registry(
    "method", Method, unknown=UnknownMethodError, discover=_discover_methods
)
register = METHODS.register


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def available_methods() -> list[str]:
    return METHODS.names()


def build_method(name: str, **params: Any) -> Method:
    return get_method(name)(**params)
