r"""Hessian coherence of a retain/forget split (003 Def. 3.1-3.4) and the stability thresholds
of 003 Thm 3.6-3.7, for synthetic Hessians and for small real models.

Per-sample Hessians are held as **PSD factors**: a tensor ``A`` of shape ``(n, k, d)`` with
``H_i = A_iᵀ A_i``. Every quantity the definitions need reduces to small products of factors:

* ``Tr(H_a H_b) = ‖A_a A_bᵀ‖_F²``, and for PSD matrices ``‖H_a^{1/2} H_b^{1/2}‖_F² = Tr(H_a H_b)``,
  so the coherence matrix of Def. 3.1 is ``S_ab = sqrt(Tr(H_a H_b))`` (as 003 eq. 44 uses it);
* ``λ_max(H_i)`` is the top eigenvalue of the ``k×k`` Gram ``A_i A_iᵀ``.

Factors come from :func:`per_sample_hessians` (``torch.func``): exact Hessians (tiny models; the
negative part of an indefinite Hessian is clipped, since Def. 3.1 assumes PSD), the Gauss-Newton
matrix ``J_iᵀ (diag p − p pᵀ) J_i`` of the logits' Jacobian (rank ≤ K), or the gradient outer
product ``g_i g_iᵀ`` (rank 1). Only the Gauss-Newton and outer-product factors scale to models
with many parameters; the pair matrix of Def. 3.3 has ``n_r·n_f`` rows, so
:func:`unlearning_coherence` subsamples R and F to at most ``max_pairs`` pairs.

**Normalisation.** Def. 3.1 divides ``λ_max(S)`` by ``max_i λ_max(H_i)`` only, so σ ranges over
``[1, n]`` (``n`` = number of Hessians, or of pairs in Def. 3.4): ``n`` identical rank-one
Hessians give σ = n, mutually orthogonal ones σ = 1. Thm 3.6-3.7 use this unnormalised σ.
``sigma_normalized = σ / n`` ∈ ``[1/n, 1]`` is also returned (1 = fully coherent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from unlearning.errors import ConfigError
from unlearning.modes import eval_mode

HessianMode = Literal["exact", "gauss_newton", "outer_product"]
HESSIAN_MODES: tuple[str, ...] = ("exact", "gauss_newton", "outer_product")
THM37_READINGS: tuple[str, ...] = ("statement", "proof")


# --------------------------------------------------------------------------- factors


def psd_factors(hessians: Tensor) -> Tensor:
    """Factors ``A`` (``(n, d, d)``) with ``A_iᵀ A_i`` = the PSD part of each symmetric ``H_i``.

    ``H = V diag(λ) Vᵀ`` → ``A = diag(sqrt(max(λ, 0))) Vᵀ``; negative eigenvalues are dropped.
    """
    if hessians.dim() != 3 or hessians.shape[1] != hessians.shape[2]:
        raise ValueError(f"hessians must have shape (n, d, d); got {tuple(hessians.shape)}")
    sym = 0.5 * (hessians + hessians.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(sym)
    return evals.clamp_min(0).sqrt().unsqueeze(-1) * evecs.transpose(1, 2)


def factors_to_hessians(factors: Tensor) -> Tensor:
    """``H_i = A_iᵀ A_i`` for factors of shape ``(n, k, d)`` → ``(n, d, d)``."""
    return torch.einsum("nkd,nke->nde", factors, factors)


def hessian_gram(fa: Tensor, fb: Tensor) -> Tensor:
    """``G_ab = Tr(H_a H_b) = ‖A_a A_bᵀ‖_F²`` for factor sets ``fa`` (na,k,d), ``fb`` (nb,l,d)."""
    return torch.einsum("akd,bld->abkl", fa, fb).pow(2).sum((-2, -1))


def top_eigenvalues(factors: Tensor) -> Tensor:
    """``λ_max(H_i)`` for each factor ``A_i``: top eigenvalue of the Gram ``A_i A_iᵀ``."""
    return torch.linalg.eigvalsh(factors @ factors.transpose(1, 2))[:, -1]


def _lambda_max_symmetric(matrix: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric matrix (Lanczos above 32 rows: a dense LAPACK solve of a
    few hundred rows is slow on a busy machine, and only the top eigenvalue is needed)."""
    if len(matrix) <= 32:
        return float(np.linalg.eigvalsh(matrix)[-1])
    v0 = np.ones(len(matrix))  # S ≥ 0 entrywise: the Perron vector is positive
    return float(eigsh(matrix, k=1, which="LA", v0=v0, return_eigenvectors=False)[0])


# --------------------------------------------------------------------------- Def. 3.1


