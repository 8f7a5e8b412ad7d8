"""Cheap proxies of memorization (SPEC §4, source 3), for quick sweeps.

A proxy is *not* the Feldman–Zhang score (000 eq. 9): results record ``split/mem_is_proxy = 1``
and the config names the source, so a table never mixes the two silently.

* Learning speed (Jiang et al. 2021; the "learning-speed" proxy of SPEC §4): train one model on S
  with the pretraining recipe (``cfg.pretrain`` with ``pretrain.seed = memorization.seed``) and
  record, after every epoch, the softmax probability it assigns to each sample's label. Samples
  learned late (low mean confidence over training) are the atypical, memorized ones:
  ``proxy(i) = 1 − mean_epochs p_t(y_i | x_i)``. Cost: one training run plus one evaluation
  pass over S per epoch, against K runs for the estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn

from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule


class _EpochEnd(Callback):
    """Calls ``hook(net, epoch)`` at the end of every training epoch of a Lightning fit."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.hook(pl_module.net, trainer.current_epoch)
        pl_module.net.train()


def learning_speed_proxy(cfg: DictConfig, source: ImageSource) -> np.ndarray:
    """``1 − mean_t p_t(y_i | x_i)`` over the end of each of the ``pretrain.epochs`` epochs of
    the pretraining recipe on all of S (seeded with ``memorization.seed``), in [0, 1]; higher =
    learned later = more memorization-like. Trained by the fast path
    (:func:`unlearning.pipeline.stages.fast_training.fit`) when it applies, else by the Lightning
    stage."""
    import copy
    import tempfile
    from pathlib import Path

    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.pipeline.stages.fast_training import fast_path_reason, fit
    from unlearning.pipeline.stages.training import train_from_scratch

    run = copy.deepcopy(cfg)
    run.pretrain.seed = int(cfg.memorization.seed)
    size = cfg.get("eval_batch_size")
    size = size if isinstance(size, int) else 1024  # "auto": the CPU's batch
    data = UnlearningDataModule(source, None, eval_batch_size=size)
    labels = torch.as_tensor(source.targets("train")).long()
    confidence = torch.zeros(len(labels), dtype=torch.float64)

    @torch.no_grad()
    def record(net: nn.Module, epoch: int) -> None:
        out = model_outputs(net, data.eval_dataloader("train"), embeddings=False)
        probs = out.logits.softmax(1)
        confidence.add_(probs[torch.arange(len(labels)), labels].double())

    if fast_path_reason(run) is None:
        fit(run, source, None, "train", epoch_end=record)
    else:
        with tempfile.TemporaryDirectory(prefix="learning-speed-") as tmp:
            train_from_scratch(run, source, None, "train", Path(tmp), callbacks=[_EpochEnd(record)])
    return (1.0 - confidence / int(run.pretrain.epochs)).numpy()
