"""The linear unlearning recursion (003 eq. 3-4) against Thm 3.6/3.7 and its exact moment."""

import math

import pytest
import torch

from unlearning.theory.coherence import (
    convergence_threshold,
    divergence_threshold,
    unlearning_coherence,
)
from unlearning.theory.recursion import second_moment, simulate
from unlearning.theory.stability_frontier import precision_recall, q_construction

N, ALPHA, ETA = 50, 0.1, 0.5


def _cell(q: int, b: float) -> tuple[torch.Tensor, float, float, float]:
    f = q_construction(q, N)
    coh = unlearning_coherence(f, f, eta=ETA, alpha=ALPHA, batch_size=b, max_pairs=N * N)
    kw = dict(eta=ETA, alpha=ALPHA, batch_size=b, n_retain=N, n_forget=N)
    return (
        f,
        coh.lambda_max_d,
        divergence_threshold(coh.sigma, **kw),
        convergence_threshold(coh.sigma, **kw, reading="proof"),
    )


def test_recursion_diverges_well_beyond_the_theorem_3_6_threshold():
    f, lam, div, _ = _cell(q=1, b=1)
    assert lam > 3 * div  # λ_max(D) = 2 vs threshold ≈ 0.64
    growth = simulate(f, f, eta=ETA, alpha=ALPHA, batch_size=1, steps=300, repeats=5)
    assert (growth > math.log(1000)).all()
    _, rate = second_moment(f, f, eta=ETA, alpha=ALPHA, batch_size=1, steps=50)
    assert rate > 0


def test_recursion_converges_well_below_the_theorem_3_7_threshold():
    f, lam, _, conv = _cell(q=50, b=30)
    assert lam < 0.55 * conv  # λ_max(D) = 2 vs threshold ≈ 3.95
    growth = simulate(f, f, eta=ETA, alpha=ALPHA, batch_size=30, steps=300, repeats=5)
    assert (growth < -10).all()
    _, rate = second_moment(f, f, eta=ETA, alpha=ALPHA, batch_size=30, steps=50)
    assert rate < 0


def test_second_moment_is_exact_for_one_shared_direction():
    # Q = n: every H_i = 2 e1 e1ᵀ (d = 1); J = 1 − a·2·X_r + b·2·X_f, X ~ Binomial(n, B/n)
    b_size, steps = 5.0, 40
    f = q_construction(N, N)
    p = b_size / N
    a, b = ETA * (1 - ALPHA) / b_size, ETA * ALPHA / b_size
    mean = 1 - a * 2 * N * p + b * 2 * N * p
    var = 4 * (a**2 + b**2) * N * p * (1 - p)
    log_ms, rate = second_moment(f, f, eta=ETA, alpha=ALPHA, batch_size=b_size, steps=steps)
    assert log_ms == pytest.approx(steps * math.log(mean**2 + var), rel=1e-9)
    assert rate == pytest.approx(math.log(mean**2 + var), rel=1e-9)
    # Monte Carlo agrees in the typical (log) growth's sign
    growth = simulate(f, f, eta=ETA, alpha=ALPHA, batch_size=b_size, steps=steps, repeats=200)
    assert growth.mean() < 0


def test_precision_and_recall_count_claims_against_outcomes():
    claimed = torch.tensor([True, True, False, False]).numpy()
    actual = torch.tensor([True, False, True, False]).numpy()
    assert precision_recall(claimed, actual) == (0.5, 0.5)
    p, r = precision_recall(claimed & False, actual)
    assert math.isnan(p) and r == 0.0
