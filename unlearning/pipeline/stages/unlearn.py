"""The unlearning stage: run ``method`` from f_A under ``optim`` (SPEC §0, §2)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from callbacks.divergence import DivergenceGuard
from datamodules.sources import ImageSource
from unlearning.methods.base import UnlearningMethod
from unlearning.pipeline.resume import ElapsedTime
from unlearning.pipeline.stages.mask import MASK_FILE
from unlearning.pipeline.stages.training import TrainingStage, load_model, run_training_stage

log = logging.getLogger(__name__)


def user_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the ``callbacks`` group (``callbacks=lr_monitor``,
    ``callbacks=[lr_monitor,early_stopping]``, ``+callbacks.<name>._target_=...``), in the order
    they were composed; an entry set to ``null`` is left out (docs/config/callbacks.md). They
    join the unlearning stage only: pretraining and the oracle are cached and shared."""
    return [instantiate(spec) for spec in (cfg.get("callbacks") or {}).values() if spec]


def unlearn(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray,
    original: Path,
    loggers: list[Logger],
    work_dir: Path,
    mask_entry: Path | None = None,
) -> dict[str, Any]:
    """Run the unlearning method ``cfg.method`` from f_A with optimizer ``cfg.optim`` and save the
    unlearned backbone's weights as ``work_dir/model.pt``, through the training-stage runner
    (:func:`~unlearning.pipeline.stages.training.run_training_stage`: checkpoints every epoch,
    resumes after an interruption).

    The ``optim`` preset's sharpness-aware callback wraps the method's step, unless the method
    steps its parts itself (``owns_sharpness``: it receives the settings instead); a method
    that ``needs_forget_mask`` gets the mask stage's mask (``mask_entry``) before training.
    :class:`callbacks.divergence.DivergenceGuard` (``divergence.*``) stops the fit at the first
    step with a non-finite or exploding loss or non-finite weights and keeps the last finite
    weights. The user's ``callbacks`` run too; one that stops the fit early (``EarlyStopping``)
    ends the stage normally. Returns the unlearning wall time in seconds (RTE, summed over
    resumed attempts), the status (``ok`` or ``diverged``), the step it diverged at and the
    epoch count of an early stop (``None`` if it ran every epoch).
    """
    guard = DivergenceGuard(**(cfg.get("divergence") or {}))
    timer = ElapsedTime()

    def build() -> UnlearningMethod:
        return instantiate(
            cfg.method, net=load_model(cfg, original), optimizer=instantiate(cfg.optim.optimizer)
        )

    def take_mask(module: UnlearningMethod) -> None:
        module.set_forget_mask(torch.load(mask_entry / MASK_FILE, weights_only=True))

    stage = TrainingStage(
        name="unlearn",
        seed=cfg.seed,
        build=build,
        epochs=cfg.method.epochs,
        batch_size_key="method.batch_size",
        optim=cfg.optim,
        rho=cfg.get("rho"),
        logger=loggers or False,
        prepare=take_mask if mask_entry is not None else None,
        # the guard comes after the sharpness callback: it checks the finished step
        callbacks=[timer, guard, *user_callbacks(cfg)],
        guard=guard,
        resume_last_epoch=False,  # IU's one-shot update runs in on_fit_start
        early_stop_ok=True,
    )
    outcome = run_training_stage(cfg, source, forget_indices, stage, work_dir)
    return {
        "rte_s": timer.seconds,
        "status": "ok" if outcome.diverged_at_step is None else "diverged",
        "diverged_at_step": outcome.diverged_at_step,
        "diverged_reason": outcome.diverged_reason,
        "stopped_early_at_epoch": outcome.epochs_run if outcome.stopped_early else None,
    }
