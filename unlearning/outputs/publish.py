"""Hand a finished job's metrics and figures to its loggers (CSV, W&B, ...).

Every logger gets the finite metrics under the ``results.json`` keys (SPEC §0). A W&B logger
also gets them as the run summary (with ``status``), each PNG the job wrote as an image, and a
``wandb.Table`` of the per-set accuracies (one row per model and set, with the run's method,
optimizer, α and forget set), so a dashboard can group and compare runs by those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from unlearning.outputs.results import ACCURACY_SETS, MODELS, accuracy_key

#: run-config keys (set by conf/logger/wandb.yaml) copied into every row of the accuracy table.
TABLE_CONFIG_KEYS = ("method", "optim", "pretrain_optim", "alpha", "split", "dataset", "seed")


def accuracy_rows(metrics: Mapping[str, float], run_config: Mapping[str, Any]) -> list[list]:
    """Rows ``[*config values, model, set, accuracy]`` for every ``<model>/acc_<set>`` metric."""
    context = [run_config.get(k) for k in TABLE_CONFIG_KEYS]
    return [
        [*context, model, s, metrics[accuracy_key(model, s)]]
        for model in MODELS
        for s in ACCURACY_SETS
        if accuracy_key(model, s) in metrics
    ]


def publish_wandb(
    logger: WandbLogger, metrics: Mapping[str, float], status: str, images: list[Path]
) -> None:
    """Summary (same keys as ``results.json``, plus ``status``), images and accuracy table."""
    import wandb

    run = logger.experiment
    run.summary.update({**metrics, "status": status})
    for image in images:
        logger.log_image(key=f"plots/{image.stem}", images=[str(image)])
    columns = [*TABLE_CONFIG_KEYS, "model", "set", "accuracy"]
    table = wandb.Table(columns=columns, data=accuracy_rows(metrics, dict(run.config)))
    run.log({"accuracies": table})


def publish(
    loggers: list[Logger], metrics: dict[str, float], status: str, images: list[Path]
) -> None:
    """Log the finite ``metrics`` (same keys as ``results.json``) to every logger, then close each
    with the job's ``status``. ``images`` are the PNGs the job wrote; W&B shows them (and more,
    :func:`publish_wandb`). The W&B run itself is finished by
    :func:`unlearning.outputs.wandb_logger.one_run_per_job`, also when the job fails."""
    finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
    for logger in loggers:
        logger.log_metrics(finite)
        if isinstance(logger, WandbLogger):
            publish_wandb(logger, finite, status, images)
        logger.save()
        logger.finalize(status)
