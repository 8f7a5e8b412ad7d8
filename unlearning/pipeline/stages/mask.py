"""The forget-mask stage: a saliency mask over f_A's parameters for the methods that work on one
(``needs_forget_mask``: Sharp MinMax, 000 App. C.1; SalUn), sized by the method config keys the
method declares (:attr:`~unlearning.methods.base.UnlearningMethod.mask_keys`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.files import writing
from unlearning.methods.base import method_class
from unlearning.pipeline.stages.training import load_model

MASK_FILE = "forget_mask.pt"


def compute_forget_mask(
    cfg: DictConfig, source: ImageSource, forget_indices: np.ndarray, original: Path, work_dir: Path
) -> dict[str, Any]:
    """The top ``fraction`` of f_A's parameter entries by ``|Σ_b ∇CE(F_b)|`` over one pass of F
    in batches of ``batch_size`` (000 App. C.1; :mod:`unlearning.methods.saliency`), both read
    from the method config keys the method's ``mask_keys`` name (``method.fraction`` and
    ``method.batch_size`` for :class:`~unlearning.methods.masked.MaskedMethod`)."""
    from unlearning.methods.saliency import forget_gradient_saliency, top_fraction_mask

    cls = method_class(cfg.method._target_)
    settings = cls.mask_settings(cfg.method)
    net = load_model(cfg, original)
    data = UnlearningDataModule(source, forget_indices, num_workers=cfg.num_workers)
    saliency = forget_gradient_saliency(net, data.eval_dataloader("forget", settings["batch_size"]))
    key = f"method.{cls.mask_keys['fraction']}"
    masks = top_fraction_mask(saliency, settings["fraction"], key=key)
    # the key is a placeholder: the stage cache holding work_dir names its own
    with writing(work_dir / MASK_FILE, "the forget mask", "paths.cache_dir"):
        torch.save(masks, work_dir / MASK_FILE)
    return {"fraction": float(settings["fraction"])}
