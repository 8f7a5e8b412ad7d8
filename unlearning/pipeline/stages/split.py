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
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.stages.influence import load_projections

FORGET_FILE = "forget_indices.npy"
TEST_FILE = "test_indices.npy"


def select_forget_set(
    cfg: DictConfig,
    source: ImageSource,
    scores: np.ndarray | None,
    work_dir: Path,
    influence: Path | None = None,
) -> dict[str, Any]:
    """Save F's indices (and D_test's remaining indices, if any) into ``work_dir``; return the
    split's summary numbers for the entry's metadata. ``influence`` is the influence entry of
    ``split=influence_pc`` (:mod:`unlearning.pipeline.stages.influence`): its projections choose
    F, and its construction's model count and the chosen component's share of the variance are
    recorded (``influence_models``, ``influence_explained``)."""
    projections = load_projections(influence) if influence is not None else None
    split = select_split(
        OmegaConf.to_container(cfg.split, resolve=True), source, scores, projections
    )
    np.save(work_dir / FORGET_FILE, split.forget)
    if split.test is not None:
        np.save(work_dir / TEST_FILE, split.test)
    summary = {"n_forget": int(len(split.forget)), **split.summary}
    if influence is not None:
        meta = StageCache.meta(influence)
        summary["influence_models"] = int(meta["models"])
        summary["influence_explained"] = float(meta[f"explained_pc{cfg.split.component}"])
    return summary
