"""Hand a finished job's metrics and figures to its loggers (CSV, W&B, ...)."""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch.loggers import Logger


def publish(
    loggers: list[Logger], metrics: dict[str, float], status: str, images: list[Path]
) -> None:
    """Log the finite ``metrics`` (same keys as ``results.json``) to every logger, then close each
    with the job's ``status``. ``images`` are the PNGs the job wrote (loggers that show images
    may log them)."""
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        logger.save()
        logger.finalize(status)
