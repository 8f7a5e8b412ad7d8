"""Plain empirical risk minimisation: pretraining f_A on S, retraining the oracle f_A(R) on R,
and fine-tuning (FT) on R (SPEC §2)."""

from __future__ import annotations

from typing import ClassVar

import torch

from unlearning.methods.base import Batch, UnlearningMethod


class ERM(UnlearningMethod):
    """Cross-entropy on one set: ``train`` (all of S) when pretraining, ``retain`` for the
    oracle. ``train_set`` picks which."""

    def __init__(self, *args, train_set: str = "train", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_sets = (train_set,)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.cross_entropy(batch, self.train_sets[0]), {}


class Finetune(UnlearningMethod):
    """FT: continue training f_A with cross-entropy on R only (catastrophic forgetting of F)."""

    train_sets: ClassVar[tuple[str, ...]] = ("retain",)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.cross_entropy(batch, "retain"), {}


class Retrain(ERM):
    """``retrain``: the oracle f_A(R) itself — train from scratch on R with the pretraining
    schedule. The pipeline serves it from the oracle stage's cache (same config ⇒ same model),
    and reports the oracle's training time as its RTE."""

    from_scratch: ClassVar[bool] = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, train_set="retain", **kwargs)
