"""Training stages: f_A on S (pretraining) and the oracle f_A(R) on R, with the same recipe
(000 App. C.1), and the pieces every stage shares (trainer, sharpness callback, model loading)."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from torch import nn

from callbacks.rng_state import RNGStateCheckpoint
from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.config.topology import per_device_batch_size
from unlearning.methods.erm import ERM
from unlearning.pipeline.distributed import is_rank_zero
from unlearning.pipeline.faults import fault_callbacks
from unlearning.pipeline.resume import LatestCheckpoint, resume_from

# Lightning's advice to add DataLoader workers does not apply to in-memory tensors.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings(
    "ignore", message=".*number of training batches.*smaller than the logging interval.*"
)
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
# a resumed stage finds its own checkpoint directory: that is the point
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
# Lightning's per-Trainer banners (accelerator, tips, "max_epochs reached") would print three
# times per run; our own stage log lines say what runs.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


MODEL_FILE = "model.pt"


def sharpness_callbacks(optim_cfg: DictConfig, rho: float | None = None) -> list[Callback]:
    """The sharpness-aware callback of an ``optim`` preset (SPEC §1), or none for plain SGD.

    ``rho`` (the top-level key) overrides the preset's radius when given.
    """
    spec = optim_cfg.get("sharpness")
    if spec is None:
        return []
    return [instantiate(spec, rho=rho) if rho is not None else instantiate(spec)]


def make_trainer(
    cfg: DictConfig,
    max_epochs: int,
    callbacks: list[Callback],
    logger: Any,
    root: Path,
    **overrides: Any,
) -> L.Trainer:
    """A Lightning ``Trainer`` from the ``trainer`` preset with the stage's epochs and hooks
    (``overrides``: further ``Trainer`` arguments the stage needs)."""
    return instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(root),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **overrides,
    )


def prepare_backbone(cfg: DictConfig, net: nn.Module) -> nn.Module:
    """``net`` as a training stage runs it: in ``channels_last`` memory format and/or compiled
    with ``torch.compile`` when the top-level keys ``channels_last`` / ``compile`` ask for it
    (GPU settings, docs/config/trainer.md). Both act in place, so parameter names, ``state_dict``
    keys and the saved weights are those of the plain module. Call it after a method's
    constructor, so reference copies (``frozen_copy``) stay uncompiled."""
    if cfg.get("channels_last"):
        net.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        net.compile()  # lazy: compiles at the first forward pass
    return net


def load_model(cfg: DictConfig, entry: Path) -> nn.Module:
    """A fresh backbone from ``cfg.model`` with the weights stored in a cache entry."""
    net = instantiate(cfg.model)
    net.load_state_dict(torch.load(entry / MODEL_FILE, map_location="cpu", weights_only=True))
    return net


def train_from_scratch(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray | None,
    train_set: str,
    work_dir: Path,
) -> dict[str, Any]:
    """Train ``cfg.model`` from a fixed init on ``train_set`` with the pretraining settings
    (optimizer A = ``pretrain.optim``, 000 App. C.1): f_A on ``train`` = S, or the oracle
    f_A(R) on ``retain`` = R. Checkpoints every epoch (with the RNG states) into ``work_dir`` and
    resumes from the last one after an interruption, ending with the same weights as an
    uninterrupted run on CPU.
    """
    p = cfg.pretrain
    L.seed_everything(p.seed, workers=True, verbose=False)
    module = ERM(
        instantiate(cfg.model),
        optimizer=instantiate(p.optim.optimizer),
        lr=p.lr,
        epochs=p.epochs,
        scheduler=p.scheduler,
        train_set=train_set,
        name="pretrain" if train_set == "train" else "oracle",
    )
    prepare_backbone(cfg, module.net)
    data = UnlearningDataModule(
        source,
        forget_indices,
        (train_set,),
        per_device_batch_size(cfg, "pretrain.batch_size"),  # B / W under DDP
        cfg.eval_batch_size,
        num_workers=cfg.num_workers,
    )
    ckpt_dir = work_dir / "checkpoints"
    checkpoint = LatestCheckpoint(ckpt_dir)  # the newest epoch's checkpoint, for resume_from
    trainer = make_trainer(
        cfg,
        p.epochs,
        [
            checkpoint,
            RNGStateCheckpoint(),
            *sharpness_callbacks(p.optim),
            *fault_callbacks(module.method_name),
        ],
        CSVLogger(work_dir, name="logs"),  # one version per attempt (resumes keep earlier logs)
        work_dir,
    )
    last = ckpt_dir / "latest.ckpt"
    start = time.perf_counter()
    resume = resume_from(last, module.method_name, p.epochs)  # None: start (over)
    trainer.fit(module, data, ckpt_path=resume, weights_only=True)
    if trainer.interrupted or trainer.current_epoch < p.epochs:
        # never let an unfinished model become a cache entry
        raise RuntimeError(f"training stopped at epoch {trainer.current_epoch} of {p.epochs}")
    if is_rank_zero():  # the ranks of a DDP fit hold the same weights; one writes them
        torch.save(module.net.state_dict(), work_dir / MODEL_FILE)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {"train_seconds": time.perf_counter() - start, "epochs": p.epochs}
