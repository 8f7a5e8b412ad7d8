"""The forget-set stage (SPEC §3): apply the ``split`` rule
(:func:`datamodules.splits.select_split`) and save F (and the remaining test indices for
class/group forgetting) in the cache entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from datamodules.sources import ImageSource
from datamodules.splits import select_split

FORGET_FILE = "forget_indices.npy"
TEST_FILE = "test_indices.npy"


def select_forget_set(
    cfg: DictConfig, source: ImageSource, scores: np.ndarray | None, work_dir: Path
) -> dict[str, Any]:
    """Save F's indices (and D_test's remaining indices, if any) into ``work_dir``; return the
    split's summary numbers for the entry's metadata."""
    split = select_split(OmegaConf.to_container(cfg.split, resolve=True), source, scores)
    np.save(work_dir / FORGET_FILE, split.forget)
    if split.test is not None:
        np.save(work_dir / TEST_FILE, split.test)
    return {"n_forget": int(len(split.forget)), **split.summary}
