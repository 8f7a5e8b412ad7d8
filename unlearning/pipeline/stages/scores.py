"""The memorization-scores stage (SPEC §4): estimator, proxy or score file."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource
from datamodules.splits import MEMORIZATION_SPLITS

SCORES_FILE = "scores.npz"


def uses_scores(cfg: DictConfig) -> bool:
    """Whether the ``split`` rule needs memorization scores."""
    return cfg.split.name in MEMORIZATION_SPLITS


def model_factory(cfg: DictConfig) -> Callable[[], nn.Module]:
    """``cfg.model``'s constructor as a picklable zero-argument callable: ``instantiate`` bound to
    the resolved model config as a plain dict. ``strategy=processes`` pickles it for its spawned
    workers (issue 19: a lambda cannot be pickled; a config node would carry its whole tree)."""
    return functools.partial(instantiate, OmegaConf.to_container(cfg.model, resolve=True))


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
    recipe = {k: mem[k] for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay", "seed")}
    if mem.source == "learning_speed":
        from unlearning.memorization.proxies import learning_speed_proxy

        scores = learning_speed_proxy(
            model_factory(cfg), x, y, **recipe, eval_batch_size=cfg.eval_batch_size
        )
        np.savez(work_dir / SCORES_FILE, scores=scores, stderr=np.full(n, np.nan))
        return {"source": "learning_speed", "is_proxy": 1}
    from unlearning.memorization.estimator import estimate_memorization

    result = estimate_memorization(
        model_factory(cfg),
        x,
        y,
        **recipe,
        members=mem.members,
        fraction=mem.fraction,
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
