"""The forget-mask stage: a saliency mask over f_A's parameters for methods that split the model
(Sharp MinMax, 000 App. C.1; SalUn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.pipeline.stages.training import load_model

MASK_FILE = "forget_mask.pt"


def needs_forget_mask(cfg: DictConfig) -> bool:
    """Whether ``cfg.method`` splits the model by a saliency mask (Sharp MinMax, SalUn)."""
    return bool(getattr(get_class(cfg.method._target_), "needs_forget_mask", False))


def compute_forget_mask(
    cfg: DictConfig, source: ImageSource, forget_indices: np.ndarray, original: Path, work_dir: Path
) -> dict[str, Any]:
    """The top ``method.fraction`` of f_A's parameter entries by ``|Σ_b ∇CE(F_b)|`` over one
    pass of F in batches of ``method.batch_size`` (000 App. C.1;
    :mod:`unlearning.methods.saliency`)."""
    from unlearning.methods.saliency import forget_gradient_saliency, top_fraction_mask

    net = load_model(cfg, original)
    data = UnlearningDataModule(source, forget_indices, num_workers=cfg.num_workers)
    saliency = forget_gradient_saliency(net, data.eval_dataloader("forget", cfg.method.batch_size))
    masks = top_fraction_mask(saliency, cfg.method.fraction, key="method.fraction")
    torch.save(masks, work_dir / MASK_FILE)
    return {"fraction": float(cfg.method.fraction)}
