"""The planted teacher: the base model plus a known rank-k update in every targeted matrix (issue 16).

For each targeted weight W = U diag(sigma) V^T (out x in, n = min(out, in) singular directions, in descending
order) the teacher adds

    dW* = c * U_S diag(sigma_S) V_S^T          (settings "band" and "anywhere")
    dW* = c * P diag(sigma_S) Q^T              (setting "random_dirs", the control)

- "band": S = k positions drawn without replacement from ranks [band[0] n, band[1] n) of the spectrum, the
  "small but not the smallest" singular values where the paper finds its task-specific directions;
- "anywhere": S = k positions drawn uniformly from all n;
- "random_dirs": P (out x k), Q (in x k) random orthonormal columns, not singular directions of W, with the
  magnitudes of the "band" setting's positions. Nothing LoRA-Dash can amplify lies along them.

In the first two settings every planted direction has the same change rate |u_i^T dW* v_i| / sigma_i = c: the
teacher scales k of W's own directions by (1 + c). One c for the whole model is calibrated (a few secant steps
on log c) so that the teacher moves the unit-norm mean-pooled sentence embedding of the calibration sentences
by a mean cosine distance of `target_change`; the value reached is measured and recorded.
Each matrix's draws come from a generator seeded by the teacher seed and the matrix's name, so a teacher is a
function of (base model, setting, k, band, seed, target) alone: every run and every method sees the same one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.base import target_layers
from loradash.selection import weight_svd

SETTINGS = ("band", "anywhere", "random_dirs")


@dataclass(frozen=True)
class PlantedMatrix:
    """One targeted matrix's planted update: dW* = scale * left diag(magnitudes) right^T."""

    name: str
    # indices into W's SVD (descending sigma); for random_dirs, the positions the magnitudes came from
    positions: tuple[int, ...]
    along_singular: bool  # False for random_dirs: `positions` then name no planted direction
    left: torch.Tensor  # [out, k] orthonormal
    right: torch.Tensor  # [in, k] orthonormal
    magnitudes: torch.Tensor  # [k] sigma at `positions`
    spectrum_size: int  # n = min(out, in)

    def delta(self, scale: float) -> torch.Tensor:
        return (self.left * (scale * self.magnitudes)) @ self.right.T  # [out, in]


def _orthonormal(rows: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    q, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    return torch.from_numpy(q.astype(np.float32))  # [rows, k]


def plan_matrices(
    model: nn.Module, target_modules: Sequence[str], *, setting: str, k: int, band: Sequence[float], seed: int
) -> list[PlantedMatrix]:
    """The planted directions of every target matrix of `model` (unscaled)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown planted setting {setting!r} (known: {', '.join(SETTINGS)})")
    out = []
    for name, layer in target_layers(model, target_modules):
        U, S, Vh = weight_svd(layer.weight)  # U [out, n], S [n], Vh [n, in]
        n = S.shape[0]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if setting == "anywhere":
            pos = rng.choice(n, size=k, replace=False)
        else:
            lo, hi = int(band[0] * n), int(band[1] * n)
            pos = lo + rng.choice(hi - lo, size=k, replace=False)
        pos = np.sort(pos)
        idx = torch.from_numpy(pos)
        if setting == "random_dirs":
            left, right = _orthonormal(U.shape[0], k, rng), _orthonormal(Vh.shape[1], k, rng)
        else:
            left, right = U[:, idx].contiguous(), Vh[idx, :].T.contiguous()
        out.append(PlantedMatrix(name=name, positions=tuple(int(p) for p in pos),
                                 along_singular=setting != "random_dirs", left=left, right=right,
                                 magnitudes=S[idx].clone(), spectrum_size=n))  # fmt: skip
    return out


@torch.no_grad()
def apply_planted(model: nn.Module, planted: Sequence[PlantedMatrix], scale: float,
                  originals: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Set every planted matrix of `model` to W + dW*(scale) (W kept in `originals`)."""
    modules = dict(model.named_modules())
    for p in planted:
        w = modules[p.name].weight
        if p.name not in originals:
            originals[p.name] = w.detach().clone()
        w.copy_(originals[p.name] + p.delta(scale).to(w.dtype))


def calibrate(
    model: nn.Module,
    planted: Sequence[PlantedMatrix],
    embed: Callable[[nn.Module], torch.Tensor],
    base_embeddings: torch.Tensor,
    *,
    target_change: float,
    iterations: int = 6,
) -> dict[str, Any]:
    """Find c with mean(1 - cos(teacher, base)) = target_change on the calibration sentences (secant steps on
    log c, starting from c = 1); leaves `model` as the teacher at that c. Returns c and the change reached."""
    originals: dict[str, torch.Tensor] = {}
    scale, history = 1.0, []
    for _ in range(iterations):
        apply_planted(model, planted, scale, originals)
        change = float((1 - (embed(model) * base_embeddings).sum(-1)).mean())
        history.append((scale, change))
        if abs(change - target_change) <= 0.01 * target_change:
            break
        if len(history) == 1 or history[-1][1] == history[-2][1]:
            ratio = (target_change / max(change, 1e-12)) ** 0.5  # 1 - cos grows like c^2 for small c
        else:
            (c0, m0), (c1, m1) = history[-2], history[-1]
            slope = (np.log(m1) - np.log(m0)) / (np.log(c1) - np.log(c0))
            ratio = float(np.exp((np.log(target_change) - np.log(m1)) / max(slope, 0.25)))
        scale *= float(np.clip(ratio, 0.1, 10.0))
    else:
        apply_planted(model, planted, scale, originals)
        history.append((scale, float((1 - (embed(model) * base_embeddings).sum(-1)).mean())))
    scale, change = history[-1]
    return {"scale": scale, "cosine_distance": change, "steps": [list(h) for h in history]}


def recovery(planted: Sequence[PlantedMatrix], chosen: dict[str, Sequence[int]]) -> dict[str, float] | None:
    """Per matrix, the fraction of the planted positions S among the directions a LoRA-Dash layer chose
    (|chosen & S| / |S|); None when the planted directions are not singular directions of W (random_dirs)
    or the model has no LoRA-Dash layer. `chosen` maps module names (any prefix) to chosen indices."""
    if not chosen or not all(p.along_singular for p in planted):
        return None
    out = {}
    for p in planted:
        hits = [v for name, v in chosen.items() if name == p.name or name.endswith("." + p.name)]
        if len(hits) != 1:
            raise ValueError(f"planted matrix {p.name}: {len(hits)} LoRA-Dash layers match its name")
        out[p.name] = len(set(hits[0]) & set(p.positions)) / len(p.positions)
    return out
