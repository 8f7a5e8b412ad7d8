"""The unlearning stage: run ``method`` from f_A under ``optim`` (SPEC §0, §2)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from callbacks.divergence import DivergenceGuard
from callbacks.rng_state import RNGStateCheckpoint
from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.config.topology import per_device_batch_size
from unlearning.pipeline.distributed import is_rank_zero
from unlearning.pipeline.faults import fault_callbacks
from unlearning.pipeline.resume import ElapsedTime, LatestCheckpoint, resume_from
from unlearning.pipeline.stages.mask import MASK_FILE
from unlearning.pipeline.stages.training import (
    MODEL_FILE,
    load_model,
    make_trainer,
    prepare_backbone,
    sharpness_callbacks,
)

log = logging.getLogger(__name__)


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
    unlearned backbone's weights as ``work_dir/model.pt``.

    The ``optim`` preset's sharpness-aware callback wraps the method's step, unless the method
    steps its parts itself (``owns_sharpness``: it receives the settings instead). Checkpoints
    every epoch (with the RNG states) into ``work_dir/checkpoints/`` and resumes from the last
    one after an interruption. :class:`callbacks.divergence.DivergenceGuard` (``divergence.*``)
    stops the fit at the first step with a non-finite or exploding loss or non-finite weights
    and keeps the last finite weights. Returns the unlearning wall time in seconds (RTE, summed
    over resumed attempts), the status (``ok`` or ``diverged``) and the step it diverged at.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = instantiate(
        cfg.method, net=load_model(cfg, original), optimizer=instantiate(cfg.optim.optimizer)
    )
    prepare_backbone(cfg, module.net)  # channels_last / torch.compile (GPU settings)
    callbacks = sharpness_callbacks(cfg.optim, cfg.get("rho"))
    if getattr(module, "owns_sharpness", False):
        module.use_sharpness(callbacks[0] if callbacks else None)
        callbacks = []
    if mask_entry is not None:
        module.set_forget_mask(torch.load(mask_entry / MASK_FILE, weights_only=True))
    data = UnlearningDataModule(
        source,
        forget_indices,
        module.train_sets,
        per_device_batch_size(cfg, "method.batch_size"),  # B / W under DDP
        cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        **module.epoch_schedule(),  # how an epoch walks R and F (joint batches by default)
    )
    ckpt_dir = work_dir / "checkpoints"
    guard = DivergenceGuard(**(cfg.get("divergence") or {}))
    timer = ElapsedTime()
    callbacks = [
        *callbacks,
        LatestCheckpoint(ckpt_dir),
        RNGStateCheckpoint(),
        timer,
        guard,  # after the sharpness callback: checks the finished step
        *fault_callbacks("unlearn"),
    ]
    trainer = make_trainer(
        cfg,
        cfg.method.epochs,
        callbacks,
        loggers or False,
        work_dir,
        reload_dataloaders_every_n_epochs=int(data.reload_every_epoch),
    )
    # a checkpoint of the last epoch is not resumed: IU's one-shot update runs in on_fit_start
    last = resume_from(ckpt_dir / "latest.ckpt", "unlearn", cfg.method.epochs, allow_last=False)
    trainer.fit(module, data, ckpt_path=last, weights_only=True)
    if guard.diverged_at_step is not None:
        log.warning(
            "[unlearn] diverged at step %d (%s): kept the last finite weights",
            guard.diverged_at_step,
            guard.reason,
        )
    elif trainer.interrupted or trainer.current_epoch < cfg.method.epochs:
        raise RuntimeError(
            f"unlearning stopped at epoch {trainer.current_epoch} of {cfg.method.epochs}"
        )
    elif not all(torch.isfinite(p).all() for p in module.net.parameters()):
        # non-finite weights the guard cannot see (e.g. made in on_fit_end): still a divergence
        guard.diverged_at_step, guard.reason = trainer.global_step, "non-finite weights at the end"
    if is_rank_zero():  # the ranks of a DDP fit hold the same weights; one writes them
        torch.save(module.net.state_dict(), work_dir / MODEL_FILE)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {
        "rte_s": timer.seconds,
        "status": "ok" if guard.diverged_at_step is None else "diverged",
        "diverged_at_step": guard.diverged_at_step,
        "diverged_reason": guard.reason,
    }


def is_from_scratch(cfg: DictConfig) -> bool:
    """Whether ``cfg.method`` is ``retrain`` (served by the oracle stage)."""
    return bool(getattr(get_class(cfg.method._target_), "from_scratch", False))