@dataclass(frozen=True)
class Coherence:
    """Coherence of one set (Def. 3.1) or of a retain/forget split (Def. 3.4)."""

    sigma: float
    """σ = λ_max(S) / max λ_max(H) (or max λ_max(D_rf)); in [1, n]."""
    sigma_normalized: float
    """σ / n ∈ [1/n, 1], n = number of Hessians (Def. 3.1) or pairs (Def. 3.4)."""
    lambda_max_s: float
    max_lambda: float
    n: int
    lambda_max_d: float = math.nan
    """λ_max(D) of the mix-Hessian (Def. 3.2); NaN for a single set."""
    c_r: float = math.nan
    """C'_r = √C_r / (√C_r + √C_f) (Def. 3.2, Thm 3.7)."""
    c_f: float = math.nan
    n_retain: int = 0
    n_forget: int = 0


def single_coherence(factors: Tensor) -> Coherence:
    """σ^single of 003 Def. 3.1: ``S_ij = ‖H_i^{1/2} H_j^{1/2}‖_F``,
    ``σ = λ_max(S) / max_i λ_max(H_i)``."""
    factors = factors.double()
    s = hessian_gram(factors, factors).clamp_min(0).sqrt().numpy()
    lam_s = _lambda_max_symmetric(s)
    lam_h = float(top_eigenvalues(factors).max())
    n = len(factors)
    return Coherence(lam_s / lam_h, lam_s / lam_h / n, lam_s, lam_h, n)


# --------------------------------------------------------------------------- Def. 3.2-3.4


def _check_mix_args(eta: float, alpha: float, batch_size: float, n_retain: int, n_forget: int):
    if not (isinstance(eta, (int, float)) and eta > 0):
        raise ConfigError("eta", eta, "the learning rate must be a positive number, e.g. 0.5")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ConfigError("alpha", alpha, "the forget weight of 003 eq. 3 lies in [0, 1], e.g. 0.1")
    if not 0 < batch_size < max(n_retain, n_forget):
        raise ConfigError(
            "batch_size",
            batch_size,
            f"must lie in (0, {max(n_retain, n_forget)}) (Bernoulli batches of expected size B; "
            "B = n leaves no gradient noise and C_r = C_f = 0)",
        )


def noise_constants(
    eta: float, alpha: float, batch_size: float, n_retain: int, n_forget: int
) -> tuple[float, float, float, float]:
    """``(C_r, C_f, C'_r, C'_f)`` of 003 Def. 3.2: ``C_r = η²(1−α)² (1/n_r)(1/B − 1/n_r)``,
    ``C_f = η² α² (1/n_f)(1/B − 1/n_f)``, ``C'_x = √C_x / (√C_r + √C_f)``.

    ``1/B − 1/n`` is clipped at 0 (a set smaller than B is taken whole: no sampling noise).
    """
    _check_mix_args(eta, alpha, batch_size, n_retain, n_forget)
    c_r = eta**2 * (1 - alpha) ** 2 / n_retain * max(1 / batch_size - 1 / n_retain, 0.0)
    c_f = eta**2 * alpha**2 / n_forget * max(1 / batch_size - 1 / n_forget, 0.0)
    root = math.sqrt(c_r) + math.sqrt(c_f)
    return c_r, c_f, math.sqrt(c_r) / root, math.sqrt(c_f) / root


def _subsample(factors: Tensor, size: int, generator: torch.Generator) -> Tensor:
    if len(factors) <= size:
        return factors
    return factors[torch.randperm(len(factors), generator=generator)[:size]]


def mix_hessian_lambda_max(retain: Tensor, forget: Tensor, c_r: float, c_f: float) -> float:
    """λ_max(D) of 003 Def. 3.2: ``D = C'_r · mean_r H_r + C'_f · mean_f H_f`` (the pair average
    of eq. 6), from the stacked factor ``[√(C'_r/n_r) A_r; √(C'_f/n_f) A_f]``."""
    stacked = torch.cat(
        [
            (math.sqrt(c_r / len(retain)) * retain).flatten(0, 1),
            (math.sqrt(c_f / len(forget)) * forget).flatten(0, 1),
        ]
    )
    return float(torch.linalg.matrix_norm(stacked, ord=2) ** 2)


