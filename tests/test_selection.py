"""select_task_specific_directions against a direct, literal implementation of the paper's formula."""

from __future__ import annotations

import pytest
import torch

from loradash import LowRankUpdate, select_task_specific_directions
from loradash.selection import weight_svd


def literal_rates(W: torch.Tensor, dW: torch.Tensor, eps: float) -> torch.Tensor:
    """delta_i = |u_i^T dW v_i| / (sigma_i + eps), one direction at a time (paper Eq. 6)."""
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    rates = []
    for i in range(S.shape[0]):
        u, v = U[:, i], Vh[i, :]
        rates.append(abs(float(u @ dW.double() @ v)) / (float(S[i]) + eps))
    return torch.tensor(rates, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(24, 16), (16, 24), (20, 20)])
@pytest.mark.parametrize("factored", [False, True])
def test_matches_literal_formula(shape, factored):
    g = torch.Generator().manual_seed(sum(shape))
    W = torch.randn(*shape, generator=g)
    B, A = torch.randn(shape[0], 3, generator=g), torch.randn(3, shape[1], generator=g)
    dW = 0.5 * B @ A
    delta = LowRankUpdate(B=B, A=A, scaling=0.5) if factored else dW
    tsd = select_task_specific_directions(W, delta, 5, eps=1e-8)
    expected = literal_rates(W, dW, 1e-8)
    torch.testing.assert_close(tsd.change_rate.double(), expected, rtol=1e-4, atol=1e-6)
    assert tsd.indices.tolist() == torch.argsort(expected, descending=True)[:5].tolist()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    # chosen vectors are the singular vectors of W at those indices (up to the joint sign of each pair)
    rebuilt = (tsd.U * S[tsd.indices]) @ tsd.Vh
    torch.testing.assert_close(
        rebuilt, (U[:, tsd.indices] * S[tsd.indices]) @ Vh[tsd.indices], atol=1e-5, rtol=1e-4
    )
    assert tsd.U.shape == (shape[0], 5) and tsd.Vh.shape == (5, shape[1])
    assert tsd.indices.dtype == torch.long and tsd.change_rate.shape == (min(shape),)


def test_structured_matrix_picks_the_boosted_direction():
    # W = diag(10, 5, 2, 1, 0.5, 0.1) in a random orthogonal basis; dW pushes direction 3 (sigma = 1) hardest
    # relative to its size, direction 0 hardest in absolute terms.
    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(8, 6, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    sigma = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    W = Q1 @ torch.diag(sigma) @ Q2.T
    coords = torch.tensor([3.0, 0.0, 0.1, 0.9, 0.0, 0.0])
    dW = Q1 @ torch.diag(coords) @ Q2.T
    tsd = select_task_specific_directions(W, dW, 2)
    assert tsd.indices.tolist() == [3, 0]  # 0.9/1 > 3/10 > 0.1/2
    torch.testing.assert_close(tsd.change_rate, coords / (sigma + 1e-8), atol=1e-5, rtol=1e-4)


def test_ties_resolve_to_lower_index():
    W = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    tsd = select_task_specific_directions(W, torch.zeros(4, 4), 3)  # dW = 0: every rate is 0 (t = 0 launch)
    assert tsd.indices.tolist() == [0, 1, 2]
    dW = torch.diag(torch.tensor([4.0, 0.0, 2.0, 1.0]))  # rates 1, 0, 1, 1
    assert select_task_specific_directions(W, dW, 3).indices.tolist() == [0, 2, 3]


def test_zero_singular_values_stay_finite():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(10, 2, generator=g) @ torch.randn(2, 6, generator=g)  # rank 2: four sigma are ~0
    dW = torch.randn(10, 6, generator=g)
    tsd = select_task_specific_directions(W, dW, 4, eps=1e-3)
    assert torch.isfinite(tsd.change_rate).all()
    exact = torch.diag(torch.tensor([1.0, 0.0, 0.0]))  # exactly zero sigma, no change there
    rates = select_task_specific_directions(
        exact, torch.diag(torch.tensor([1.0, 0.0, 0.0])), 3, eps=0.0
    ).change_rate
    assert not torch.isnan(rates).any()  # eps = 0 (authors' code): 0/0 ranks last instead of NaN
    assert rates[0] == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_uses_fp32_svd(dtype):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(12, 9, generator=g)
    dW = torch.randn(12, 9, generator=g) * 0.01
    ref = select_task_specific_directions(W, dW, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = select_task_specific_directions(W.to(dtype), dW.to(dtype), 3)
    assert half.U.dtype == torch.float32 and not half.U.requires_grad
    torch.testing.assert_close(half.change_rate, ref.change_rate, rtol=0.05, atol=1e-3)


def test_no_grad_even_when_inputs_require_it():
    W = torch.randn(6, 5, requires_grad=True)
    tsd = select_task_specific_directions(
        W, LowRankUpdate(torch.randn(6, 2, requires_grad=True), torch.randn(2, 5)), 2
    )
    assert not tsd.U.requires_grad and not tsd.change_rate.requires_grad


@pytest.mark.parametrize("s", [0, 6])
def test_impossible_number_of_directions(s):
    with pytest.raises(ValueError, match="num_directions"):
        select_task_specific_directions(torch.randn(5, 8), torch.zeros(5, 8), s)


def test_shape_mismatch_and_negative_eps():
    with pytest.raises(ValueError, match="shape"):
        select_task_specific_directions(torch.randn(5, 8), torch.zeros(8, 5), 2)
    with pytest.raises(ValueError, match="eps"):
        select_task_specific_directions(torch.randn(5, 8), torch.zeros(5, 8), 2, eps=-1.0)


def test_control_rules_ignore_the_update():
    torch.manual_seed(0)
    W, dW = torch.randn(12, 10), torch.randn(12, 10)
    top = select_task_specific_directions(W, dW, 4, rule="top_sigma")
    assert top.indices.tolist() == [0, 1, 2, 3]
    draw = lambda seed, d: select_task_specific_directions(  # noqa: E731
        W, d, 4, rule="random", generator=torch.Generator().manual_seed(seed)
    ).indices.tolist()
    assert draw(0, dW) == draw(0, torch.zeros_like(dW))  # the update plays no part in the choice
    assert len(set(draw(0, dW))) == 4 and all(0 <= i < 10 for i in draw(0, dW))
    assert draw(0, dW) != draw(1, dW)
    full = select_task_specific_directions(W, dW, 4)
    torch.testing.assert_close(top.change_rate, full.change_rate)  # rates are still reported
    U, _, Vh = weight_svd(W)
    torch.testing.assert_close(top.U, U[:, :4])
    torch.testing.assert_close(top.Vh, Vh[:4])


def test_random_rule_needs_a_generator_and_unknown_rules_fail():
    W = torch.randn(6, 5)
    with pytest.raises(ValueError, match="generator"):
        select_task_specific_directions(W, W, 2, rule="random")
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_task_specific_directions(W, W, 2, rule="largest")
