"""What a model outputs on a set: logits, L2-normalised penultimate embeddings and labels, and the
2-D t-SNE projection used for the feature plots of 000 Fig. 1.

The job's accuracies and every evaluation family (MIA, entanglement, KLoM, feature plots) read a
model through :func:`model_outputs`, which relies only on the backbone contract of
:mod:`unlearning.models`: ``embed(x)`` gives the penultimate features, ``head`` maps them to the
logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearning.modes import eval_mode


@dataclass
class Outputs:
    """A model's eval-mode outputs on one set, as CPU tensors, in loader order."""

    logits: torch.Tensor  # (n, classes)
    embeddings: torch.Tensor | None  # (n, d), raw penultimate features; None if not computed
    labels: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def normalized_embeddings(self) -> np.ndarray:
        """Embeddings scaled to unit L2 norm (000 App. C.3), float64 numpy."""
        if self.embeddings is None:
            raise RuntimeError("these outputs were computed without embeddings (embeddings=False)")
        e = self.embeddings.double()
        return (e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


@contextmanager
def _head_inputs(model: nn.Module, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Inside the block, the inputs of every ``model.head`` call are appended to the yielded
    list (a forward pre-hook; removed on exit). Nothing is recorded for a model without a
    ``head`` module or when ``enabled`` is false."""
    seen: list[torch.Tensor] = []
    head = getattr(model, "head", None)
    if not enabled or not isinstance(head, nn.Module):
        yield seen
        return
    handle = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@torch.inference_mode()
def model_outputs(model: nn.Module, loader: DataLoader, embeddings: bool = True) -> Outputs:
    """Logits ``model(x)``, embeddings ``model.embed(x)`` (with ``embeddings``) and labels of
    every sample of ``loader``, with the model in eval mode (restored afterwards).

    One forward pass per batch: the logits come from ``forward`` (not ``head(embed(x))``) so
    that backbones with a fixed second layer, such as the two-layer CNN of 000 eq. 1, are read
    correctly, and the embeddings are the input of ``model.head`` during that same pass (a
    forward pre-hook), which for a :class:`~unlearning.models.Backbone` is ``embed(x)``. Only a
    model whose forward does not call its head exactly once (the two-layer CNN) gets a second
    ``model.embed(x)`` call."""
    with eval_mode(model), _head_inputs(model, embeddings) as seen:
        device = next(model.parameters()).device
        logits, embeds, labels = [], [], []
        for x, y in loader:
            x = x.to(device)
            seen.clear()
            logits.append(model(x).float().cpu())
            if embeddings:
                fused = len(seen) == 1 and seen[0].shape[0] == len(x)
                embeds.append((seen[0] if fused else model.embed(x)).float().cpu())
            labels.append(y.cpu())
        seen.clear()
    if not labels:
        empty = torch.zeros(0, 0)
        return Outputs(empty, empty if embeddings else None, torch.zeros(0, dtype=torch.long))
    return Outputs(
        torch.cat(logits),
        torch.cat(embeds) if embeddings else None,
        torch.cat(labels).long(),
    )


def tsne_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of ``(n, d)`` embeddings; perplexity is capped for small n.
    UMAP (000 Fig. 1) is not a dependency of the framework, so t-SNE stands in for it."""
    from sklearn.manifold import TSNE

    n = len(embeddings)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(embeddings, dtype=np.float64))