def _pair_lambda_max(retain: Tensor, forget: Tensor, c_r: float, c_f: float) -> Tensor:
    """``λ_max(D_rf)`` for every pair, ``D_rf = C'_r H_r + C'_f H_f``: shape ``(n_r, n_f)``."""
    k_r, k_f, d = retain.shape[1], forget.shape[1], retain.shape[2]
    if d <= k_r + k_f:  # dense d×d eigenproblems are smaller
        h_r, h_f = factors_to_hessians(retain), factors_to_hessians(forget)
        mix = c_r * h_r[:, None] + c_f * h_f[None, :]
        return torch.linalg.eigvalsh(mix)[..., -1]
    a = math.sqrt(c_r) * retain[:, None].expand(-1, len(forget), -1, -1)
    b = math.sqrt(c_f) * forget[None, :].expand(len(retain), -1, -1, -1)
    stacked = torch.cat([a, b], dim=2)  # (n_r, n_f, k_r + k_f, d)
    return torch.linalg.eigvalsh(stacked @ stacked.transpose(-1, -2))[..., -1]


def unlearning_coherence(
    retain: Tensor,
    forget: Tensor,
    *,
    eta: float,
    alpha: float,
    batch_size: float,
    max_pairs: int = 4096,
    seed: int = 0,
) -> Coherence:
    """Unlearning coherence σ of 003 Def. 3.4 and λ_max(D) of Def. 3.2 for factor sets
    ``retain`` (n_r, k, d) and ``forget`` (n_f, l, d).

    ``D_rf = C'_r H_r + C'_f H_f`` (Def. 3.2), ``S_(rf),(r'f') = ‖D_rf^{1/2} D_r'f'^{1/2}‖_F =
    sqrt(Tr(D_rf D_r'f'))`` (Def. 3.3), expanded through the Gram blocks ``Tr(H_a H_b)``;
    ``σ = λ_max(S) / max_rf λ_max(D_rf)`` (Def. 3.4). α is the *forget* weight of 003 eq. 3.

    If ``n_r·n_f > max_pairs``, R and F are subsampled (same ratio, ``seed``) so the pair matrix
    stays ≤ ``max_pairs`` rows; σ then refers to the subsample (``n_retain``/``n_forget`` say
    which sizes), while λ_max(D) always uses all samples.
    """
    if retain.dim() != 3 or forget.dim() != 3 or retain.shape[-1] != forget.shape[-1]:
        raise ValueError(
            f"factors must be (n, k, d) with one d; got {tuple(retain.shape)}, "
            f"{tuple(forget.shape)}"
        )
    n_r, n_f = len(retain), len(forget)
    _, _, c_r, c_f = noise_constants(eta, alpha, batch_size, n_r, n_f)
    retain, forget = retain.double(), forget.double()
    lam_d = mix_hessian_lambda_max(retain, forget, c_r, c_f)
    if n_r * n_f > max_pairs:
        scale = math.sqrt(max_pairs / (n_r * n_f))
        g = torch.Generator().manual_seed(seed)
        retain = _subsample(retain, max(1, int(n_r * scale)), g)
        forget = _subsample(forget, max(1, int(n_f * scale)), g)
    g_rr, g_ff = hessian_gram(retain, retain), hessian_gram(forget, forget)
    g_rf = hessian_gram(retain, forget)
    # Tr(D_rf D_r'f') over the index (r, f, r', f')
    tr = (
        c_r**2 * g_rr[:, None, :, None]
        + c_r * c_f * (g_rf[:, None, None, :] + g_rf.T[None, :, :, None])
        + c_f**2 * g_ff[None, :, None, :]
    )
    n_pairs = len(retain) * len(forget)
    s = tr.reshape(n_pairs, n_pairs).clamp_min(0).sqrt().numpy()
    lam_s = _lambda_max_symmetric(s)
    lam_pair = float(_pair_lambda_max(retain, forget, c_r, c_f).max())
    sigma = lam_s / lam_pair
    return Coherence(
        sigma, sigma / n_pairs, lam_s, lam_pair, n_pairs, lam_d, c_r, c_f, len(retain), len(forget)
    )


# --------------------------------------------------------------------------- Thm 3.6 / 3.7


def divergence_threshold(
    sigma: float, eta: float, alpha: float, batch_size: float, n_retain: int, n_forget: int
) -> float:
    """Right side of 003 Thm 3.6 (eq. 9): unlearning diverges if λ_max(D) ≥ this value,
    ``√2 σ / (η ((1−α) n_f √(n_r/B − 1) + α n_r √(n_f/B − 1)))``."""
    _check_mix_args(eta, alpha, batch_size, n_retain, n_forget)
    k = (1 - alpha) * n_forget * math.sqrt(max(n_retain / batch_size - 1, 0.0)) + (
        alpha * n_retain * math.sqrt(max(n_forget / batch_size - 1, 0.0))
    )
    return math.inf if k == 0 else math.sqrt(2) * sigma / (eta * k)


