"""Gradient saliency masks over parameters (SalUn; Sharp MinMax model splitting, 000 App. C.1).

The saliency of a parameter entry is ``|Σ_b ∇_w CE(F_b)|`` at f_A, accumulated over one pass of
mini-batches ``F_b`` of the forget set. Entries are ranked *globally* over all parameters and the
top fraction forms the mask (``True`` = salient for F).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.modes import eval_mode


def forget_gradient_saliency(
    net: nn.Module, forget_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``|Σ_b ∇ CE(F_b)|`` per parameter, named like ``net.named_parameters()``.

    The network is evaluated in eval mode (BatchNorm uses its running statistics and they are not
    updated) and left with zero gradients; its weights are unchanged.
    """
    with eval_mode(net):
        params = {name: p for name, p in net.named_parameters() if p.requires_grad}
        total = {name: torch.zeros_like(p) for name, p in params.items()}
        device = next(net.parameters()).device
        for x, y in forget_batches:
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, list(params.values()))
            for name, grad in zip(params, grads, strict=True):
                total[name] += grad
    return {name: g.abs() for name, g in total.items()}


def top_fraction_mask(
    saliency: dict[str, torch.Tensor], fraction: float, key: str = "fraction"
) -> dict[str, torch.Tensor]:
    """Boolean masks selecting exactly ``round(fraction · N)`` entries of largest saliency among
    all N entries of all parameters (global ranking; ties broken by position)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{key}={fraction!r}: the mask fraction must lie in (0, 1), e.g. 0.3")
    flat = torch.cat([s.reshape(-1) for s in saliency.values()])
    count = int(round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if count:
        chosen[torch.topk(flat, count, sorted=False).indices] = True
    masks, start = {}, 0
    for name, s in saliency.items():
        masks[name] = chosen[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks
