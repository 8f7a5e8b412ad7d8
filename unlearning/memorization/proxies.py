"""Cheap proxies of memorization (SPEC §4, source 3), for quick sweeps.

A proxy is *not* the Feldman–Zhang score (000 eq. 9): results record ``split/mem_is_proxy = 1``
and the config names the source, so a table never mixes the two silently.

* Learning speed (Jiang et al. 2021; the "learning-speed" proxy of SPEC §4): train one model on S
  with the pretraining recipe and record, after every epoch, the softmax probability it assigns
  to each sample's label. Samples learned late (low mean confidence over training) are the
  atypical, memorized ones: ``proxy(i) = 1 − mean_epochs p_t(y_i | x_i)``. Cost: one training
  run plus one evaluation pass over S per epoch, against K runs for the estimator. The run is
  the pipeline's (:func:`unlearning.pipeline.stages.scores.learning_speed_proxy`); this module
  only accumulates what it reads.
"""

from __future__ import annotations

import numpy as np
import torch


class LearningSpeed:
    """``1 − mean_t p_t(y_i | x_i)`` over the epochs :meth:`record` is called for.

    Args:
        labels: the labels y of S, ``(n,)``.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor) -> None:
        self.labels = torch.as_tensor(np.asarray(labels)).long()
        self.confidence = torch.zeros(len(self.labels), dtype=torch.float64)
        self.epochs = 0

    def record(self, logits: torch.Tensor) -> None:
        """One epoch's eval-mode logits on all of S, ``(n, classes)``."""
        probs = logits.detach().double().softmax(1)
        self.confidence += probs[torch.arange(len(self.labels)), self.labels]
        self.epochs += 1

    def scores(self) -> np.ndarray:
        """The proxy in [0, 1], ``(n,)``; higher = learned later = more memorization-like."""
        if self.epochs == 0:
            raise ValueError("learning speed needs at least one recorded epoch")
        return (1.0 - self.confidence / self.epochs).numpy()
