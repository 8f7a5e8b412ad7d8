"""Entanglement (000 eq. 11, App. C.3): E_Var on hand-made embeddings, E_Wp on point clouds."""

from itertools import pairwise

import numpy as np
import pytest

from unlearning.evaluation.metrics import entanglement as ent


def test_e_var_equals_eq_11_on_hand_made_embeddings():
    retain = np.array([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0), each point at distance 1
    forget = np.array([[0.0, 2.0], [0.0, 4.0]])  # mean (0, 3), each point at distance 1
    # intra = 1 + 1; mu = (0.5, 1.5); inter = ½ (2.5 + 2.5) = 2.5
    assert ent.e_var(retain, forget) == pytest.approx(2.0 / 2.5)


def test_e_var_uses_each_sets_own_mean_for_unequal_sizes():
    retain = np.array([[0.0], [2.0], [4.0]])  # mean 2, variance 8/3
    forget = np.array([[10.0]])  # mean 10, variance 0
    mu = 16.0 / 4
    expected = (8.0 / 3 + 0.0) / (0.5 * ((2.0 - mu) ** 2 + (10.0 - mu) ** 2))
    assert ent.e_var(retain, forget) == pytest.approx(expected)


def test_classwise_is_the_forget_weighted_average_over_shared_classes():
    rng = np.random.default_rng(0)
    retain, forget = rng.normal(size=(40, 3)), rng.normal(size=(12, 3)) + 0.5
    y_retain = np.repeat([0, 1, 2, 3], 10)
    y_forget = np.array([0] * 3 + [1] * 9)  # classes 2, 3 have no forget samples
    value, _ = ent.classwise(ent.e_var, retain, y_retain, forget, y_forget)
    per_class = [ent.e_var(retain[y_retain == c], forget[y_forget == c]) for c in (0, 1)]
    assert value == pytest.approx((3 * per_class[0] + 9 * per_class[1]) / 12)


def test_classwise_without_a_shared_class_is_undefined():
    retain, forget = np.ones((5, 2)), np.zeros((3, 2))
    with pytest.raises(ent.EntanglementUndefined, match="no class has samples in both"):
        ent.classwise(ent.e_var, retain, np.full(5, 1), forget, np.zeros(3, dtype=int))


def test_rescale_maps_the_value_range_to_the_unit_interval():
    out = ent.rescale({"a": 2.0, "b": 4.0, "c": 3.0, "d": float("nan")})
    assert out["a"] == 0.0 and out["b"] == 1.0 and out["c"] == 0.5 and np.isnan(out["d"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_e_wp_of_a_set_with_itself_is_one_and_drops_as_the_sets_separate():
    rng = np.random.default_rng(0)
    cloud = _unit(np.abs(rng.normal(size=(100, 8))))
    score, transport = ent.e_wp(cloud, cloud.copy(), 100, np.random.default_rng(1))
    assert transport.converged and score == pytest.approx(1.0, abs=1e-6)
    shift = np.zeros(8)
    shift[0] = 1.0
    scores = [
        ent.e_wp(cloud, _unit(cloud + s * shift), 100, np.random.default_rng(1))[0]
        for s in (0.0, 0.5, 1.0, 2.0, 4.0)
    ]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in pairwise(scores))
    assert scores[-1] < 0.6


def test_e_wp_samples_equal_sizes_and_matches_the_exact_distance():
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    # with max_samples=1: one point each, W_2 = their distance
    score, _ = ent.e_wp(a[:1], b[:1], 1, np.random.default_rng(0))
    assert score == pytest.approx(0.0)
    # the optimal plan of two equal clouds shifted by (0, 1) moves each point by 1
    assert ent.wasserstein(a, b[:2]).distance == pytest.approx(1.0)


def test_non_convergence_of_the_exact_solver_is_reported():
    rng = np.random.default_rng(0)
    a, b = rng.random((300, 4)), rng.random((300, 4))
    with pytest.warns(UserWarning, match="numItermax"):
        transport = ent.wasserstein(a, b, num_itermax=10)
    assert not transport.converged and "numItermax" in transport.message
    assert ent.wasserstein(a, b).converged
