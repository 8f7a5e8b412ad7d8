"""The memorization-scores stage (SPEC §4): estimator, proxy or score file.

The Feldman–Zhang estimator's members are the pretraining recipe on random subsets (issue #15):
member k is ``cfg`` with ``pretrain.seed = memorization.seed + k`` trained on S_k (R = S_k,
F = S minus S_k) by the plain-PyTorch fast path
(:func:`~unlearning.pipeline.stages.fast_training.fit`, the same model as the Lightning stage)
when :func:`~unlearning.pipeline.stages.fast_training.fast_path_reason` allows it, else by the
Lightning stage :func:`~unlearning.pipeline.stages.training.train_from_scratch` itself. The
entry holds ``scores.npz`` and ``members.npz`` (each member's subset, margins and correctness;
:func:`load_members`), which the datamodel influence matrix reads.
"""

from __future__ import annotations

import copy
import functools
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource
from datamodules.splits import MEMORIZATION_SPLITS
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.memorization.estimator import TrainMember

log = logging.getLogger(__name__)

SCORES_FILE = "scores.npz"
#: the memorization entry's member record (``memorization.source=estimate``): ``in_mask`` (K, n)
#: bool, ``margins`` (K, n) float32 and ``correct`` (K, n) bool
MEMBERS_FILE = "members.npz"


def uses_scores(cfg: DictConfig) -> bool:
    """Whether the ``split`` rule needs memorization scores."""
    return cfg.split.name in MEMORIZATION_SPLITS


def member_config(cfg: DictConfig, k: int) -> DictConfig:
    """Memorization member ``k``'s config: ``cfg`` with ``pretrain.seed = memorization.seed + k``
    (a deep copy), so member k draws its own init and batch order, and on one device: the
    memorization stage runs on rank 0 alone, so a multi-process trainer (DDP) becomes one
    process with the same global batch ``pretrain.batch_size``."""
    from unlearning.config.topology import world_size

    member = copy.deepcopy(cfg)
    member.pretrain.seed = int(cfg.memorization.seed) + k
    if world_size(cfg) > 1:
        with open_dict(member.trainer):
            member.trainer.devices, member.trainer.num_nodes = 1, 1
            member.trainer.strategy = "auto"
    return member


def member_recipe(cfg: DictConfig) -> dict[str, Any]:
    """What determines a member besides its seed and subset: the pretraining recipe without
    ``pretrain.seed``, the model and the trainer (the member store's settings)."""
    recipe = OmegaConf.to_container(cfg.pretrain, resolve=True)
    assert isinstance(recipe, dict)
    recipe.pop("seed", None)
    return {
        "pretrain": recipe,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "memorization_seed": int(cfg.memorization.seed),
    }


def _eval_batch_size(cfg: DictConfig) -> int:
    size = cfg.get("eval_batch_size")
    return size if isinstance(size, int) else 1024


def _device(cfg: DictConfig) -> torch.device:
    """Where members are forwarded: the trainer's GPU when it has one, else the CPU."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def member_trainer(cfg: DictConfig, source: ImageSource) -> TrainMember:
    """The estimator's ``train_member`` for ``cfg``
    (:data:`~unlearning.memorization.estimator.TrainMember`): member ``k`` trained on its subset
    by the fast path or the Lightning stage (module doc), then forwarded once over S (test
    transforms, eval mode) for its margins (:func:`~unlearning.evaluation.metrics.klom.margins`)
    and correctness."""
    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.evaluation.metrics.klom import margins
    from unlearning.pipeline.stages.fast_training import fast_path_reason, fit
    from unlearning.pipeline.stages.training import load_model, train_from_scratch

    reason = fast_path_reason(member_config(cfg, 0))
    if reason is not None:
        log.info("memorization: members train through Lightning (fast path off: %s)", reason)
    data = UnlearningDataModule(source, None, eval_batch_size=_eval_batch_size(cfg))
    device = _device(cfg)

    def train(k: int, in_row: np.ndarray, member_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        member = member_config(cfg, k)
        forget = np.flatnonzero(~np.asarray(in_row, dtype=bool))
        net: nn.Module
        if reason is None:
            net, _ = fit(member, source, forget, "retain")
        else:
            train_from_scratch(member, source, forget, "retain", member_dir)
            net = load_model(member, member_dir)
        out = model_outputs(net.to(device), data.eval_dataloader("train"), embeddings=False)
        row = margins(out.logits, out.labels).astype(np.float32)
        return row, (out.logits.argmax(-1) == out.labels).numpy()

    return train


def worker_trainer(container: dict[str, Any]) -> TrainMember:
    """:func:`member_trainer` in a worker process of the estimate (``memorization.workers``):
    built from the job's resolved config ``container`` and its data source, rebuilt there."""
    from datamodules.sources import build_source

    cfg = OmegaConf.create(container)
    return member_trainer(cfg, build_source(cfg.dataset))


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as a plain resolved dict without Hydra's own node (what a worker can rebuild)."""
    out = {}
    for key in cfg:
        if key != "hydra":
            node = cfg[key]
            out[key] = (
                OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            )
    return out