def convergence_threshold(
    sigma: float,
    eta: float,
    alpha: float,
    batch_size: float,
    n_retain: int,
    n_forget: int,
    reading: str = "statement",
) -> float:
    """Right side of 003 Thm 3.7: unlearning converges if λ_max(D) ≤ this value, with
    ``M = n_f (n_r/B − 1)``:

    * ``reading="statement"`` (eq. 10): ``2σ / (η C'_r (σ + M))``;
    * ``reading="proof"`` (last line of eq. 46): ``2σ C'_r / (η (1−α) (σ + M))``.

    The two differ (C'_r in the denominator vs. C'_r/(1−α) in the numerator); the proof's
    construction has only retain Hessians, so the last line is what its argument shows.
    """
    if reading not in THM37_READINGS:
        raise ConfigError("reading", reading, f"choose one of {list(THM37_READINGS)}")
    _, _, c_r, _ = noise_constants(eta, alpha, batch_size, n_retain, n_forget)
    m = n_forget * (n_retain / batch_size - 1)
    if reading == "statement":
        return 2 * sigma / (eta * c_r * (sigma + m))
    return 2 * sigma * c_r / (eta * (1 - alpha) * (sigma + m)) if alpha < 1 else math.inf


# --------------------------------------------------------------------------- torch.func


def per_sample_hessians(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    mode: str = "gauss_newton",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    chunk_size: int | None = 64,
) -> Tensor:
    """PSD factors ``(n, k, P)`` of the per-sample Hessians of ``loss_fn(model(x_i), y_i)``
    w.r.t. all trainable parameters (P of them, flattened in ``named_parameters`` order).

    * ``"exact"``: ``torch.func.hessian`` per sample (``P×P``; tiny models only), PSD part
      (:func:`psd_factors`), k = P;
    * ``"gauss_newton"``: cross-entropy Gauss-Newton ``J_iᵀ (diag p − p pᵀ) J_i`` with ``J_i``
      the ``K×P`` Jacobian of the logits (``torch.func.jacrev``), factor
      ``(diag p − p pᵀ)^{1/2} J_i``, k = K (``loss_fn`` must be cross-entropy; it is ignored);
    * ``"outer_product"``: ``g_i g_iᵀ`` with ``g_i = ∇ loss_fn`` (``torch.func.grad``), k = 1.

    ``loss_fn`` defaults to cross-entropy on logits. Evaluated at the model's current weights in
    eval mode; samples are processed with ``torch.func.vmap`` in chunks of ``chunk_size``.
    """
    if mode not in HESSIAN_MODES:
        raise ConfigError("mode", mode, f"choose one of {list(HESSIAN_MODES)}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].reshape(-1) for n in names])

    def unflatten(flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, sizes)
        return {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}

    def logits_of(flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(model, (unflatten(flat), buffers), (x.unsqueeze(0),)).squeeze(0)

    def loss_of(flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(logits_of(flat, x).unsqueeze(0), y.unsqueeze(0))

    with eval_mode(model):
        if mode == "exact":
            h = vmap(hessian(loss_of), in_dims=(None, 0, 0), chunk_size=chunk_size)(
                flat0, inputs, targets
            )
            return psd_factors(h)
        if mode == "outer_product":
            g = vmap(grad(loss_of), in_dims=(None, 0, 0), chunk_size=chunk_size)(
                flat0, inputs, targets
            )
            return g.unsqueeze(1)
        jac = vmap(jacrev(logits_of), in_dims=(None, 0), chunk_size=chunk_size)(flat0, inputs)
        with torch.no_grad():
            p = torch.softmax(
                vmap(logits_of, in_dims=(None, 0), chunk_size=chunk_size)(flat0, inputs), -1
            )
        lam = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (n, K, K) PSD
        evals, evecs = torch.linalg.eigh(lam)
        root = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)
        return root @ jac


def split_coherence(
    model: nn.Module,
    retain: tuple[Tensor, Tensor],
    forget: tuple[Tensor, Tensor],
    *,
    eta: float,
    alpha: float,
    batch_size: float,
    mode: str = "gauss_newton",
    max_pairs: int = 4096,
    seed: int = 0,
) -> Coherence:
    """σ (Def. 3.4) and λ_max(D) (Def. 3.2) of a model at its current weights for a retain and
    a forget set given as ``(inputs, targets)``; the entry point for the evaluation suite.

    Per-sample Hessians come from :func:`per_sample_hessians` with ``mode``; pass small sets
    (the pair matrix has ``n_r·n_f`` rows, subsampled to ``max_pairs``).
    """
    fr = per_sample_hessians(model, *retain, mode=mode)
    ff = per_sample_hessians(model, *forget, mode=mode)
    return unlearning_coherence(
        fr, ff, eta=eta, alpha=alpha, batch_size=batch_size, max_pairs=max_pairs, seed=seed
    )
