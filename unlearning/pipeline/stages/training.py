"""Training stages (SPEC §0): the one runner every stage that fits a model goes through —
pretraining f_A on S, the oracle f_A(R) on R (both here, with the same recipe, 000 App. C.1) and
unlearning (:mod:`unlearning.pipeline.stages.unlearn`) — and the pieces it uses (trainer,
backbone preparation, sharpness callback, model loading).

:func:`run_training_stage` owns the skeleton: seeding, building the module, preparing the
backbone, the sharpness-aware callback (or handing its settings to a method that steps itself),
the datamodule, the checkpoint and RNG-state callbacks, resuming, the fit, the stopped-early
check and the rank-0 save. A stage says only what differs (:class:`TrainingStage`).
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from callbacks.divergence import DivergenceGuard
from callbacks.rng_state import RNGStateCheckpoint
from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.config.topology import per_device_batch_size
from unlearning.errors import DivergedStageError
from unlearning.files import writing
from unlearning.methods.base import UnlearningMethod
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
log = logging.getLogger(__name__)


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


@dataclass
class TrainingStage:
    """What one training stage runs; :func:`run_training_stage` does the rest.

    Args:
        name: ``pretrain``, ``oracle`` or ``unlearn``: the prefix of its log lines, its
            fault-injection point (:mod:`unlearning.pipeline.faults`) and resume messages.
        seed: seeds every generator right before :attr:`build` (so the module's own draws,
            e.g. its initial weights, follow from it).
        build: makes the module (an :class:`~unlearning.methods.base.UnlearningMethod`).
        epochs: the fit's ``max_epochs``; stopping before it is an error unless
            :attr:`early_stop_ok`.
        batch_size_key: the config key of the global batch B (each device draws B / W).
        optim: the ``optim`` preset whose sharpness-aware callback wraps the step, or whose
            settings go to the method's ``use_sharpness`` when it ``owns_sharpness``.
        rho: overrides the preset's radius ρ when given.
        logger: the trainer's logger(s), or ``False``.
        prepare: stage-specific intake before the data is built (the forget mask).
        callbacks: stage callbacks, after the checkpoint and RNG-state ones (unlearning: its
            timer, divergence guard and the user's ``callbacks`` group).
        guard: the divergence guard among :attr:`callbacks`, whose verdict the stage reports.
        resume_last_epoch: resume from a checkpoint of the last epoch (``False`` for unlearning:
            IU's one-shot update runs in ``on_fit_start`` and would be applied twice).
        early_stop_ok: a callback that stops the fit before the last epoch (``EarlyStopping``,
            ``trainer.max_time``) ends the stage normally; otherwise that is an error, so an
            unfinished model never becomes a cache entry.
        diverged_key: when set, a divergence the :attr:`guard` reports is an error naming this
            config key (:class:`~unlearning.errors.DivergedStageError`) and no model is saved:
            pretraining and the oracle must end with a usable model, since every later job with
            their key reuses it (issue 19). Unset (unlearning), a divergence is a result.
    """

    name: str
    seed: int
    build: Callable[[], UnlearningMethod]
    epochs: int
    batch_size_key: str
    optim: DictConfig
    rho: float | None = None
    logger: Logger | Sequence[Logger] | bool = False
    prepare: Callable[[UnlearningMethod], None] | None = None
    callbacks: Sequence[Callback] = ()
    guard: DivergenceGuard | None = None
    resume_last_epoch: bool = True
    early_stop_ok: bool = False
    diverged_key: str | None = None


@dataclass
class StageOutcome:
    """A finished training stage: the module (its weights saved as ``model.pt``), the wall time
    of this attempt (resume to save), the epochs it ran and whether a callback stopped it early,
    and the divergence guard's verdict (``None``: no guard, or it did not fire)."""

    module: UnlearningMethod
    seconds: float
    epochs_run: int
    stopped_early: bool = False
    diverged_at_step: int | None = None
    diverged_reason: str | None = None


def run_training_stage(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray | None,
    stage: TrainingStage,
    work_dir: Path,
) -> StageOutcome:
    """Run ``stage`` in ``work_dir`` and save the backbone's weights as ``work_dir/model.pt``.

    Seeds with ``stage.seed``, builds the module, prepares its backbone (``channels_last`` /
    ``torch.compile``), attaches the ``optim`` preset's sharpness-aware callback or hands it to
    a method that ``owns_sharpness``, runs ``stage.prepare`` and builds the datamodule the
    method asks for (``train_sets``, ``epoch_schedule``). Checkpoints every epoch (with the RNG
    states) into ``work_dir/checkpoints/`` and resumes from the last one after an interruption,
    ending with the same weights as an uninterrupted run on CPU. Raises if the fit stopped before
    ``stage.epochs`` without the guard firing (unless ``stage.early_stop_ok`` and a callback
    asked to stop); with a guard, non-finite weights at the end also count as a divergence, which
    raises :class:`~unlearning.errors.DivergedStageError` when ``stage.diverged_key`` is set. A
    failed write of a checkpoint or the model raises :class:`~unlearning.errors.WriteError`.
    """
    L.seed_everything(stage.seed, workers=True, verbose=False)
    module = stage.build()
    prepare_backbone(cfg, module.net)  # channels_last / torch.compile (GPU settings)
    sharpness = sharpness_callbacks(stage.optim, stage.rho)
    if module.owns_sharpness:  # the method steps itself: it gets the settings, not a callback
        module.use_sharpness(sharpness[0] if sharpness else None)
        sharpness = []
    if stage.prepare is not None:
        stage.prepare(module)
    data = UnlearningDataModule(
        source,
        forget_indices,
        module.train_sets,
        per_device_batch_size(cfg, stage.batch_size_key),  # B / W under DDP
        cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        **module.epoch_schedule(),  # how an epoch walks the sets (joint batches by default)
    )
    ckpt_dir = work_dir / "checkpoints"
    callbacks = [
        *sharpness,
        # the newest epoch's checkpoint, for resume_from
        LatestCheckpoint(ckpt_dir, what=f"the {stage.name} stage's checkpoint"),
        RNGStateCheckpoint(),
        *stage.callbacks,  # after the sharpness callback: they see the finished step
        *fault_callbacks(stage.name),
    ]
    trainer = make_trainer(
        cfg,
        stage.epochs,
        callbacks,
        stage.logger,
        work_dir,
        reload_dataloaders_every_n_epochs=int(data.reload_every_epoch),
    )
    start = time.perf_counter()
    resume = resume_from(  # None: start (over)
        ckpt_dir / "latest.ckpt", stage.name, stage.epochs, allow_last=stage.resume_last_epoch
    )
    trainer.fit(module, data, ckpt_path=resume, weights_only=True)
    outcome = StageOutcome(module, 0.0, trainer.current_epoch)
    _check_finished(stage, trainer, module, outcome)
    if outcome.diverged_at_step is not None and stage.diverged_key is not None:
        # not a usable model: nothing to resume from either, a rerun starts the stage over
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        raise DivergedStageError(
            stage.diverged_key,
            OmegaConf.select(cfg, stage.diverged_key),
            stage.name,
            outcome.diverged_at_step,
            outcome.diverged_reason or "diverged",
        )
    if is_rank_zero():  # the ranks of a DDP fit hold the same weights; one writes them
        path = work_dir / MODEL_FILE
        # the key is a placeholder: the stage cache holding work_dir names its own
        with writing(path, f"the {stage.name} stage's model", "paths.cache_dir"):
            torch.save(module.net.state_dict(), path)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _check_finished(
    stage: TrainingStage, trainer: L.Trainer, module: UnlearningMethod, outcome: StageOutcome
) -> None:
    """Record how the fit ended in ``outcome``, or raise if it must not be kept (docs/pipeline.md:
    a diverged stage keeps its last finite weights; an early stop is kept only with
    ``stage.early_stop_ok`` and only when a callback asked for it, not after an interruption)."""
    guard = stage.guard
    if guard is not None and guard.diverged_at_step is not None:
        log.warning(
            "[%s] diverged at step %d (%s): kept the last finite weights",
            stage.name,
            guard.diverged_at_step,
            guard.reason,
        )
        outcome.diverged_at_step, outcome.diverged_reason = guard.diverged_at_step, guard.reason
        return
    if trainer.interrupted or trainer.current_epoch < stage.epochs:
        asked = trainer.should_stop and not trainer.interrupted
        if not (stage.early_stop_ok and asked):
            # never let an unfinished model become a cache entry
            raise RuntimeError(
                f"{stage.name} stopped at epoch {trainer.current_epoch} of {stage.epochs}"
            )
        log.info(
            "[%s] a callback stopped the fit after %d of %d epochs; keeping that model",
            stage.name,
            trainer.current_epoch,
            stage.epochs,
        )
        outcome.stopped_early = True
    if guard is not None and not all(torch.isfinite(p).all() for p in module.net.parameters()):
        # non-finite weights the guard cannot see (e.g. made in on_fit_end): still a divergence
        guard.diverged_at_step, guard.reason = trainer.global_step, "non-finite weights at the end"
        outcome.diverged_at_step, outcome.diverged_reason = guard.diverged_at_step, guard.reason


def train_from_scratch(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray | None,
    train_set: str,
    work_dir: Path,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train ``cfg.model`` from a fixed init on ``train_set`` with the pretraining settings
    (optimizer A = ``pretrain.optim``, scheduler ``pretrain.scheduler``; 000 App. C.1): f_A on
    ``train`` = S (stage ``pretrain``), or the oracle f_A(R) on ``retain`` = R (stage
    ``oracle``), through :func:`run_training_stage`. User callbacks (the ``callbacks`` group) do
    not apply: these models are cached and shared by every job with the same key. A
    :class:`~callbacks.divergence.DivergenceGuard` (non-finite loss or weights only) stops a
    diverging fit and the stage raises :class:`~unlearning.errors.DivergedStageError` naming
    ``pretrain.lr``, the step and the reason, so a broken model never becomes an entry (issue
    19). ``callbacks``: further callbacks for this fit only (the learning-speed proxy's
    per-epoch reading); they must not change the model. Returns the training time of this
    attempt and the epochs.
    """
    p = cfg.pretrain
    name = "pretrain" if train_set == "train" else "oracle"

    def build() -> ERM:
        return ERM(
            instantiate(cfg.model),
            optimizer=instantiate(p.optim.optimizer),
            lr=p.lr,
            epochs=p.epochs,
            scheduler=instantiate(p.get("scheduler")),  # None: a constant lr
            train_set=train_set,
            name=name,
        )

    guard = DivergenceGuard()  # no loss threshold: only a non-finite loss or weights is broken
    stage = TrainingStage(
        name=name,
        seed=p.seed,
        build=build,
        epochs=p.epochs,
        batch_size_key="pretrain.batch_size",
        optim=p.optim,
        logger=CSVLogger(work_dir, name="logs"),  # one version per attempt (resumes keep logs)
        callbacks=[guard, *callbacks],
        guard=guard,
        diverged_key="pretrain.lr",  # the most likely cause; the message names the step
    )
    outcome = run_training_stage(cfg, source, forget_indices, stage, work_dir)
    return {"train_seconds": outcome.seconds, "epochs": p.epochs}
