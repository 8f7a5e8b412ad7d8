"""The forget-set stage (SPEC §3): apply the ``split`` rule and save F (and the remaining test
indices for class/group forgetting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource
from datamodules.splits import (
    class_forget_set,
    level_overlaps,
    memorization_levels,
    mixed_memorization_forget_set,
    random_forget_set,
)
from unlearning.stages.scores import MEMORIZATION_SPLITS

FORGET_FILE = "forget_indices.npy"


TEST_FILE = "test_indices.npy"


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
