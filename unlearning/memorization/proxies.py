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

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from unlearning.memorization.estimator import TrainConfig, predict, sgd_for, train_epoch


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
    """``1 − mean_t p_t(y_i | x_i)`` over the end of each of ``epochs`` epochs of the estimator's
    member recipe (:class:`unlearning.memorization.estimator.TrainConfig`: SGD with momentum,
    weight decay
    and a per-epoch cosine learning rate, 000 App. C.1) on all of S, in [0, 1]; higher = learned
    later = more memorization-like."""
    cfg = TrainConfig(epochs, lr, batch_size, momentum, weight_decay, seed, eval_batch_size)
    device = torch.device("cpu")
    torch.manual_seed(seed)
    model = make_model()
    opt = sgd_for(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    confidence = torch.zeros(len(y), dtype=torch.float64)
    for epoch in range(epochs):
        train_epoch(
            model, opt, x, y, torch.randperm(len(y), generator=generator), epoch, cfg, device
        )
        probs = predict(model, x, cfg, device).softmax(1)
        confidence += probs[torch.arange(len(y)), y].double()
    return (1.0 - confidence / epochs).numpy()
