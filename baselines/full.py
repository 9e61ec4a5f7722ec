"""Full fine-tuning: no adapter, every weight trains (embeddings included). The reference point every
parameter-efficient method is compared against."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn
from transformers import PreTrainedModel

from .base import Method, Shape, register


@register
class FullFineTuning(Method):
    """`target_modules` are ignored (every weight trains); `modules_to_save` only says which weights are the
    head, so that `counts().trainable` = all parameters minus the head, like the adapters' counts."""

    name = "full"
    plot_color = "#3b3b3b"  # near-black in every plot
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    trains_base_weights: ClassVar[bool] = True
    supports_merge = False  # nothing to merge
    needs_target_modules = False

    def _wrap(self, model: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        return model.requires_grad_(True)

    @classmethod
    def analytic_trainable(
        cls, layer_shapes: Sequence[Shape], rank: int | None, total_params: int, **params: Any
    ) -> int:
        cls.resolve_params(params)  # rejects unknown keys like every method
        return total_params

    @classmethod
    def analytic_stored(
        cls, layer_shapes: Sequence[Shape], rank: int | None, total_params: int, **params: Any
    ) -> int:
        return cls.analytic_trainable(layer_shapes, rank, total_params, **params)

    def save_adapter(self, model: nn.Module, directory: str | os.PathLike[str]) -> None:
        save = getattr(model, "save_pretrained", None)
        if save is None:
            raise TypeError(f"full fine-tuning saves with save_pretrained; {type(model).__name__} has none")
        save(os.fspath(directory))

    def load_adapter(
        self, base_model: nn.Module, directory: str | os.PathLike[str], *, is_trainable: bool = False
    ) -> nn.Module:
        # The folder is the whole model: base_model only tells which class reads it.
        # safetensors only; hub kernels off (transformers >= 5.25 turns them on when `kernels` is installed)
        kwargs: dict = {"use_safetensors": True}
        if isinstance(base_model, PreTrainedModel):
            kwargs["use_kernels"] = False
        model = type(base_model).from_pretrained(os.fspath(directory), **kwargs)  # type: ignore[attr-defined]
        return model.requires_grad_(is_trainable)
