"""The pipeline's stages (SPEC §0): train from scratch (pretraining f_A on S, the oracle f_A(R)
on R), forget-set selection, and unlearning from f_A. Each function does one stage's work given
the composed config; :mod:`unlearning.pipeline` wires them to the cache.
"""

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
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig
from torch import nn

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource
from datamodules.splits import (
    class_forget_set,
    level_overlaps,
    memorization_levels,
    mixed_memorization_forget_set,
    random_forget_set,
)
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.methods.erm import ERM

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
FORGET_FILE = "forget_indices.npy"

# Lightning's advice to add DataLoader workers does not apply to in-memory tensors.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings(
    "ignore", message=".*number of training batches.*smaller than the logging interval.*"
)
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
# Lightning's per-Trainer banners (accelerator, tips, "max_epochs reached") would print three
# times per run; our own stage log lines say what runs.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def sharpness_callbacks(optim_cfg: DictConfig, rho: float | None = None) -> list[Callback]:
    """The sharpness-aware callback of an ``optim`` preset (SPEC §1), or none for plain SGD.

    ``rho`` (the top-level key) overrides the preset's radius when given.
    """
    spec = optim_cfg.get("sharpness")
    if spec is None:
        return []
    return [instantiate(spec, rho=rho) if rho is not None else instantiate(spec)]


def make_trainer(
    cfg: DictConfig, max_epochs: int, callbacks: list[Callback], logger: Any, root: Path
) -> L.Trainer:
    """A Lightning ``Trainer`` from the ``trainer`` preset with the stage's epochs and hooks."""
    return instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(root),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )


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
    f_A(R) on ``retain`` = R. Checkpoints every epoch into ``work_dir`` and resumes from the last
    one after an interruption.
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
    data = UnlearningDataModule(
        source,
        forget_indices,
        (train_set,),
        p.batch_size,
        cfg.eval_batch_size,
        num_workers=cfg.num_workers,
    )
    ckpt_dir = work_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
    trainer = make_trainer(
        cfg,
        p.epochs,
        [checkpoint, *sharpness_callbacks(p.optim)],
        CSVLogger(work_dir, name="logs", version=0),
        work_dir,
    )
    last = ckpt_dir / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(module, data, ckpt_path=str(last) if last.exists() else None)
    torch.save(module.net.state_dict(), work_dir / MODEL_FILE)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {"train_seconds": time.perf_counter() - start, "epochs": p.epochs}


MEMORIZATION_SPLITS = ("mem_high", "mem_mid", "mem_low", "mix")
SCORES_FILE = "scores.npz"
TEST_FILE = "test_indices.npy"


def uses_scores(cfg: DictConfig) -> bool:
    """Whether the ``split`` rule needs memorization scores."""
    return cfg.split.name in MEMORIZATION_SPLITS


def compute_memorization(cfg: DictConfig, source: ImageSource, work_dir: Path) -> dict[str, Any]:
    """Memorization scores of S (SPEC §4): from a score file, or the Feldman–Zhang estimator
    (000 eq. 9) with members trained like ``cfg.model``; saved as ``scores.npz``."""
    mem = cfg.memorization
    n = len(source.targets("train"))
    if mem.source == "file":
        scores = read_score_file(Path(mem.path), mem.key, source.targets("train"))
        np.savez(work_dir / SCORES_FILE, scores=scores, stderr=np.full(n, np.nan))
        return {"source": "file", "is_proxy": 0}
    x, y = stack_dataset(source.dataset("train", augment=False))
    if mem.source == "learning_speed":
        from unlearning.memorization_proxies import learning_speed_proxy

        scores = learning_speed_proxy(
            lambda: instantiate(cfg.model),
            x,
            y,
            epochs=mem.epochs,
            lr=mem.lr,
            batch_size=mem.batch_size,
            momentum=mem.momentum,
            weight_decay=mem.weight_decay,
            seed=mem.seed,
            eval_batch_size=cfg.eval_batch_size,
        )
        np.savez(work_dir / SCORES_FILE, scores=scores, stderr=np.full(n, np.nan))
        return {"source": "learning_speed", "is_proxy": 1}
    from unlearning.memorization import estimate_memorization

    result = estimate_memorization(
        lambda: instantiate(cfg.model),
        x,
        y,
        members=mem.members,
        fraction=mem.fraction,
        epochs=mem.epochs,
        lr=mem.lr,
        batch_size=mem.batch_size,
        momentum=mem.momentum,
        weight_decay=mem.weight_decay,
        seed=mem.seed,
        strategy=mem.strategy,
        chunk_size=mem.chunk_size,
        workers=mem.workers,
        work_dir=work_dir / "members",
        progress=bool(cfg.trainer.get("enable_progress_bar", True)),
        threads=mem.get("threads"),
    )
    np.savez(
        work_dir / SCORES_FILE,
        scores=result.scores,
        stderr=result.stderr,
        in_mask=result.in_mask,
        correct=result.correct,
    )
    shutil.rmtree(work_dir / "members", ignore_errors=True)
    return {"source": "estimate", "members": int(mem.members), "is_proxy": 0}


