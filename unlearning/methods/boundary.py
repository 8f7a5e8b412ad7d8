"""Boundary Unlearning (Chen et al., CVPR 2023; SPEC §2; 004 App. E.1 uses the paper's default
hyper-parameters; reference code TY-LEE-KR/Boundary-Unlearning-Code).

Both variants fine-tune on F only (``train_sets = ("forget",)``), with cross-entropy towards a
pseudo label:

* **Boundary Shrink**: the pseudo label of a forget sample is its *nearest wrong class*, the
  prediction of the frozen original model f_A at the FGSM point
  ``x' = x + ε·sign(∇_x CE(f_A(x), y))``; the loss is ``CE(f(x), argmax f_A(x'))``.
* **Boundary Expand**: the last linear layer ``net.head`` gets one extra output unit (a "shadow"
  class K); F is fine-tuned towards class K, and the unit is pruned after unlearning so the
  returned backbone has K outputs again.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearning.methods.base import Batch, UnlearningMethod


class BoundaryShrink(UnlearningMethod):
    """Boundary Shrink: ``CE(f(x), ŷ)`` on F with ``ŷ = argmax f_A(x + ε·sign ∇_x CE(f_A(x), y))``.

    f_A is a frozen deep copy of the backbone taken in the constructor (the reference's
    ``test_model``), always evaluated in eval mode. The FGSM step is taken in the model's input
    space (the normalised images; the reference adds ε to [0, 1] pixels, clamps and rounds to
    1/255, which has no counterpart for arbitrary inputs). When the attack does not cross the
    boundary ``ŷ = y`` (as in the reference); the share of flipped labels is logged.

    The labels are a deterministic function of the batch (frozen model, no random start) and are
    cached for the batch tensor, so a sharpness-aware second pass sees the same objective.

    Args:
        epsilon: FGSM radius ε > 0 (the reference's ``bound=0.1``).
    """

    train_sets: ClassVar[tuple[str, ...]] = ("forget",)

    def __init__(self, *args: Any, epsilon: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not (math.isfinite(float(epsilon)) and float(epsilon) > 0):
            raise ValueError(f"method.epsilon={epsilon!r}: the FGSM radius must be > 0, e.g. 0.1")
        self.epsilon = float(epsilon)
        original = self.frozen_copy()
        # kept out of the module tree: not trained, not checkpointed, not switched to train mode
        # by Lightning, not seen by the sharpness callback; moved to the batch's device on use
        object.__setattr__(self, "original", original)
        self._cache: tuple[Tensor, Tensor] | None = None

    def nearest_labels(self, x: Tensor, y: Tensor) -> Tensor:
        """``argmax f_A(x + ε·sign ∇_x CE(f_A(x), y))`` — the nearest wrong class by one FGSM
        step on the frozen original model."""
        original = self.original.to(x.device).eval()
        with torch.enable_grad():
            x_adv = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(original(x_adv), y), x_adv)
        with torch.no_grad():
            return original(x.detach() + self.epsilon * g.sign()).argmax(dim=1)

    def _labels(self, x: Tensor, y: Tensor) -> Tensor:
        if self._cache is None or self._cache[0] is not x:
            self._cache = (x, self.nearest_labels(x, y))
        return self._cache[1]

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch["forget"]
        labels = self._labels(x, y)
        loss = F.cross_entropy(self.net(x), labels)
        return loss, {"loss_forget": loss, "flipped": (labels != y).float().mean()}

    def on_train_epoch_end(self) -> None:
        self._cache = None


def expand_head(head: nn.Linear) -> nn.Linear:
    """A copy of ``head`` with one more output unit. As in the reference, the widened layer is
    initialised with Xavier-normal weights and zero biases, then the first K rows are overwritten
    by the original ones, so only the new unit keeps its fresh initialisation."""
    k = head.out_features
    wide = nn.Linear(head.in_features, k + 1, bias=head.bias is not None)
    wide = wide.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        nn.init.xavier_normal_(wide.weight)
        wide.weight[:k] = head.weight
        if head.bias is not None:
            wide.bias.zero_()
            wide.bias[:k] = head.bias
    return wide


def prune_head(head: nn.Linear, num_classes: int) -> nn.Linear:
    """The first ``num_classes`` output units of ``head`` as a new linear layer."""
    pruned = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    pruned = pruned.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        pruned.weight.copy_(head.weight[:num_classes])
        if head.bias is not None:
            pruned.bias.copy_(head.bias[:num_classes])
    pruned.train(head.training)
    return pruned


class BoundaryExpand(UnlearningMethod):
    """Boundary Expand: ``CE(f⁺(x), K)`` on F, where ``f⁺`` is the backbone with ``net.head``
    widened by one unit (class index K = the original number of classes).

    The head is widened in the constructor (so the optimizer sees the new unit) and pruned back
    to K units in :meth:`on_fit_end` (:meth:`prune`), so the pipeline evaluates and returns a
    K-class backbone. Backbones whose ``head`` is not an ``nn.Linear`` (``TwoLayerCNN``: fixed
    second layer, Identity head) are refused.
    """

    train_sets: ClassVar[tuple[str, ...]] = ("forget",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        head = getattr(self.net, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"model: boundary_expand widens the backbone's last linear layer `net.head`, but "
                f"{type(self.net).__name__}.head is {type(head).__name__} (the two-layer CNN "
                "has a fixed second layer); use model=small_cnn or a ResNet"
            )
        self.num_classes = head.out_features
        self.net.head = expand_head(head)

    @property
    def expanded(self) -> bool:
        return self.net.head.out_features == self.num_classes + 1

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.expanded:
            raise RuntimeError("boundary_expand: the extra output unit was already pruned")
        x, _ = batch["forget"]
        target = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        loss = F.cross_entropy(self.net(x), target)
        return loss, {"loss_forget": loss}

    def prune(self) -> None:
        """Remove the extra output unit (idempotent)."""
        if self.expanded:
            self.net.head = prune_head(self.net.head, self.num_classes)

    def on_fit_end(self) -> None:
        self.prune()
