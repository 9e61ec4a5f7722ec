"""Task-specific direction (TSD) selection, the core of LoRA-Dash's launch (paper Sec. 4, Eq. 6-7).

For a frozen weight ``W = U diag(sigma) V^T`` and an update ``dW``, the change rate of the i-th singular
direction is ``delta_i = |u_i^T dW v_i| / (sigma_i + eps)``; the task-specific directions are the ``s``
directions with the largest rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LowRankUpdate",
    "TaskSpecificDirections",
    "select_task_specific_directions",
    "change_rates",
    "weight_svd",
]

# (U [out, k], S [k], Vh [k, in]) of a weight, fp32, k = min(out, in)
SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LowRankUpdate:
    """An update ``dW = scaling * B @ A`` kept in factored form (B: out x r, A: r x in).

    Passing the factors lets the selection compute ``u_i^T dW v_i`` as the row-wise dot product of
    ``U^T B`` and ``V^T A^T`` without ever forming the out x in matrix.
    """

    B: torch.Tensor
    A: torch.Tensor
    scaling: float = 1.0

    def __post_init__(self) -> None:
        if self.B.ndim != 2 or self.A.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"LowRankUpdate needs B (out x r) and A (r x in); got B {tuple(self.B.shape)}, A {tuple(self.A.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])


@dataclass(frozen=True)
class TaskSpecificDirections:
    """Result of :func:`select_task_specific_directions`.

    Attributes:
        indices: LongTensor [s], indices into the singular triplets of ``weight`` (descending singular
            values), ordered by descending change rate; ties keep the lower index first.
        change_rate: FloatTensor [min(out, in)], the rate of every singular direction, in SVD order.
        U: [out, s], the left singular vectors of the chosen directions (fp32).
        Vh: [s, in], the right singular vectors of the chosen directions, transposed (fp32).
        singular_values: [min(out, in)], sigma of ``weight`` (fp32).
    """

    indices: torch.Tensor
    change_rate: torch.Tensor
    U: torch.Tensor
    Vh: torch.Tensor
    singular_values: torch.Tensor


def change_rates(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    delta_weight: torch.Tensor | LowRankUpdate,
    eps: float,
) -> torch.Tensor:
    """``|u_i^T dW v_i| / (sigma_i + eps)`` for every i (paper Eq. 6), in fp32.

    Shapes: U [out, k], S [k], Vh [k, in], dW [out, in] or factored; returns [k].
    """
    if isinstance(delta_weight, LowRankUpdate):
        B = delta_weight.B.to(torch.float32)
        A = delta_weight.A.to(torch.float32)
        # u_i^T (B A) v_i = <(U^T B)_i, (Vh A^T)_i>: two k x r products instead of an out x in matrix.
        coord = (U.T @ B).mul_(Vh @ A.T).sum(dim=1) * float(delta_weight.scaling)  # [k]
    else:
        dW = delta_weight.to(torch.float32)
        coord = (U.T @ dW).mul_(Vh).sum(dim=1)  # diag(U^T dW V), [k]
    rate = coord.abs() / (S + eps)
    # eps = 0 reproduces the authors' code; a zero singular value then gives 0/0 = NaN (no change along a
    # null direction), which we rank last instead of letting it poison the sort.
    return torch.nan_to_num(rate, nan=0.0)


def weight_svd(weight: torch.Tensor) -> SVD:
    """The thin SVD ``W = U diag(S) Vh`` of ``weight`` in fp32 (whatever its dtype), without autocast or grad.

    Shapes: weight [out, in] -> U [out, k], S [k] (descending), Vh [k, in], k = min(out, in), on weight's device.
    This is the decomposition the selection uses; :class:`loradash.SVDCache` stores exactly its output.
    """
    with torch.no_grad(), torch.autocast(device_type=weight.device.type, enabled=False):
        W = weight.detach().to(torch.float32)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U, S, Vh


def select_task_specific_directions(
    weight: torch.Tensor,
    delta_weight: torch.Tensor | LowRankUpdate,
    num_directions: int,
    eps: float = 1e-8,
    *,
    svd: SVD | None = None,
    rule: str = "change_rate",
    generator: torch.Generator | None = None,
) -> TaskSpecificDirections:
    """Pick the ``num_directions`` singular directions of ``weight`` that ``delta_weight`` changes most.

    Args:
        weight: the frozen pretrained weight W, [out, in], any float dtype (the SVD is done in fp32).
        delta_weight: the update dW, [out, in], or a :class:`LowRankUpdate` holding its factors.
        num_directions: s, how many directions to keep (1 <= s <= min(out, in)).
        eps: added to sigma_i in the denominator of the change rate (the paper's epsilon; the authors' code has
            none). Must be >= 0.
        svd: ``weight_svd(weight)`` computed earlier (e.g. read from a :class:`loradash.SVDCache`), fp32, on
            ``weight``'s device; None computes it here. Passing the same decomposition gives bit-identical results.
        rule: "change_rate" (the paper), or a control that ignores ``delta_weight`` for the choice (the change
            rates are still returned): "random" (s distinct indices drawn uniformly with ``generator``, on the
            CPU) or "top_sigma" (indices 0..s-1, the largest singular values).
        generator: the CPU generator of the "random" rule (required by it).

    Returns:
        A :class:`TaskSpecificDirections`. U and Vh are fp32 on ``weight``'s device.
    """
    if weight.ndim != 2:
        raise ValueError(f"weight must be a matrix (out x in), got shape {tuple(weight.shape)}")
    if tuple(delta_weight.shape) != tuple(weight.shape):
        raise ValueError(
            f"delta_weight has shape {tuple(delta_weight.shape)} but weight has shape {tuple(weight.shape)}"
        )
    k = min(weight.shape)
    if not 1 <= num_directions <= k:
        raise ValueError(f"num_directions must be in [1, min(out, in) = {k}], got {num_directions}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")

    if svd is None:
        svd = weight_svd(weight)
    U, S, Vh = svd  # U [out, k], S [k], Vh [k, in]
    out_f, in_f = weight.shape
    if U.shape != (out_f, k) or S.shape != (k,) or Vh.shape != (k, in_f):
        raise ValueError(
            f"svd of a {out_f} x {in_f} weight must be U {(out_f, k)}, S {(k,)}, Vh {(k, in_f)}; "
            f"got U {tuple(U.shape)}, S {tuple(S.shape)}, Vh {tuple(Vh.shape)}"
        )
    if any(t.dtype != torch.float32 for t in svd):
        raise ValueError(f"svd must be fp32, got {[t.dtype for t in svd]}")
    with torch.no_grad(), torch.autocast(device_type=weight.device.type, enabled=False):
        rate = change_rates(U, S, Vh, delta_weight, eps)
        # Stable sort: equal rates (e.g. dW = 0 at t = 0) resolve to the lower index, i.e. the larger sigma,
        # so the choice is deterministic across runs and ranks.
        if rule == "change_rate":
            idx = torch.sort(rate, descending=True, stable=True).indices[:num_directions]
        elif rule == "top_sigma":
            idx = torch.arange(num_directions, device=rate.device)
        elif rule == "random":
            if generator is None:
                raise ValueError("the 'random' rule needs a generator")
            idx = torch.randperm(k, generator=generator)[:num_directions].to(rate.device)
        else:
            raise ValueError(f"unknown selection rule {rule!r} (known: change_rate, random, top_sigma)")
        return TaskSpecificDirections(
            indices=idx,
            change_rate=rate,
            U=U[:, idx].contiguous(),
            Vh=Vh[idx, :].contiguous(),
            singular_values=S,
        )
