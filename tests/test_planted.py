"""The planted family's known answers: the teacher's update lies where the rule says, its change rates are exactly
c on the planted directions, the change-rate selection of the true update recovers them, the calibration hits its
target, and the score is the ratio of distances it claims to be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.planted import teacher as T
from experiments.planted.family import PlantedRun
from loradash.selection import change_rates, select_task_specific_directions, weight_svd
from tests.helpers import tiny_bert

TARGETS = ["value", "intermediate.dense", "output.dense"]


def matrices(setting, *, k=3, band=(0.5, 0.9), seed=0):
    model = tiny_bert().bert
    return model, T.plan_matrices(model, TARGETS, setting=setting, k=k, band=band, seed=seed)


@pytest.mark.parametrize("setting", ["band", "anywhere"])
def test_planted_update_is_c_times_sigma_along_the_chosen_singular_directions(setting):
    model, planted = matrices(setting)
    modules = dict(model.named_modules())
    assert len(planted) == 2 * 4  # 2 layers x (value, attention output, ffn in, ffn out)
    for p in planted:
        W = modules[p.name].weight
        U, S, Vh = weight_svd(W)
        n = S.shape[0]
        if setting == "band":
            assert all(int(0.5 * n) <= i < int(0.9 * n) for i in p.positions)
        rate = change_rates(U, S, Vh, p.delta(0.7), eps=0.0)
        on = torch.tensor(p.positions)
        off = torch.ones(n, dtype=torch.bool)
        off[on] = False
        torch.testing.assert_close(rate[on], torch.full((3,), 0.7), atol=1e-4, rtol=1e-4)
        assert rate[off].abs().max() < 1e-4
        # the selection rule, handed the true update, finds exactly the planted positions
        tsd = select_task_specific_directions(W, p.delta(0.7), 3)
        assert sorted(tsd.indices.tolist()) == list(p.positions)


def test_random_directions_control_is_not_along_singular_directions():
    model, planted = matrices("random_dirs")
    modules = dict(model.named_modules())
    for p in planted:
        torch.testing.assert_close(p.left.T @ p.left, torch.eye(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(p.right.T @ p.right, torch.eye(3), atol=1e-5, rtol=0)
        U, S, Vh = weight_svd(modules[p.name].weight)
        # energy of the update on the diagonal of W's singular basis: a small share of its norm
        coord = (U.T @ p.delta(1.0) @ Vh.T).diagonal()
        assert coord.pow(2).sum() < 0.5 * p.delta(1.0).pow(2).sum()
    assert T.recovery(planted, {p.name: list(p.positions) for p in planted}) is None


def test_teachers_are_a_function_of_their_seed():
    _, a = matrices("band", seed=0)
    _, b = matrices("band", seed=0)
    _, c = matrices("band", seed=1)
    assert [p.positions for p in a] == [p.positions for p in b] != [p.positions for p in c]
    with pytest.raises(ValueError, match="unknown planted setting"):
        matrices("diagonal")


def test_recovery_counts_planted_positions_among_chosen_ones():
    _, planted = matrices("band")
    chosen = {f"base_model.model.{p.name}": list(p.positions) for p in planted}
    assert set(T.recovery(planted, chosen).values()) == {1.0}
    first = planted[0]
    chosen[f"base_model.model.{first.name}"] = [first.positions[0], 0, 1]  # one of three found
    assert T.recovery(planted, chosen)[first.name] == pytest.approx(1 / 3)
    assert T.recovery(planted, {}) is None
    with pytest.raises(ValueError, match="match"):
        T.recovery(planted, {"x": [0]})


def test_calibration_reaches_the_target_change():
    model = tiny_bert().bert.eval()
    planted = T.plan_matrices(model, TARGETS, setting="band", k=3, band=(0.5, 0.9), seed=0)
    ids = torch.randint(0, 64, (16, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def embed(m):
        with torch.no_grad():
            return torch.nn.functional.normalize(m(**batch).last_hidden_state.mean(1), dim=-1)

    base = embed(model)
    cal = T.calibrate(model, planted, embed, base, target_change=0.05)
    assert cal["cosine_distance"] == pytest.approx(0.05, rel=0.02)
    assert float((1 - (embed(model) * base).sum(-1)).mean()) == pytest.approx(
        cal["cosine_distance"], rel=1e-5
    )


def test_matched_is_one_minus_the_ratio_of_distances_and_vectorised_alike():
    rng = np.random.default_rng(0)
    items = {
        "ids": np.arange(30),
        "distance": rng.random(30) * 0.2,
        "base_distance": 0.1 + rng.random(30) * 0.2,
    }
    want = 1 - items["distance"].sum() / items["base_distance"].sum()
    assert PlantedRun.task_score("planted", items) == pytest.approx(want)
    idx = rng.integers(0, 30, size=(5, 30))
    loop = [PlantedRun.task_score("planted", {k: v[row] for k, v in items.items()}) for row in idx]
    np.testing.assert_allclose(PlantedRun.task_scores("planted", items, idx), loop)
    # the base model itself scores 0, the teacher 1
    assert PlantedRun.task_score("planted", {**items, "distance": items["base_distance"]}) == pytest.approx(
        0.0
    )
    assert PlantedRun.task_score("planted", {**items, "distance": 0 * items["distance"]}) == 1.0
