"""The ridge logistic/exponential-loss solver against 002 Lemma 5's closed forms."""

import math

import numpy as np
import pytest

from unlearning.theory.logistic_da import closed_form_1d, solve_three, stationary_point


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.6])
def test_da_solver_matches_the_lambert_w_closed_form_in_1d(alpha):
    r_j, n_r, other_forget, lam = 40.0, 100.0, 60.0, 0.1
    f_j = alpha * r_j
    n_f = f_j + other_forget
    one = np.ones((1, 1))
    sol = solve_three(one, np.array([r_j]), one, np.array([f_j]), lam, n_retain=n_r, n_forget=n_f)
    closed = closed_form_1d(r_j, alpha, n_r, n_f, lam)
    for key in ("D", "R", "DA"):
        assert sol[key].converged
        assert sol[key].w[0] == pytest.approx(closed[key], abs=1e-9)
    assert sol["D"].local_min and sol["R"].local_min


def test_da_without_a_stationary_point_is_reported_as_such():
    # ascent weight dominates: 1 − α|R|/|F| argument below −1/e → no stationary point
    one = np.ones((1, 1))
    sol = solve_three(one, np.array([10.0]), one, np.array([10.0]), 0.1, n_retain=100.0)
    assert math.isnan(closed_form_1d(10.0, 1.0, 100.0, 10.0, 0.1)["DA"])
    assert not sol["DA"].converged


def test_logistic_loss_solution_zeroes_the_gradient():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 3))
    w = stationary_point(z, np.full(30, 1 / 30), lam=0.1, loss="logistic").w
    grad = z.T @ (-1 / (1 + np.exp(z @ w))) / 30 + 0.1 * w
    assert np.linalg.norm(grad) < 1e-8
