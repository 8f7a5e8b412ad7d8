"""SCRUB (Kurmanji et al. 2023): teacher-student unlearning with max-steps on F and min-steps
on R (SPEC §2; settings 000 App. C.2).

The teacher is a frozen copy of f_A. With ``KL_T(t‖s) = T² · KL(softmax(t/T) ‖ softmax(s/T))``
(batch mean, the ``DistillKL`` of the SCRUB code), one SCRUB epoch is

* while the epoch index e < ``msteps``: one pass of **max-steps** over F, each minimising
  ``−KL_T(teacher(x_f) ‖ student(x_f))`` (push the student away from the teacher on F);
* then always one pass of **min-steps** over R, each minimising
  ``γ · CE(student(x_r), y_r) + β · KL_T(teacher(x_r) ‖ student(x_r))``.

All steps use one shared optimizer (the ``optim`` preset, learning rate ``lr``).

Schedule (``epoch_passes``): an epoch e < ``msteps`` is a full pass over F (max-steps, one forget
batch each) followed by a full pass over R (min-steps, one retain batch each), as in the SCRUB
code; later epochs are a pass over R only. Each step's objective follows from the set its batch
holds, so every step is one automatic-optimization step and ``optim=sam|asam`` wraps it
unchanged.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearning.methods.base import Batch, UnlearningMethod


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch (SCRUB's DistillKL)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


def _positive(value: Any, key: str, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = math.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    if isinstance(value, bool) or not ok:
        bound = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{key}={value!r}: must be a finite number in {bound}")
    return number


class SCRUB(UnlearningMethod):
    """SCRUB with a frozen teacher f_A (see the module docstring for the exact schedule).

    Args (besides the base ones):
        msteps: number of leading epochs that start with a max-pass over F; 0 ≤ msteps ≤ epochs.
        kd_T: distillation temperature T > 0 (the KL is scaled by T²).
        beta: weight β ≥ 0 of the KL term of the min-steps (SCRUB code's ``alpha``).
        gamma: weight γ ≥ 0 of the cross-entropy of the min-steps.

    ``alpha`` (the framework's retain weight) does not apply: SCRUB's mixing is γ, β and msteps.
    """

    train_sets: ClassVar[tuple[str, ...]] = ("retain", "forget")

    def __init__(
        self,
        *args: Any,
        msteps: int = 8,
        kd_T: float = 4.0,
        beta: float = 0.01,
        gamma: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kd_T = _positive(kd_T, "method.kd_T")
        self.beta = _positive(beta, "method.beta", allow_zero=True)
        self.gamma = _positive(gamma, "method.gamma", allow_zero=True)
        if isinstance(msteps, bool) or not isinstance(msteps, int) or msteps < 0:
            raise ValueError(f"method.msteps={msteps!r}: must be an integer in [0, method.epochs]")
        if msteps > self.epochs:
            raise ValueError(
                f"method.msteps={msteps!r} > method.epochs={self.epochs!r}: the max-steps run in "
                "the first msteps epochs, so msteps must lie in [0, method.epochs]"
            )
        self.msteps = msteps
        self.teacher = self.frozen_copy()  # no gradients: never handed to the optimizer
        #: ``max`` or ``min``: the objective of the last step.
        self.phase = "min"

    def train(self, mode: bool = True) -> SCRUB:
        """Lightning puts the module in train mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ objectives

    def teacher_logits(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher(x)

    def max_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Max-step on F: minimise ``−KL_T(teacher ‖ student)``."""
        x, _ = batch["forget"]
        kl = distill_kl(self.net(x), self.teacher_logits(x), self.kd_T)
        return -kl, {"kl_forget": kl}

    def min_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Min-step on R: ``γ · CE + β · KL_T(teacher ‖ student)``."""
        x, y = batch["retain"]
        logits = self.net(x)
        ce = F.cross_entropy(logits, y)
        kl = distill_kl(logits, self.teacher_logits(x), self.kd_T)
        return self.gamma * ce + self.beta * kl, {"loss_retain": ce, "kl_retain": kl}

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """A max-step on a forget batch, a min-step on a retain batch (``phase``: which)."""
        self.phase = "max" if "forget" in batch else "min"
        return self.max_loss(batch) if self.phase == "max" else self.min_loss(batch)

    def epoch_passes(self, epoch: int) -> tuple[str, ...]:
        """F then R while ``epoch < msteps``, else R alone."""
        return ("forget", "retain") if epoch < self.msteps else ("retain",)


__all__ = ["SCRUB", "distill_kl"]
