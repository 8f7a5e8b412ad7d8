"""What a model outputs on a set: logits, L2-normalised penultimate embeddings and labels, and the
2-D t-SNE projection used for the feature plots of 000 Fig. 1.

Every evaluation family (MIA, entanglement, KLoM, feature plots) reads a model through
:func:`model_outputs`, which relies only on the backbone contract of :mod:`unlearning.models`:
``embed(x)`` gives the penultimate features.
"""

from __future__ import annotations

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
    embeddings: torch.Tensor  # (n, d), raw penultimate features
    labels: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def normalized_embeddings(self) -> np.ndarray:
        """Embeddings scaled to unit L2 norm (000 App. C.3), float64 numpy."""
        e = self.embeddings.double()
        return (e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


@torch.inference_mode()
def model_outputs(model: nn.Module, loader: DataLoader) -> Outputs:
    """Logits ``model(x)``, embeddings ``model.embed(x)`` and labels of every sample of
    ``loader``, with the model in eval mode (restored afterwards). The logits come from
    ``forward`` (not ``head(embed(x))``) so that backbones with a fixed second layer, such as the
    two-layer CNN of 000 eq. 1, are read correctly."""
    with eval_mode(model):
        device = next(model.parameters()).device
        logits, embeddings, labels = [], [], []
        for x, y in loader:
            x = x.to(device)
            embeddings.append(model.embed(x).float().cpu())
            logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    if not labels:
        return Outputs(torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
    return Outputs(torch.cat(logits), torch.cat(embeddings), torch.cat(labels).long())


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