def compute_memorization(cfg: DictConfig, source: ImageSource, work_dir: Path) -> dict[str, Any]:
    """Memorization scores of S (SPEC §4): from a score file, the learning-speed proxy, or the
    Feldman–Zhang estimator (000 eq. 9) with members trained by the pretraining recipe (module
    doc); saved as ``scores.npz`` (and ``members.npz`` for the estimator)."""
    mem = cfg.memorization
    labels = source.targets("train")
    n = len(labels)
    if mem.source == "file":
        scores = read_score_file(Path(mem.path), mem.key, labels)
        np.savez(work_dir / SCORES_FILE, scores=scores, stderr=np.full(n, np.nan))
        return {"source": "file", "is_proxy": 0}
    if mem.source == "learning_speed":
        scores = learning_speed_proxy(cfg, source)
        np.savez(work_dir / SCORES_FILE, scores=scores, stderr=np.full(n, np.nan))
        return {"source": "learning_speed", "is_proxy": 1}
    from unlearning.memorization.estimator import estimate_memorization
    from unlearning.pipeline.stages.fast_training import fast_path_reason

    # worker processes only for the CPU fast path (a GPU or Lightning member trains here)
    workers = int(mem.get("workers") or 1) if fast_path_reason(member_config(cfg, 0)) is None else 1
    result = estimate_memorization(
        member_trainer(cfg, source),
        labels,
        members=int(mem.members),
        fraction=float(mem.fraction),
        seed=int(mem.seed),
        work_dir=work_dir / "members",
        meta=member_recipe(cfg),
        progress=bool(cfg.trainer.get("enable_progress_bar", True)),
        threads=mem.get("threads"),
        workers=workers,
        worker_trainer=functools.partial(worker_trainer, _resolved(cfg)) if workers > 1 else None,
    )
    np.savez(
        work_dir / SCORES_FILE,
        scores=result.scores,
        stderr=result.stderr,
        in_mask=result.in_mask,
        correct=result.correct,
    )
    np.savez(
        work_dir / MEMBERS_FILE,
        in_mask=result.in_mask,
        margins=result.margins,
        correct=result.correct,
    )
    shutil.rmtree(work_dir / "members", ignore_errors=True)
    return {
        "source": "estimate",
        "members": int(mem.members),
        "is_proxy": 0,
        "train_seconds": round(result.seconds, 3),
    }


class _EpochEnd(Callback):
    """Calls ``hook(net, epoch)`` at the end of every training epoch of a Lightning fit."""

    def __init__(self, hook: Callable[[nn.Module, int], None]) -> None:
        self.hook = hook

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.hook(pl_module.net, trainer.current_epoch)
        pl_module.net.train()


def learning_speed_proxy(cfg: DictConfig, source: ImageSource) -> np.ndarray:
    """The learning-speed proxy (:class:`~unlearning.memorization.proxies.LearningSpeed`) of one
    run of the pretraining recipe on all of S with ``pretrain.seed = memorization.seed``, read
    after every epoch (eval mode, test transforms); trained by the fast path when it applies,
    else by the Lightning stage."""
    import tempfile

    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.memorization.proxies import LearningSpeed
    from unlearning.pipeline.stages.fast_training import fast_path_reason, fit
    from unlearning.pipeline.stages.training import train_from_scratch

    run = member_config(cfg, 0)  # pretrain.seed = memorization.seed, one device
    data = UnlearningDataModule(source, None, eval_batch_size=_eval_batch_size(cfg))
    speed = LearningSpeed(source.targets("train"))

    def record(net: nn.Module, epoch: int) -> None:
        speed.record(model_outputs(net, data.eval_dataloader("train"), embeddings=False).logits)

    if fast_path_reason(run) is None:
        fit(run, source, None, "train", epoch_end=record)
    else:
        with tempfile.TemporaryDirectory(prefix="learning-speed-") as tmp:
            train_from_scratch(run, source, None, "train", Path(tmp), callbacks=[_EpochEnd(record)])
    return speed.scores()


def load_members(entry: Path) -> dict[str, np.ndarray] | None:
    """The member record of a memorization entry (``members.npz``): ``in_mask`` and ``margins``,
    each (K, n), and ``correct`` when recorded; ``None`` when the entry has none (a score file
    or a proxy)."""
    path = Path(entry) / MEMBERS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in ("in_mask", "margins", "correct") if key in data}


def read_score_file(path: Path, key: str, labels: np.ndarray) -> np.ndarray:
    """Scores from a ``.npz`` score file (array ``key``; optional ``tr_labels`` checked against
    the training labels); its length must equal |S|. Errors name ``memorization.path``."""
    from unlearning.memorization.estimator import load_score_file

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
