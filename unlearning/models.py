"""Backbones (SPEC §7). Every backbone exposes ``embed(x)`` (penultimate features) and
``head`` (the last linear layer), so evaluation code (entanglement, MIA) can read embeddings of
any model without knowing its class.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A classifier split as ``head(embed(x))``."""

    head: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SmallCNN(Backbone):
    """A small CNN for the embedded data: two 3×3 conv blocks (conv-BN-ReLU, the second with
    stride 2), global average pooling, one linear head. ~20k parameters at ``width=32``.
    BatchNorm is included on purpose: it is what makes SAM's second pass non-trivial (SPEC §1).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNet(Backbone):
    """torchvision ResNet-18/34/50 (random init, never downloaded).

    ``cifar_stem=True`` replaces the 7×7 stride-2 stem and max-pool with one 3×3 stride-1 conv,
    the usual adaptation for 32×32 inputs (as in the SalUn / SAM code bases).
    """

    def __init__(
        self, depth: int, num_classes: int, in_channels: int = 3, cifar_stem: bool = False
    ) -> None:
        super().__init__()
        from torchvision import models

        builders = {18: models.resnet18, 34: models.resnet34, 50: models.resnet50}
        if depth not in builders:
            raise ValueError(f"model.depth={depth!r}: choose one of {sorted(builders)}")
        net = builders[depth](weights=None, num_classes=num_classes)
        if cifar_stem or in_channels != 3:
            kernel, stride, pad = (3, 1, 1) if cifar_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, pad, bias=False)
        if cifar_stem:
            net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TwoLayerCNN(Backbone):
    """The two-layer CNN of 000 eq. 1 on ``1×P×d`` patch images.

    ``f_j(W_j, x) = (1/m) Σ_r Σ_p σ(⟨w_{j,r}, x_p⟩)`` for each class j, with σ = ReLU; the second
    layer is fixed (not trained) at ``+1/m`` for the filters of class j. For two classes, the
    logits ``[f_{−1}, f_{+1}]`` under softmax cross-entropy give the logistic loss of
    ``f = f_{+1} − f_{−1}``, as in the paper. With K > 2 classes this is the one-vs-all extension
    (000 §2.1). ``filters`` has shape ``(K, m, d)``; ``init_std`` is σ_0.
    """

    def __init__(
        self,
        num_classes: int = 2,
        dim: int = 200,
        width: int = 10,
        init_std: float = 0.01,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError(f"model.in_channels={in_channels!r}: the two-layer CNN takes 1")
        self.num_classes, self.width = num_classes, width
        self.filters = nn.Parameter(torch.randn(num_classes, width, dim) * init_std)
        self.head = nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class, per-filter activations summed over patches: shape ``(n, K·m)``."""
        patches = x.flatten(1, 2) if x.dim() == 4 else x  # (n, P, d)
        act = torch.relu(torch.einsum("npd,kmd->nkmp", patches, self.filters)).sum(-1)
        return act.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.embed(x).view(len(x), self.num_classes, self.width)
        return act.mean(-1)  # (1/m) Σ_r — the fixed second layer
