"""The unlearning stage: run ``method`` from f_A under ``optim`` (SPEC §0, §2)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from torch import nn

from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.stages.mask import MASK_FILE
from unlearning.stages.training import load_model, make_trainer, sharpness_callbacks


def unlearn(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray,
    original: Path,
    loggers: list[Logger],
    run_dir: Path,
    mask_entry: Path | None = None,
) -> tuple[nn.Module, float, str]:
    """Run the unlearning method ``cfg.method`` from f_A with optimizer ``cfg.optim``.

    The ``optim`` preset's sharpness-aware callback wraps the method's step, unless the method
    steps its parts itself (``owns_sharpness``: it receives the settings instead). Returns the
    unlearned backbone, the unlearning wall time in seconds (RTE) and a status: ``ok``, or
    ``diverged`` when the weights are no longer finite.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = instantiate(
        cfg.method, net=load_model(cfg, original), optimizer=instantiate(cfg.optim.optimizer)
    )
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
        cfg.method.batch_size,
        cfg.eval_batch_size,
        num_workers=cfg.num_workers,
    )
    trainer = make_trainer(cfg, cfg.method.epochs, callbacks, loggers or False, run_dir)
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    finite = all(torch.isfinite(p).all() for p in module.net.parameters())
    return module.net, seconds, "ok" if finite else "diverged"


def is_from_scratch(cfg: DictConfig) -> bool:
    """Whether ``cfg.method`` is ``retrain`` (served by the oracle stage)."""
    return bool(getattr(get_class(cfg.method._target_), "from_scratch", False))
