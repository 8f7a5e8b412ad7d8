"""Relearn time (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net", §5; issue 16): how
many steps of fine-tuning bring a model's forget accuracy back to the original model's level.

A model that only *hides* the forget set F — its weights still close to a model that fits F —
relearns F in far fewer steps than the oracle, which never saw it. Both are fine-tuned from their
own weights, with the same optimizer, data slice and batch order::

    relearn_steps(f) = min { t ≤ max_steps : Acc_{f_t}(F) ≥ target },   f_0 = f,
    f_{t+1} = one SGD step on a batch of the slice (F ∪ a sample of R),

with ``target`` the original model's accuracy on the same F samples (minus a tolerance). The
headline is the ratio of the unlearned model's relearn time to the oracle's: ≈ 1 is what
retraining gives, ≪ 1 means F is quickly recovered (the unlearning was shallow).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RelearnSettings:
    """The fine-tuning of :func:`relearn_steps`: SGD with ``lr`` and ``momentum``, mini-batches
    of ``batch_size`` from the slice in a ``seed``-ed order (reshuffled every pass), at most
    ``max_steps`` steps, the forget accuracy checked after every step."""

    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 32
    max_steps: int = 500
    seed: int = 0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def relearn_steps(
    model: nn.Module,
    slice_x: torch.Tensor,
    slice_y: torch.Tensor,
    forget_x: torch.Tensor,
    forget_y: torch.Tensor,
    target: float,
    settings: RelearnSettings,
) -> int | None:
    """Steps of fine-tuning a copy of ``model`` on ``(slice_x, slice_y)`` until its accuracy on
    ``(forget_x, forget_y)`` reaches ``target`` (0 if it already does); ``None`` when it does not
    within ``settings.max_steps``. ``model`` itself is left unchanged; inputs go to its device."""
    device = next(model.parameters()).device
    net = copy.deepcopy(model).to(device)
    forget_x, forget_y = forget_x.to(device), forget_y.to(device)
    if accuracy(net, forget_x, forget_y) >= target:
        return 0
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.empty(0, dtype=torch.long)
    for step in range(1, settings.max_steps + 1):
        if len(order) < settings.batch_size:  # a new pass over the slice
            order = torch.cat([order, torch.randperm(len(slice_y), generator=generator)])
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        net.train()
        optimizer.zero_grad()
        loss = F.cross_entropy(net(slice_x[batch].to(device)), slice_y[batch].to(device))
        loss.backward()
        optimizer.step()
        if accuracy(net, forget_x, forget_y) >= target:
            return step
    return None
