"""Top-1 accuracy with torchmetrics (SPEC §5): of a model on a loader (:func:`accuracy`, one
streamed pass) or of logits already computed (:func:`logits_accuracy`, what the pipeline reads
from the outputs the evaluation suite shares, so that each model sees each set once)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from unlearning.modes import eval_mode


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader, num_classes: int) -> float:
    """Fraction of samples whose arg-max logit equals the label (micro average), in [0, 1].

    The model is put in eval mode (BatchNorm running statistics, no dropout) and restored to
    its previous mode afterwards. Returns ``nan`` for an empty loader.
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
        seen = 0
        for x, y in loader:
            metric.update(model(x.to(device)), y.to(device))
            seen += len(y)
    return float(metric.compute()) if seen else float("nan")


@torch.inference_mode()
def logits_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """:func:`accuracy` of stored ``(n, classes)`` logits against ``(n,)`` labels: the same
    torchmetrics micro average (arg-max logit = label), so the same number as a pass of the
    model that produced them; ``nan`` for ``n = 0``."""
    if len(labels) == 0:
        return float("nan")
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(logits.device)
    metric.update(logits, labels.to(logits.device))
    return float(metric.compute())
