"""Matched parameter budgets: which rank of method B trains about k times the parameters of method A.

The paper's claims compare methods at equal (or stated multiples of) trainable parameters; computing the ranks
from the target shapes, with the same analytic counts the tests pin to the real models, keeps that comparison
honest without building a model per candidate rank.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .base import Shape, _is_under, get_method, target_layers

__all__ = ["base_param_count", "matched_ranks", "target_layer_shapes"]


def target_layer_shapes(model: nn.Module, target_modules: Sequence[str]) -> list[Shape]:
    """(out, in) of every nn.Linear that peft's matching selects for `target_modules`, in model order."""
    return [(m.out_features, m.in_features) for _, m in target_layers(model, target_modules)]


def base_param_count(model: nn.Module, modules_to_save: Sequence[str] = ()) -> int:
    """Parameters of the unwrapped model outside modules_to_save: the `total_params` of `analytic_trainable`."""
    return sum(p.numel() for n, p in model.named_parameters() if not _is_under(n, modules_to_save))


def matched_ranks(
    method: str,
    rank: int | None,
    layer_shapes: Sequence[Shape],
    total_params: int,
    *,
    others: Sequence[str],
    factors: Sequence[float] = (1, 8, 16),
    max_rank: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[float, dict[str, Any]]]:
    """For each method in `others` and each factor k: the rank whose trainable count is closest to k times the
    count of `method` at `rank` (ties go to the smaller rank).

    Returns {other: {k: {"rank", "trainable", "target", "ratio", "capped"}}}, ratio = trainable / reference count
    (the achieved factor), capped = the target needs a rank above max_rank. Ranks are searched in 1..max_rank (default: the largest rank every target layer holds);
    a method without a rank (full) reports its only count. `params` gives per-method hyper-parameters
    (e.g. {"loradash": {"num_directions": 8}}); defaults otherwise.
    """
    params = params or {}
    if not layer_shapes:
        raise ValueError("matched_ranks needs at least one target layer shape")
    reference = get_method(method).analytic_trainable(
        layer_shapes, rank, total_params, **params.get(method, {})
    )
    ceiling = max_rank if max_rank is not None else min(min(shape) for shape in layer_shapes)
    if ceiling < 1:
        raise ValueError(f"max_rank must be >= 1, got {ceiling}")

    result: dict[str, dict[float, dict[str, Any]]] = {}
    for other in others:
        cls = get_method(other)
        kw = params.get(other, {})

        def count(r: int | None, cls: Any = cls, kw: Mapping[str, Any] = kw) -> int:
            return cls.analytic_trainable(layer_shapes, r, total_params, **kw)

        result[other] = {}
        for k in factors:
            target = k * reference
            if not cls.has_rank():
                best: int | None = None
            else:
                # Trainable counts grow strictly with r for every ranked method: bisect, then compare neighbours.
                ranks = range(1, ceiling + 1)
                i = bisect.bisect_left(ranks, target, key=count)
                candidates = [ranks[j] for j in (i - 1, i) if 0 <= j < len(ranks)]
                best = min(candidates, key=lambda r: (abs(count(r) - target), r))
            n = count(best)
            capped = best == ceiling and n < target
            result[other][float(k)] = {
                "rank": best,
                "trainable": n,
                "target": target,
                "ratio": n / reference,
                "capped": capped,
            }
    return result
