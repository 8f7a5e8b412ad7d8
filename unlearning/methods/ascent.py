"""Gradient-ascent methods: GA (forget only) and NegGrad / GDA (000 eq. 4, 002 §2)."""

from __future__ import annotations

from typing import ClassVar

import torch

from unlearning.methods.base import Batch, UnlearningMethod, check_retain_weight


class GradientAscent(UnlearningMethod):
    """GA: maximise the cross-entropy on F, i.e. minimise ``−CE(F)`` (002 §2). Epochs run over
    F only."""

    train_sets: ClassVar[tuple[str, ...]] = ("forget",)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget = self.cross_entropy(batch, "forget")
        return -forget, {"loss_forget": forget}


class NegGrad(UnlearningMethod):
    """NegGrad (GDA): ``α·CE(R) − (1−α)·CE(F)`` on joint batches (000 eq. 4).

    ``alpha`` is the retain weight (SPEC §2). In 003's convention α is the forget weight
    (003's α = 1 − ours); in 004's it is p (004's p = ours).
    """

    train_sets: ClassVar[tuple[str, ...]] = ("retain", "forget")

    def __init__(self, *args, alpha: float = 0.99, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = check_retain_weight(alpha)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        retain = self.cross_entropy(batch, "retain")
        forget = self.cross_entropy(batch, "forget")
        loss = self.alpha * retain - (1.0 - self.alpha) * forget
        return loss, {"loss_retain": retain, "loss_forget": forget}
