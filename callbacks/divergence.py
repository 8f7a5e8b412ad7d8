"""Stop a fit cleanly when it diverges: non-finite loss or weights, or an exploding loss.

Gradient ascent (GA, NegGrad, the max part of MinMax) has no minimum: with a large learning rate
the forget loss grows without bound and the weights overflow to ``inf``/``nan`` within a few
steps. Instead of letting the next forward pass raise or silently training on NaNs, this
callback checks every optimizer step and, on the first bad one, puts the last good weights back
and asks the trainer to stop (``trainer.should_stop``); :attr:`DivergenceGuard.diverged_at_step`
tells the caller what happened, so a job can report ``status: "diverged"`` and evaluate the last
finite state.

The loss step *t* reports is computed on the weights before the step, W_{t-1}, so the loss read
after step *t* (``on_train_batch_end``) vouches for W_{t-1}: a non-finite loss, or one with
``|loss| > max_abs_loss``, puts W_{t-2} back (the newest weights whose loss was seen good; f_A
itself if the first step already fails). Non-finite weights W_t show up as a non-finite loss at
step *t* + 1 (NaN and inf propagate through every layer to the loss), which puts W_{t-1} back;
the weights themselves are checked once per epoch, at its end, where no next step would see
them. The snapshots are in-place copies into preallocated buffers (a ring of ``lag + 2`` copies
of the weights and buffers), one fused copy per step (``torch._foreach_copy_``).

**Host syncs.** Reading a step's loss on the host waits for the step to finish. ``lag`` = 0
reads it at once (CPU: no cost). On CUDA the default ``lag`` = 1 copies it to pinned memory
without blocking and reads it one step later, so the host never waits for the step it has just
queued and the GPU stays busy; a divergence is then acted on one step late, and because the ring
holds one more snapshot the weights put back and :attr:`diverged_at_step` are exactly those of
``lag`` = 0 (tested by forcing ``lag`` = 1 on CPU). Losses still in flight are read at every
epoch end, so a checkpoint never holds weights the guard has not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


def _loss_of(outputs: Any, trainer: pl.Trainer, key: str) -> Tensor | float | None:
    """The step's loss: the tensor (or ``"loss"`` entry) ``training_step`` returned, else the
    value logged under ``key`` (manual-optimization modules may return nothing)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if outputs is None:
        outputs = trainer.callback_metrics.get(key)
    if isinstance(outputs, Tensor):
        return outputs.detach().reshape(-1)[0] if outputs.numel() else None
    if isinstance(outputs, (int, float)):
        return float(outputs)
    return None


@dataclass
class _Verdict:
    """One step's loss on its way to the host, ready to read once ``event`` (CUDA) completed."""

    step: int
    loss: Tensor | float | None
    event: Any = None

    def read(self) -> float | None:
        if self.event is not None:
            self.event.synchronize()
        return None if self.loss is None else float(self.loss)


