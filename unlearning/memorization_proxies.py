"""Cheap proxies of memorization (SPEC §4, source 3), for quick sweeps.

A proxy is *not* the Feldman–Zhang score (000 eq. 9): results record ``split/mem_is_proxy = 1``
and the config names the source, so a table never mixes the two silently.

* Learning speed (Jiang et al. 2021; the "learning-speed" proxy of SPEC §4): train one model on S
  with the pretraining recipe and record, after every epoch, the softmax probability it assigns
  to each sample's label. Samples learned late (low mean confidence over training) are the
  atypical, memorized ones: ``proxy(i) = 1 − mean_epochs p_t(y_i | x_i)``. Cost: one training
  run plus one evaluation pass over S per epoch, against K runs for the estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def learning_speed_proxy(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    eval_batch_size: int = 1024,
) -> np.ndarray:
    """``1 − mean_t p_t(y_i | x_i)`` over the end of each of ``epochs`` epochs of SGD with
    momentum, weight decay and a cosine learning rate (the pretraining recipe, 000 App. C.1),
    in [0, 1]; higher = learned later = more memorization-like."""
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    n = len(y)
    confidence = torch.zeros(n, dtype=torch.float64)
    for epoch in range(epochs):
        for group in optimizer.param_groups:  # cosine annealing, stepped per epoch
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        model.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, n, eval_batch_size):
                probs = model(x[start : start + eval_batch_size]).softmax(1)
                labels = y[start : start + eval_batch_size]
                confidence[start : start + len(labels)] += probs[
                    torch.arange(len(labels)), labels
                ].double()
    return (1.0 - confidence / epochs).numpy()
