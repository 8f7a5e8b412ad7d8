"""The embedded default job the per-step benchmarks work from: its config, data source, forget
set and cached f_A (pretrained once per benchmark run into the run's own stage cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bench.common import compose_config

#: a stage cache shared by every item of one ``python -m bench`` run (set by bench.run_all), so
#: f_A is pretrained once; ``None``: each call uses ``<work>/cache``
SHARED_CACHE: Path | None = None


@dataclass
class DefaultJob:
    """``python train.py`` on the embedded digits: config, source, F and the cache entries."""

    cfg: DictConfig
    source: object
    forget: np.ndarray
    pretrained: Path
    work: Path


def default_job(work: Path, overrides: list[str] | None = None) -> DefaultJob:
    """Compose the default config (``overrides`` added), then pretrain f_A and select F through
    the pipeline's stage cache (cache hits after the first call); the oracle is not needed."""
    from unlearning.pipeline import stages
    from unlearning.pipeline.cache import StageCache
    from unlearning.pipeline.keys import stage_configs
    from unlearning.pipeline.run import check_inputs

    cfg = compose_config(overrides or [], work / "out", SHARED_CACHE or work / "cache")
    source = check_inputs(cfg)
    cache, keys = StageCache(cfg.paths.cache_dir), stage_configs(cfg)
    pretrained = cache.get_or_compute(
        "pretrain",
        keys["pretrain"],
        lambda d: stages.train_from_scratch(cfg, source, None, "train", d),
    )
    split = cache.get_or_compute(
        "split", keys["split"], lambda d: stages.select_forget_set(cfg, source, None, d)
    )
    return DefaultJob(cfg, source, np.load(split / stages.FORGET_FILE), pretrained, work)
