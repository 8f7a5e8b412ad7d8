r"""The linearised unlearning recursion of 003 eq. 3-4 and its exact second moment.

``w_{k+1} = J_k w_k``, ``J_k = I − η(1−α)(1/B) Σ_{i∈D_r,k} H_i + η α (1/B) Σ_{i∈D_f,k} H_i``
(eq. 4; α is the *forget* weight). Mini-batches are Bernoulli (each sample joins with
probability ``B/n`` independently, 003 §3.1 after Dexter et al. 2024), so that the noise
constants of Def. 3.2 are exact: ``Var(z_i)/B² = (1/n)(1/B − 1/n)``.

Hessians are PSD factors ``(n, k, d)`` (``H_i = A_iᵀ A_i``, see :mod:`unlearning.theory.coherence`).
Both functions work in log scale (the iterate is renormalised every few steps), so a run that
grows by 10³⁰⁰ is still measured exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RENORM_EVERY = 8


def _apply(flat: Tensor, w: Tensor, weights: Tensor) -> Tensor:
    """``Σ_i z_i H_i w`` for stacked factors ``flat`` (n·k, d), iterates ``w`` (R, d) and
    per-repeat weights ``z`` (R, n·k) (each sample's weight repeated k times)."""
    return ((w @ flat.T) * weights) @ flat


def simulate(
    retain: Tensor,
    forget: Tensor,
    *,
    eta: float,
    alpha: float,
    batch_size: float,
    steps: int,
    repeats: int,
    seed: int = 0,
) -> Tensor:
    """Run eq. 3 ``repeats`` times from ``w_0 ~ N(0, I)`` for ``steps`` Bernoulli mini-batch
    steps; return ``log(‖w_steps‖ / ‖w_0‖)`` per repeat (shape ``(repeats,)``)."""
    g = torch.Generator().manual_seed(seed)
    retain, forget = retain.double(), forget.double()
    d = retain.shape[-1]
    p_r, p_f = min(batch_size / len(retain), 1.0), min(batch_size / len(forget), 1.0)
    w = torch.randn(repeats, d, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=1, keepdim=True)
    log_norm = torch.zeros(repeats, dtype=torch.float64)
    a, b = eta * (1 - alpha) / batch_size, eta * alpha / batch_size
    k_r, k_f = retain.shape[1], forget.shape[1]
    masks_r = (torch.rand(steps, repeats, len(retain), generator=g) < p_r).double()
    masks_f = (torch.rand(steps, repeats, len(forget), generator=g) < p_f).double()
    masks_r = masks_r.repeat_interleave(k_r, dim=2) * a
    masks_f = masks_f.repeat_interleave(k_f, dim=2) * -b
    flat = torch.cat([retain.flatten(0, 1), forget.flatten(0, 1)])
    masks = torch.cat([masks_r, masks_f], dim=2)
    for step in range(steps):
        w = w - _apply(flat, w, masks[step])
        if step % RENORM_EVERY == RENORM_EVERY - 1 or step == steps - 1:
            norm = w.norm(dim=1, keepdim=True)
            log_norm += norm.squeeze(1).clamp_min(1e-300).log()
            w = w / norm.clamp_min(1e-300)
    return log_norm


def second_moment(
    retain: Tensor,
    forget: Tensor,
    *,
    eta: float,
    alpha: float,
    batch_size: float,
    steps: int,
) -> tuple[float, float]:
    """Exact ``log E‖w_steps‖²`` from ``E[w_0 w_0ᵀ] = I`` and the asymptotic per-step growth.

    ``Σ_{k+1} = E[J Σ_k Jᵀ] = J̄ Σ_k J̄ + C_r Σ_{i∈R} H_i Σ_k H_i + C_f Σ_{i∈F} H_i Σ_k H_i`` with
    ``J̄ = I − η(1−α) H̄_R + η α H̄_F`` the mean operator (set means, as ``E z_i/B = 1/n``) and
    ``C_x = (η w_x / B)² p_x (1 − p_x)`` (= Def. 3.2's C_r, C_f), which is 003 eq. 7's noise
    recursion plus the mean part (Lemma 3.5 M_k, exact under independent Bernoulli batches).
    ``E‖w_k‖² = Tr Σ_k`` (eq. 5). Returns ``(log Tr Σ_steps − log d, log(Tr Σ_steps / Tr
    Σ_{steps−1}))``; the second is > 0 iff ``E‖w_k‖² → ∞`` (up to the finite horizon).
    """
    retain, forget = retain.double(), forget.double()
    d = retain.shape[-1]
    n_r, n_f = len(retain), len(forget)
    p_r, p_f = min(batch_size / n_r, 1.0), min(batch_size / n_f, 1.0)
    a, b = eta * (1 - alpha) / batch_size, eta * alpha / batch_size
    h_r = torch.einsum("nkd,nke->de", retain, retain)  # Σ_i H_i
    h_f = torch.einsum("nkd,nke->de", forget, forget)
    j_bar = torch.eye(d, dtype=torch.float64) - a * p_r * h_r + b * p_f * h_f
    c_r, c_f = a**2 * p_r * (1 - p_r), b**2 * p_f * (1 - p_f)

    def sandwich(factors: Tensor, sigma: Tensor) -> Tensor:  # Σ_i H_i Σ H_i
        inner = factors @ sigma @ factors.transpose(1, 2)  # A Σ Aᵀ: (n, k, k)
        return factors.flatten(0, 1).T @ (inner @ factors).flatten(0, 1)

    sigma = torch.eye(d, dtype=torch.float64) / d
    log_trace, last_rate = 0.0, 0.0
    for _ in range(steps):
        sigma = (
            j_bar @ sigma @ j_bar + c_r * sandwich(retain, sigma) + c_f * sandwich(forget, sigma)
        )
        trace = float(sigma.trace())
        if trace <= 0 or not math.isfinite(trace):
            return -math.inf, -math.inf
        last_rate = math.log(trace)
        log_trace += last_rate
        sigma = sigma / trace
    return log_trace, last_rate
