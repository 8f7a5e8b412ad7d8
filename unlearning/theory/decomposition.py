r"""The signal/noise decomposition of the two-layer CNN's filters (000 eq. 2).

``w_{j,r} = w_{j,r}⁽⁰⁾ + j·κ_{j,r}·φ‖φ‖⁻² + (P−1)⁻¹ Σ_i ζ_{j,r,i}·ξ_i‖ξ_i‖⁻²``.

Gradient steps on the signal/noise data only move a filter inside ``span{φ, ξ_1, …, ξ_n}``
(every input patch is ``±φ`` or some ``ξ_i``), so for ``n + 1 ≤ d`` independent vectors the
coefficients are unique and recovered exactly by least squares on that basis.
Filters are :class:`unlearning.models.TwoLayerCNN`'s ``(K=2, m, d)`` tensor; class index
``k ∈ {0, 1}`` is ``j = 2k − 1 ∈ {−1, +1}``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _basis(phi: Tensor, noise: Tensor) -> Tensor:
    """Columns ``[φ/‖φ‖², ξ_1/‖ξ_1‖², …]``: shape ``(d, n+1)``."""
    vectors = torch.cat([phi[None], noise]).double()
    return (vectors / vectors.pow(2).sum(1, keepdim=True)).T


def _signs(num_classes: int) -> Tensor:
    return (2 * torch.arange(num_classes) - 1).double()  # class k → j = 2k − 1


def decompose(
    filters: Tensor, init: Tensor, phi: Tensor, noise: Tensor, patches: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(κ, ζ, residual)`` of 000 eq. 2: κ ``(K, m)``, ζ ``(K, m, n)`` and the relative norm of
    the part of ``filters − init`` outside ``span{φ, ξ_i}`` (0 when eq. 2 is exact)."""
    delta = (filters - init).double()
    k, m, d = delta.shape
    basis = _basis(phi, noise)
    coef = torch.linalg.lstsq(basis, delta.reshape(-1, d).T).solution.T.reshape(k, m, -1)
    kappa = coef[..., 0] * _signs(k)[:, None]
    zeta = coef[..., 1:] * (patches - 1)
    rebuilt = recompose(kappa, zeta, init, phi, noise, patches)
    residual = (rebuilt - filters.double()).norm() / delta.norm().clamp_min(1e-300)
    return kappa, zeta, residual


def recompose(
    kappa: Tensor, zeta: Tensor, init: Tensor, phi: Tensor, noise: Tensor, patches: int
) -> Tensor:
    """Filters from ``(κ, ζ)`` by 000 eq. 2 (the inverse of :func:`decompose`)."""
    basis = _basis(phi, noise)  # (d, n+1)
    coef = torch.cat(
        [(kappa * _signs(kappa.shape[0])[:, None])[..., None], zeta / (patches - 1)], dim=-1
    )
    return init.double() + coef @ basis.T
