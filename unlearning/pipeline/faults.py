"""Fault injection for the kill-safety tests (issue #8): a tiny, opt-in test hook.

Setting ``UNLEARNING_FAULT=<stage>:<epoch>`` makes the process send itself ``SIGKILL`` at the
start of that epoch of that stage (``pretrain``, ``oracle``, ``unlearn``; ``evaluate:0`` just
before evaluation), i.e. right after the previous epoch's checkpoint was written — the worst
case for a preempted job, with no chance to clean up. ``<stage>:<epoch>:TERM`` sends ``SIGTERM``
instead (what SLURM sends before a preemption). Unset (the default), the hook does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from lightning.pytorch.callbacks import Callback

ENV = "UNLEARNING_FAULT"


def inject(stage: str, point: int | str) -> None:
    """Kill this process if ``$UNLEARNING_FAULT`` names ``<stage>:<point>`` (see module doc)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, sig = spec.partition(f"{stage}:{point}")
    if target or sig not in ("", ":TERM"):
        return
    print(f"[fault] {ENV}={spec}: sending {sig[1:] or 'KILL'} to myself", flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGTERM if sig else signal.SIGKILL)


class FaultInjection(Callback):
    """Calls :func:`inject` with ``stage`` and the epoch at the start of every training epoch."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        inject(self.stage, trainer.current_epoch)


def fault_callbacks(stage: str) -> list[Callback]:
    """``[FaultInjection(stage)]`` when ``$UNLEARNING_FAULT`` is set, else nothing: a Trainer
    dispatches every hook to every callback, ~10 calls a step, so production runs go without."""
    return [FaultInjection(stage)] if os.environ.get(ENV) else []
