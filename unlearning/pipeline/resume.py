"""Resuming an interrupted training stage from its last epoch checkpoint (docs/pipeline.md).

Every training stage (pretraining, the oracle, unlearning) saves ``checkpoints/latest.ckpt``
(model, optimizer, scheduler, loop counters and — :class:`callbacks.rng_state.RNGStateCheckpoint`
— the random generators) at the end of each epoch into its ``<key>.partial/`` work directory.
:func:`resume_from` decides whether a rerun may continue from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from unlearning.files import writing

log = logging.getLogger(__name__)


def resume_from(path: Path, stage: str, max_epochs: int, allow_last: bool = True) -> str | None:
    """``str(path)`` if it is a readable checkpoint (``torch.load(weights_only=True)``: nothing
    in it can execute code) to resume ``stage`` from, else ``None``.

    A damaged checkpoint is deleted with a warning and the stage starts over. With
    ``allow_last=False`` a checkpoint of the stage's last epoch is not resumed from either (a
    method with one-shot work in ``on_fit_start``, e.g. IU, would otherwise apply it twice).
    """
    if not path.is_file():
        return None
    try:
        epoch = int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception as exc:  # truncated, wrong format, unpicklable content: never trust it
        log.warning(
            "[%s] checkpoint %s is unreadable (%s); starting the stage over", stage, path, exc
        )
        path.unlink(missing_ok=True)  # another DDP rank may have removed it already
        return None
    if not allow_last and epoch + 1 >= max_epochs:
        log.info("[%s] checkpoint %s is of the last epoch; starting the stage over", stage, path)
        path.unlink(missing_ok=True)  # another DDP rank may have removed it already
        return None
    log.info("[%s] resuming from %s (%d of %d epochs done)", stage, path, epoch + 1, max_epochs)
    return str(path)


class LatestCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/latest.ckpt`` at the end of every training epoch, replacing the previous
    one (Lightning writes ``last.ckpt`` only alongside a top-k save, so an explicit "latest" file
    is used): what :func:`resume_from` reads. Lightning writes it atomically.

    Its ``state_key`` is computed once: Lightning rebuilds every callback's key for every hook
    call (a profiler label), ~10 times a training step, and ``ModelCheckpoint``'s formats its
    whole configuration each time (bench item 2).

    A failed write (full disk, read-only folder; :func:`unlearning.files.writing`) stops the fit
    with one :class:`~unlearning.errors.WriteError` naming the file and ``what`` (issue 19); the
    previous epoch's checkpoint stays, so a rerun after freeing space resumes from it.
    """

    def __init__(self, dirpath: Path | str, what: str = "a training checkpoint") -> None:
        self._key: str | None = None
        self.what = what
        super().__init__(
            dirpath=dirpath, filename="latest", save_top_k=1, enable_version_counter=False
        )

    @property
    def state_key(self) -> str:
        if self._key is None:
            self._key = super().state_key
        return self._key

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        # the key is a placeholder: the stage cache holding the work directory names its own
        with writing(filepath, self.what, "paths.cache_dir"):
            super()._save_checkpoint(trainer, filepath)


class ElapsedTime(Callback):
    """Wall time of a fit summed over its attempts (kept in the checkpoint), so a resumed stage
    reports the time of all its epochs, not just those of the last attempt."""

    def __init__(self) -> None:
        self.previous = 0.0
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.previous + time.perf_counter() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous = float(state_dict["seconds"])

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()
