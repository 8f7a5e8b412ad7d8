"""ℓ1-sparse unlearning (Unlearn-Sparse, Jia et al. 2023; SPEC §2, 000 App. C.2).

Fine-tune f_A on R with an ℓ1 penalty on all weights whose strength decays linearly to 0::

    L_t = CE(R) + γ_t · ‖w‖₁,     γ_t = γ · (1 − t / T),

with t ∈ {0, …, T − 1} the current epoch (0-based) and T = ``epochs``: γ_0 = γ in the first
epoch, γ_{T−1} = γ/T in the last, constant within an epoch. This is the Unlearn-Sparse code
base's ``FT_iter(with_l1=True)`` schedule ``alpha · (1 − epoch / (unlearn_epochs −
no_l1_epochs))`` with ``no_l1_epochs = 0``; ‖w‖₁ runs over every parameter of the backbone
(convolution and linear weights, biases, BatchNorm affine parameters), as its
``l1_regularization(model)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from unlearning.methods.base import Batch, UnlearningMethod


def l1_norm(module: torch.nn.Module) -> Tensor:
    """‖w‖₁ over all (trainable) parameters of ``module``."""
    return sum(p.abs().sum() for p in module.parameters() if p.requires_grad)


class L1Sparse(UnlearningMethod):
    """CE on R + γ_t·‖w‖₁ with γ_t = γ·(1 − t/T), t the 0-based epoch (SPEC §2).

    Args:
        gamma: γ ≥ 0, the initial ℓ1 strength. Unlearn-Sparse and 000 App. C.2 call it α
            (1e-4 with lr 0.02 on CIFAR-100); it is *not* the top-level retain weight ``alpha``,
            which this method ignores (it trains on R only).
    """

    train_sets: ClassVar[tuple[str, ...]] = ("retain",)

    def __init__(self, *args: Any, gamma: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(gamma, bool) or not (math.isfinite(float(gamma)) and float(gamma) >= 0.0):
            raise ValueError(
                f"method.gamma={gamma!r}: the l1 strength must be a finite number >= 0, e.g. 1e-4"
            )
        if int(self.epochs) < 1:
            raise ValueError(f"method.epochs={self.epochs!r}: must be >= 1")
        self.gamma = float(gamma)

    def gamma_at(self, epoch: int) -> float:
        """γ_t = γ·(1 − t/T), clipped at 0 past the last epoch."""
        return self.gamma * max(0.0, 1.0 - int(epoch) / int(self.epochs))

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        retain = self.cross_entropy(batch, "retain")
        gamma_t = self.gamma_at(self.current_epoch)
        penalty = l1_norm(self.net)
        return retain + gamma_t * penalty, {
            "loss_retain": retain.detach(),
            "l1": penalty.detach(),
            "gamma_t": torch.tensor(gamma_t),
        }
