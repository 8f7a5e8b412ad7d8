"""Coherence measures (003 Def. 3.1-3.4) and per-sample Hessians (unlearning.theory.coherence)."""

import math

import pytest
import torch
from torch import nn

from unlearning.errors import ConfigError
from unlearning.theory.coherence import (
    convergence_threshold,
    divergence_threshold,
    factors_to_hessians,
    mix_hessian_lambda_max,
    noise_constants,
    per_sample_hessians,
    psd_factors,
    single_coherence,
    split_coherence,
    unlearning_coherence,
)
from unlearning.theory.stability_frontier import q_construction


def _rank_one(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.double().unsqueeze(1)  # (n, 1, d): H_i = v_i v_iᵀ


def test_identical_rank_one_hessians_are_fully_coherent():
    n = 6
    coh = single_coherence(_rank_one(torch.tensor([[1.0, 2.0, -1.0]]).repeat(n, 1)))
    assert coh.sigma == pytest.approx(n)  # Def. 3.1 as written: λ_max(S) = n·‖v‖², max λ = ‖v‖²
    assert coh.sigma_normalized == pytest.approx(1.0)


def test_orthogonal_rank_one_hessians_have_coherence_one_over_n():
    n = 5
    coh = single_coherence(_rank_one(torch.eye(n) * torch.arange(1.0, n + 1)[:, None]))
    assert coh.sigma == pytest.approx(1.0)
    assert coh.sigma_normalized == pytest.approx(1 / n)


def test_psd_factors_rebuild_the_psd_part():
    a = torch.randn(4, 3, 3, dtype=torch.float64)
    h = a @ a.transpose(1, 2)
    assert torch.allclose(factors_to_hessians(psd_factors(h)), h, atol=1e-10)
    indefinite = torch.diag_embed(torch.tensor([[2.0, -1.0]], dtype=torch.float64))
    assert torch.allclose(
        factors_to_hessians(psd_factors(indefinite)), torch.diag(torch.tensor([2.0, 0.0])).double()
    )


def test_q_construction_keeps_lambda_d_at_two_and_coherence_grows_with_q():
    sigmas, n = [], 20
    for q in (1, 5, n):
        f = q_construction(q, n)
        assert torch.linalg.eigvalsh(factors_to_hessians(f).mean(0))[-1] == pytest.approx(2.0)
        coh = unlearning_coherence(f, f, eta=0.5, alpha=0.1, batch_size=5, max_pairs=n * n)
        assert coh.lambda_max_d == pytest.approx(2.0)
        sigmas.append(coh.sigma)
    assert sigmas[0] < sigmas[1] < sigmas[2] == pytest.approx(n * n)  # Q = n: identical pairs


def test_mix_hessian_matches_the_dense_definition():
    retain = torch.randn(4, 2, 3, dtype=torch.float64)
    forget = torch.randn(3, 2, 3, dtype=torch.float64)
    _, _, c_r, c_f = noise_constants(0.5, 0.3, 2, 4, 3)
    dense = c_r * factors_to_hessians(retain).mean(0) + c_f * factors_to_hessians(forget).mean(0)
    expected = float(torch.linalg.eigvalsh(dense)[-1])
    assert mix_hessian_lambda_max(retain, forget, c_r, c_f) == pytest.approx(expected)
    assert c_r + c_f == pytest.approx(1.0)


def test_pair_subsampling_bounds_the_pair_matrix():
    f = torch.randn(40, 1, 5, dtype=torch.float64)
    coh = unlearning_coherence(f, f, eta=0.5, alpha=0.1, batch_size=5, max_pairs=100)
    assert coh.n <= 100 and coh.n_retain * coh.n_forget == coh.n
    assert 1 / coh.n - 1e-9 <= coh.sigma_normalized <= 1 + 1e-9


def test_thresholds_follow_theorems_3_6_and_3_7():
    kw = dict(eta=0.5, alpha=0.1, batch_size=10, n_retain=50, n_forget=50)
    k = 0.9 * 50 * 2 + 0.1 * 50 * 2  # (1−α) n_f √(n_r/B − 1) + α n_r √(n_f/B − 1)
    assert divergence_threshold(100.0, **kw) == pytest.approx(math.sqrt(2) * 100 / (0.5 * k))
    m = 50 * (50 / 10 - 1)
    stmt = convergence_threshold(100.0, **kw, reading="statement")
    proof = convergence_threshold(100.0, **kw, reading="proof")
    assert stmt == pytest.approx(2 * 100 / (0.5 * 0.9 * (100 + m)))
    assert proof == pytest.approx(2 * 100 * 0.9 / (0.5 * 0.9 * (100 + m)))


def test_bad_batch_size_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="batch_size"):
        noise_constants(0.5, 0.1, 50, 50, 50)


def test_gauss_newton_equals_the_exact_hessian_of_a_linear_softmax_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.randint(0, 4, (5,))
    exact = factors_to_hessians(per_sample_hessians(model, x, y, mode="exact").double())
    gn = factors_to_hessians(per_sample_hessians(model, x, y, mode="gauss_newton").double())
    assert torch.allclose(gn, exact, atol=1e-5)  # CE on linear logits: GN is exact
    op = per_sample_hessians(model, x, y, mode="outer_product")
    loss = nn.functional.cross_entropy(model(x[:1]), y[:1])
    g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, list(model.parameters()))])
    assert op.shape == (5, 1, 16) and torch.allclose(op[0, 0], g, atol=1e-6)


def test_split_coherence_on_a_model_is_one_when_every_sample_is_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(1, 3).repeat(6, 1), torch.zeros(6, dtype=torch.long)
    same = split_coherence(model, (x[:4], y[:4]), (x[4:], y[4:]), eta=0.1, alpha=0.3, batch_size=2)
    assert same.n == 8 and same.sigma_normalized == pytest.approx(1.0, rel=1e-6)
    xs, ys = torch.randn(6, 3), torch.randint(0, 2, (6,))
    mixed = split_coherence(
        model, (xs[:4], ys[:4]), (xs[4:], ys[4:]), eta=0.1, alpha=0.3, batch_size=2
    )
    assert 1 / mixed.n <= mixed.sigma_normalized < 1 and mixed.lambda_max_d > 0