class DivergenceGuard(Callback):
    """Restore the last good weights and stop the fit at the first diverging step.

    Args:
        max_abs_loss: a step whose ``|loss|`` exceeds this counts as diverged (``None``: only
            non-finite losses and weights do).
        loss_key: the logged metric read when ``training_step`` returns no loss.
        lag: steps between a verdict's computation on the device and its reading on the host
            (``None``: 1 on CUDA, 0 elsewhere); see the module docstring.

    After the fit, :attr:`diverged_at_step` is the global step (number of optimizer steps taken,
    counting the bad one) at which divergence was detected, or ``None``; :attr:`reason` says why.
    """

    def __init__(
        self,
        max_abs_loss: float | None = None,
        loss_key: str = "train/loss",
        lag: int | None = None,
    ) -> None:
        if max_abs_loss is not None and not max_abs_loss > 0:
            raise ValueError(f"max_abs_loss must be positive or None, got {max_abs_loss}")
        if lag is not None and lag < 0:
            raise ValueError(f"lag must be >= 0 or None, got {lag}")
        self.max_abs_loss = max_abs_loss
        self.loss_key = loss_key
        self.lag = lag
        self.diverged_at_step: int | None = None
        self.reason: str | None = None
        self._live: list[Tensor] = []  # the module's parameters and buffers, in place
        self._floats: list[Tensor] = []  # their floating-point part (the finiteness check)
        self._ring: list[list[Tensor]] = []  # snapshots W_s in slot s % len(ring)
        self._in_flight: list[_Verdict] = []
        self._lag, self._start, self._pinned = 0, 0, False  # set per fit in on_train_start

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

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self, step: int) -> None:
        """Copy the live weights W_step into their ring slot."""
        with torch.no_grad():
            torch._foreach_copy_(self._ring[step % len(self._ring)], self._live)

    def _restore(self, step: int) -> None:
        """Put W_max(step, start) back (the ring still holds it)."""
        step = max(step, self._start)
        with torch.no_grad():
            torch._foreach_copy_(self._live, self._ring[step % len(self._ring)])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.diverged_at_step is not None:  # resumed from a checkpoint saved after divergence
            trainer.should_stop = True
        lag = self.lag if self.lag is not None else int(pl_module.device.type == "cuda")
        self._pinned = pl_module.device.type == "cuda"
        self._live = [t.detach() for t in pl_module.state_dict(keep_vars=True).values()]
        self._floats = [t for t in self._live if t.is_floating_point()]
        self._ring = [[t.clone() for t in self._live] for _ in range(lag + 2)]
        self._in_flight, self._start, self._lag = [], trainer.global_step, lag
        self._snapshot(self._start)

    # -- verdicts -------------------------------------------------------------------------------

    def _verdict(self, step: int, loss: Tensor | float | None) -> _Verdict:
        """Step ``step``'s loss, on its way to the host (without blocking on CUDA)."""
        if not self._pinned or not isinstance(loss, Tensor):
            return _Verdict(step, loss)
        host = torch.empty((), dtype=loss.dtype, pin_memory=True)
        host.copy_(loss, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Verdict(step, host, event)

    def _diverged(self, trainer: pl.Trainer, problem: str | None, restore: int, step: int) -> bool:
        """Restore W_restore and stop if ``problem`` (on any process); returns whether it did."""
        # under DDP every rank sees its own loss: all stop if any one diverges
        if not trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            return False
        self._restore(restore)
        self.diverged_at_step, self.reason = step, problem or "diverged on another process"
        self._in_flight.clear()
        trainer.should_stop = True
        return True

    def _judge(self, trainer: pl.Trainer, n: int) -> bool:
        """Read the oldest ``n`` losses in flight; on the first bad one restore W_{t-2} (the
        loss of step t rejects W_{t-1}) and stop. Returns whether the fit diverged."""
        for _ in range(n):
            verdict = self._in_flight.pop(0)
            problem = self._loss_problem(verdict.read())
            if self._diverged(trainer, problem, verdict.step - 2, verdict.step):
                return True
        return False

    def _check_weights(self, trainer: pl.Trainer) -> None:
        """Non-finite weights after the last step: put W_{t-1} back (one sync, at epoch ends)."""
        if self._floats:
            max_abs = torch.stack(torch._foreach_norm(self._floats, math.inf)).max()
            bad = not bool(torch.isfinite(max_abs))
            step = trainer.global_step
            self._diverged(
                trainer, "the weights are no longer finite" if bad else None, step - 1, step
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.diverged_at_step is not None or not self._ring:
            return
        step = trainer.global_step
        self._in_flight.append(self._verdict(step, _loss_of(outputs, trainer, self.loss_key)))
        if not self._judge(trainer, max(len(self._in_flight) - self._lag, 0)):
            self._snapshot(step)

    def _settle(self, trainer: pl.Trainer) -> None:
        """Judge the losses still in flight, then the weights."""
        if self.diverged_at_step is None and self._ring:
            if not self._judge(trainer, len(self._in_flight)):
                self._check_weights(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._settle(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._settle(trainer)
        self._ring, self._live, self._floats = [], [], []  # free the copies
