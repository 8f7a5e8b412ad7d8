"""Loss landscapes along filter-normalised random directions (Li et al. 2018) and the basin
ratio of 000 §4.3 (SPEC §5).

A direction d has the shape of the model's parameters. Filter normalisation (Li et al. 2018,
§4): draw d ~ N(0, I), then rescale every filter (slice along the output dimension) of every
weight tensor to the norm of the corresponding filter of θ, ``d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ ·
‖θ_{i,j}‖``. One-dimensional parameters (biases, BatchNorm scales and shifts) get d = 0, as in
Li et al.'s ``ignore='biasbn'``. The landscape is ``L(θ + α d₁)`` on a 1-D grid and
``L(θ + α d₁ + β d₂)`` on a 2-D grid, α, β ∈ [−radius, radius], with the model in eval mode.

Basin ratio (000 §4.3): the fraction of the 2-D grid's losses whose deviation from the loss at
the centre (θ itself) is at most 0.5 · the standard deviation of the grid's losses. Higher =
flatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from unlearning.modes import eval_mode


def filter_normalized_direction(
    params: dict[str, torch.Tensor], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A random direction with each filter scaled to the norm of θ's filter (Li et al. 2018);
    zero on 1-D parameters."""
    out = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        if p.dim() <= 1:
            out[name] = torch.zeros_like(p)
            continue
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        p_norm = p.flatten(1).norm(dim=1)
        shape = (-1,) + (1,) * (p.dim() - 1)
        out[name] = d * (p_norm / d_norm).view(shape)
    return out


@dataclass
class Landscape:
    """Losses of one model on one set along shared random directions."""

    alphas: np.ndarray  # (steps_1d,)
    curve: np.ndarray  # (steps_1d,) L(θ + α d₁)
    grid_axis: np.ndarray  # (steps_2d,)
    surface: np.ndarray  # (steps_2d, steps_2d) L(θ + α d₁ + β d₂), [i, j] = (α_i, β_j)
    center: float  # L(θ)

    @property
    def basin_ratio(self) -> float:
        return basin_ratio(self.surface, self.center)


def basin_ratio(losses: np.ndarray, center: float) -> float:
    """Fraction of ``losses`` within 0.5 · std(losses) of the centre loss (000 §4.3)."""
    losses = np.asarray(losses, np.float64).ravel()
    finite = losses[np.isfinite(losses)]
    if len(finite) == 0:
        return float("nan")
    return float(np.mean(np.abs(finite - center) <= 0.5 * finite.std()))


@torch.no_grad()
def loss_landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    radius: float = 1.0,
    steps_1d: int = 21,
    steps_2d: int = 11,
    seed: int = 0,
    chunk: int = 1024,
) -> Landscape:
    """1-D and 2-D loss landscapes of ``model`` (mean cross-entropy on ``(x, y)``) along two
    filter-normalised directions drawn from ``seed`` (the same seed gives the same random draw
    for every model, so landscapes of two models of one architecture are comparable). An odd
    number of steps puts θ itself on the grids."""
    if len(x) == 0:
        raise ValueError("the loss landscape needs at least one sample")
    with eval_mode(model):
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device).long()
        params = {k: p.detach() for k, p in model.named_parameters()}
        buffers = {k: b.detach() for k, b in model.named_buffers()}
        gen = torch.Generator().manual_seed(seed)
        d1 = filter_normalized_direction(params, gen)
        d2 = filter_normalized_direction(params, gen)

        def loss(a: float, b: float) -> float:
            p = {k: params[k] + a * d1[k] + b * d2[k] for k in params}
            total = 0.0
            for s in range(0, len(x), chunk):
                logits = functional_call(model, (p, buffers), (x[s : s + chunk],))
                total += float(F.cross_entropy(logits, y[s : s + chunk], reduction="sum"))
            return total / len(x)

        alphas = np.linspace(-radius, radius, steps_1d)
        axis = np.linspace(-radius, radius, steps_2d)
        curve = np.array([loss(a, 0.0) for a in alphas])
        surface = np.array([[loss(a, b) for b in axis] for a in axis])
        return Landscape(alphas, curve, axis, surface, loss(0.0, 0.0))
