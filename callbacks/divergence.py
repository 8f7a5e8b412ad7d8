"""Stop a fit cleanly when it diverges: non-finite loss or weights, or an exploding loss.

Gradient ascent (GA, NegGrad, the max part of MinMax) has no minimum: with a large learning rate
the forget loss grows without bound and the weights overflow to ``inf``/``nan`` within a few
steps. Instead of letting the next forward pass raise or silently training on NaNs, this
callback checks every optimizer step and, on the first bad one, puts the last finite weights back
and asks the trainer to stop (``trainer.should_stop``); :attr:`DivergenceGuard.diverged_at_step`
tells the caller what happened, so a job can report ``status: "diverged"`` and evaluate the last
finite state.

The loss a step reports is computed on the weights *before* the step, so the guard keeps two
snapshots of the module's ``state_dict`` (parameters and buffers such as BatchNorm statistics):
``confirmed``, the newest weights whose loss it has seen finite and within bounds, and
``pending``, the weights after the last step, whose loss the next step will report. After step
*t* (``on_train_batch_end``): a bad loss rejects ``pending`` and restores ``confirmed``; a good
loss confirms ``pending``, and then non-finite weights after step *t* restore it. So the model
kept is always the last one seen to give a finite loss within bounds (f_A itself if the very first
step already fails). Snapshots are in-place copies into two preallocated buffers: two extra
copies of the model in memory, one device copy per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def _loss_of(outputs: Any, trainer: pl.Trainer, key: str) -> float | None:
    """The step's loss: the tensor (or ``"loss"`` entry) ``training_step`` returned, else the
    value logged under ``key`` (manual-optimization modules may return nothing)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if outputs is None:
        outputs = trainer.callback_metrics.get(key)
    if isinstance(outputs, torch.Tensor):
        return float(outputs.detach().float().reshape(-1)[0]) if outputs.numel() else None
    if isinstance(outputs, (int, float)):
        return float(outputs)
    return None


class DivergenceGuard(Callback):
    """Restore the last finite weights and stop the fit at the first diverging step.

    Args:
        max_abs_loss: a step whose ``|loss|`` exceeds this counts as diverged (``None``: only
            non-finite losses and weights do).
        loss_key: the logged metric read when ``training_step`` returns no loss.

    After the fit, :attr:`diverged_at_step` is the global step (number of optimizer steps taken,
    counting the bad one) at which divergence was detected, or ``None``; :attr:`reason` says why.
    """

    def __init__(self, max_abs_loss: float | None = None, loss_key: str = "train/loss") -> None:
        if max_abs_loss is not None and not max_abs_loss > 0:
            raise ValueError(f"max_abs_loss must be positive or None, got {max_abs_loss}")
        self.max_abs_loss = max_abs_loss
        self.loss_key = loss_key
        self.diverged_at_step: int | None = None
        self.reason: str | None = None
        self._confirmed: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _copy(state: Mapping[str, torch.Tensor], into: dict[str, torch.Tensor] | None):
        """``state`` copied into the buffers ``into`` (allocated when absent or mismatched)."""
        if (
            into is None
            or into.keys() != state.keys()
            or any(into[k].shape != v.shape for k, v in state.items())
        ):
            return {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            torch._foreach_copy_(list(into.values()), [v.detach() for v in state.values()])
        return into

    @staticmethod
    def _weights_finite(pl_module: pl.LightningModule) -> bool:
        tensors = [t for t in pl_module.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return True
        # one reduction and one device sync: any inf/nan entry makes its tensor's sum non-finite
        sums = torch.stack([t.detach().float().sum() for t in tensors])
        return bool(torch.isfinite(sums).all())

    def _loss_problem(self, loss: float | None) -> str | None:
        if loss is not None and not math.isfinite(loss):
            return f"loss is {loss}"
        if loss is not None and self.max_abs_loss is not None and abs(loss) > self.max_abs_loss:
            return f"|loss| = {abs(loss):.3g} exceeds max_abs_loss = {self.max_abs_loss:g}"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"diverged_at_step": self.diverged_at_step, "reason": self.reason}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diverged_at_step = state_dict["diverged_at_step"]
        self.reason = state_dict["reason"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.diverged_at_step is not None:  # resumed from a checkpoint saved after divergence
            trainer.should_stop = True
        self._confirmed = None
        self._pending = self._copy(pl_module.state_dict(), self._pending)

    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        restore = self._confirmed if self._confirmed is not None else self._pending
        assert restore is not None
        pl_module.load_state_dict(restore)
        self.diverged_at_step, self.reason = trainer.global_step, reason
        trainer.should_stop = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.diverged_at_step is not None or self._pending is None:
            return
        problem = self._loss_problem(_loss_of(outputs, trainer, self.loss_key))
        # under DDP every rank sees its own loss: all stop if any one diverges
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            self._stop(trainer, pl_module, problem or "diverged on another process")
            return
        # the weights before this step gave a good loss: confirm them (swap the two buffers)
        self._confirmed, self._pending = self._pending, self._confirmed
        if not self._weights_finite(pl_module):
            self._stop(trainer, pl_module, "the weights are no longer finite")
            return
        self._pending = self._copy(pl_module.state_dict(), self._pending)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._confirmed = self._pending = None  # free the copies
