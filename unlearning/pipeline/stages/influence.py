"""The influence stage (002 App. M): the train×train influence matrix of ``split=influence_pc``
and its principal components, cached so that the six influence-PC forget sets of one dataset,
model and attribution share one matrix.

``split.attribution`` chooses the construction (:mod:`unlearning.memorization.influence`):

* ``datamodel``: from the memorization stage's members (their subsets and margins,
  ``members.npz`` in the memorization entry);
* ``trak``: TRAK scores of the pretrained model f_A (the pretrain entry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource
from datamodules.splits import INFLUENCE_SPLIT
from unlearning.memorization.influence import (
    datamodel_influence,
    principal_components,
    save_components,
    trak_influence,
)
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.stages.scores import (
    MEMBERS_FILE,
    compute_memorization,
    load_members,
    stack_dataset,
)
from unlearning.pipeline.stages.training import load_model

INFLUENCE_FILE = "influence.npz"
#: principal components kept in the entry (002 App. M uses the first two)
COMPONENTS = 2


def uses_influence(cfg: DictConfig) -> bool:
    """Whether the ``split`` rule needs the influence matrix."""
    return cfg.split.name == INFLUENCE_SPLIT


def influence_key(
    cfg: DictConfig, pretrain: dict[str, Any], memorization: dict[str, Any]
) -> dict[str, Any]:
    """What the influence entry depends on: the attribution settings of ``cfg.split`` and the
    stage it reads — the memorization stage's key ``memorization`` (its members: dataset,
    model, recipe, K) for ``datamodel``, the pretrain stage's key ``pretrain`` (f_A) for
    ``trak``. The selection keys (component, ends, size) are absent: all six forget sets share
    one entry."""
    split = cfg.split
    settings: dict[str, Any] = {
        "attribution": split.attribution,
        "self_influence": bool(split.self_influence),
    }
    if split.attribution == "trak":
        trak = {**settings, "proj_dim": int(split.proj_dim), "seed": int(split.seed)}
        return {"influence": trak, "pretrain": pretrain}
    return {"influence": settings, "memorization": memorization}


def compute_influence(
    cfg: DictConfig, source: ImageSource, upstream: Path, work_dir: Path
) -> dict[str, Any]:
    """The influence matrix of S on S and its top :data:`COMPONENTS` principal components, saved
    as ``influence.npz`` (:func:`unlearning.memorization.influence.save_components`).
    ``upstream`` is the memorization entry (``datamodel``) or the pretrain entry (``trak``).
    Returns the entry's metadata: the construction, how many models it used and each
    component's share of the variance."""
    split = cfg.split
    if split.attribution == "datamodel":
        members = load_members(upstream)
        if members is None:
            raise DataConfigError(
                "split.attribution",
                "datamodel",
                f"the memorization entry {upstream} holds no {MEMBERS_FILE} (each member's subset "
                "and margins): use memorization.source=estimate, or split.attribution=trak",
            )
        in_mask, margins = members["in_mask"], members["margins"]
        infl, models = datamodel_influence(in_mask, margins), int(in_mask.shape[0])
    else:
        x, y = stack_dataset(source.dataset("train", augment=False))
        model = load_model(cfg, upstream)
        infl, models = trak_influence([model], x, y, int(split.proj_dim), int(split.seed)), 1
    pcs = principal_components(infl, COMPONENTS, self_influence=bool(split.self_influence))
    save_components(work_dir / INFLUENCE_FILE, infl, pcs)
    return {
        "attribution": str(split.attribution),
        "models": models,
        **{f"explained_pc{c + 1}": float(v) for c, v in enumerate(pcs.explained)},
    }


def influence_entry(
    cfg: DictConfig,
    source: ImageSource,
    cache: StageCache,
    keys: dict[str, dict[str, Any]],
    pretrained: Path,
) -> Path:
    """The cached influence entry (computed once per :func:`influence_key`): reads the
    memorization entry (computing it if absent, like ``mem_*`` splits) or the pretrain entry
    ``pretrained``. ``keys`` are the job's stage keys, with ``memorization`` and ``influence``
    (:func:`unlearning.pipeline.keys.stage_configs`)."""
    if cfg.split.attribution == "datamodel":
        upstream = cache.get_or_compute(
            "memorization", keys["memorization"], lambda d: compute_memorization(cfg, source, d)
        )
    else:
        upstream = pretrained
    return cache.get_or_compute(
        "influence", keys["influence"], lambda d: compute_influence(cfg, source, upstream, d)
    )


def load_projections(entry: Path) -> np.ndarray:
    """Each training sample's projection on the principal components, (|S|, components)."""
    with np.load(entry / INFLUENCE_FILE) as data:
        return data["projections"]