def read_score_file(path: Path, key: str, labels: np.ndarray) -> np.ndarray:
    """Scores from a ``.npz`` score file (array ``key``; optional ``tr_labels`` checked against
    the training labels); its length must equal |S|. Errors name ``memorization.path``."""
    from unlearning.memorization import load_score_file

    try:
        return load_score_file(path, len(labels), labels=labels, key=key)
    except FileNotFoundError:
        fix = "no score file there: give the path of a .npz file (docs/memorization.md)"
        raise DataConfigError("memorization.path", str(path), fix) from None
    except ValueError as error:
        raise DataConfigError("memorization.path", str(path), str(error)) from None


def stack_dataset(dataset: Any, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset as two tensors (images, labels); in-memory sources are read directly."""
    if (
        hasattr(dataset, "x")
        and hasattr(dataset, "y")
        and getattr(dataset, "transform", None) is None
    ):
        return dataset.x, dataset.y
    xs, ys = [], []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def select_forget_set(
    cfg: DictConfig, source: ImageSource, scores: np.ndarray | None, work_dir: Path
) -> dict[str, Any]:
    """Choose F by the ``split`` rule (SPEC §3), save its indices (and, for class/group
    forgetting, the test indices that remain), and return summary numbers for the results."""
    split, targets = cfg.split, source.targets("train")
    extra: dict[str, Any] = {}
    test_indices = None
    if split.name == "random":
        forget = random_forget_set(targets, split.size, split.seed, split.stratified)
    elif split.name in MEMORIZATION_SPLITS:
        assert scores is not None
        levels = memorization_levels(scores, split.size, disjoint=split.get("disjoint", False))
        forget = (
            mixed_memorization_forget_set(scores, split.size)
            if split.name == "mix"
            else levels[split.name.removeprefix("mem_")]
        )
        extra.update({f"overlap_{k}": v for k, v in level_overlaps(levels).items()})
        extra["mean_mem"] = float(np.nanmean(scores[forget]))
        extra["mean_mem_all"] = float(np.nanmean(scores))
    elif split.name == "class":
        forget = class_forget_set(targets, split.label)
        test_indices = np.flatnonzero(source.targets("test") != split.label)
    elif split.name == "group":
        if not hasattr(source, "fine_targets"):
            raise DataConfigError(
                "split",
                "group",
                f"dataset={cfg.dataset.name} has no sub-classes; use dataset=cifar20",
            )
        forget = class_forget_set(
            source.fine_targets("train"), split.fine_label, "split.fine_label"
        )
        test_indices = np.flatnonzero(source.fine_targets("test") != split.fine_label)
    else:
        raise DataConfigError("split.name", split.name, "unknown split rule")
    np.save(work_dir / FORGET_FILE, forget)
    if test_indices is not None:
        np.save(work_dir / TEST_FILE, test_indices)
    flipped = getattr(source, "flipped", None)
    if flipped is not None:
        extra["n_noisy_forget"] = int(np.isin(forget, flipped).sum())
    return {"n_forget": int(len(forget)), **extra}


MASK_FILE = "forget_mask.pt"


def needs_forget_mask(cfg: DictConfig) -> bool:
    """Whether ``cfg.method`` splits the model by a saliency mask (Sharp MinMax, SalUn)."""
    return bool(getattr(get_class(cfg.method._target_), "needs_forget_mask", False))


def compute_forget_mask(
    cfg: DictConfig, source: ImageSource, forget_indices: np.ndarray, original: Path, work_dir: Path
) -> dict[str, Any]:
    """The top ``method.fraction`` of f_A's parameter entries by ``|Σ_b ∇CE(F_b)|`` over one
    pass of F in batches of ``method.batch_size`` (000 App. C.1; :mod:`unlearning.saliency`)."""
    from unlearning.saliency import forget_gradient_saliency, top_fraction_mask

    net = load_model(cfg, original)
    data = UnlearningDataModule(source, forget_indices, num_workers=cfg.num_workers)
    saliency = forget_gradient_saliency(net, data.eval_dataloader("forget", cfg.method.batch_size))
    masks = top_fraction_mask(saliency, cfg.method.fraction, key="method.fraction")
    torch.save(masks, work_dir / MASK_FILE)
    return {"fraction": float(cfg.method.fraction)}


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
