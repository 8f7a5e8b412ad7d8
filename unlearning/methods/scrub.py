"""SCRUB (Kurmanji et al. 2023): teacher-student unlearning with max-steps on F and min-steps
on R (SPEC §2; settings 000 App. C.2).

The teacher is a frozen copy of f_A. With ``KL_T(t‖s) = T² · KL(softmax(t/T) ‖ softmax(s/T))``
(batch mean, the ``DistillKL`` of the SCRUB code), one SCRUB epoch is

* while the epoch index e < ``msteps``: one pass of **max-steps** over F, each minimising
  ``−KL_T(teacher(x_f) ‖ student(x_f))`` (push the student away from the teacher on F);
* then always one pass of **min-steps** over R, each minimising
  ``γ · CE(student(x_r), y_r) + β · KL_T(teacher(x_r) ‖ student(x_r))``.

All steps use one shared optimizer (the ``optim`` preset, learning rate ``lr``).

Schedule on the framework's joint loader (``train_sets = ("retain", "forget")``: ⌈|R|/B⌉ steps
per epoch, B retain + B forget samples per step, F restarting at every epoch): in an epoch with
e < msteps, steps ``0 … n_F − 1`` (n_F = ⌈|F|/B⌉) are the max-steps and use the forget batch —
exactly one pass over F, in order, before any min-step — and steps ``n_F … ⌈|R|/B⌉ − 1`` are the
min-steps on the retain batch. From epoch ``msteps`` on every step is a min-step (a full pass over
R). **Deviation:** in the first ``msteps`` epochs the min-pass sees ⌈|R|/B⌉ − n_F retain batches
instead of ⌈|R|/B⌉ (the retain batches drawn alongside the max-steps are not used), i.e. a random
(1 − n_F/n_R) share of R; n_F ≥ ⌈|R|/B⌉ is refused. Every step is one automatic-optimization step
whose objective depends only on (epoch, batch index), so ``optim=sam|asam`` wraps it unchanged.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearning.methods.base import Batch, UnlearningMethod

PHASES = ("max", "min")


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
        #: ``max`` or ``min``: which objective :meth:`loss` computes (set per training step).
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
        """The objective of the current ``phase`` (``max``: on F; ``min``: on R)."""
        if self.phase not in PHASES:
            raise ValueError(f"SCRUB phase must be one of {PHASES}; got {self.phase!r}")
        return self.max_loss(batch) if self.phase == "max" else self.min_loss(batch)

    # ------------------------------------------------------------------ schedule

    def _loader_steps(self, name: str) -> int | None:
        # Trainer.train_dataloader is the joint loader's dict of per-set DataLoaders
        iterables = getattr(self._trainer, "train_dataloader", None)
        if isinstance(iterables, dict) and name in iterables:
            return len(iterables[name])
        return None

    def forget_steps(self) -> int:
        """n_F = ⌈|F|/B⌉: the number of max-steps of a max epoch (one pass over F)."""
        steps = self._loader_steps("forget")
        if steps is None:
            raise RuntimeError("SCRUB needs the joint loader's forget part to count its max-steps")
        return steps

    def on_train_start(self) -> None:
        n_f, n_r = self._loader_steps("forget"), self._loader_steps("retain")
        if self.msteps > 0 and n_f is not None and n_r is not None and n_f >= n_r:
            raise ValueError(
                f"SCRUB: the forget pass (⌈|F|/B⌉ = {n_f} steps) must be shorter than the retain "
                f"pass ({n_r} steps) on the joint loader; use method.msteps=0 or a smaller F"
            )

    def phase_of(self, batch_idx: int) -> str:
        """``max`` for the first n_F steps of the first ``msteps`` epochs, else ``min``."""
        if self.current_epoch < self.msteps and batch_idx < self.forget_steps():
            return "max"
        return "min"

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        self.phase = self.phase_of(batch_idx)
        return super().training_step(batch, batch_idx)


__all__ = ["SCRUB", "distill_kl"]
