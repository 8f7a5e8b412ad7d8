"""Data sources: where a labelled image dataset (train set S and test set) comes from.

A source knows its files (or how to synthesise its data), its transforms and its shape. It does
not know about forget sets; :mod:`datamodules.unlearning_datamodule` cuts S into retain R and
forget F from index arrays that the pipeline computes.

Every source returns ``torch.utils.data.Dataset`` objects whose items are ``(x, y)`` with ``x`` a
float tensor ``C×H×W`` and ``y`` an ``int``, and exposes the integer labels as a numpy array so
that splits can be stratified without loading images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.errors import DataConfigError

Part = Literal["train", "test"]


class ImageSource(ABC):
    """A labelled image dataset with a train part (S) and a test part (D_test).

    Args:
        name: short name used in logs and cache keys.
        num_classes: number of classes K; checked against the data.
        in_channels: image channels C.
        image_size: side of the (square) network input.
    """

    def __init__(self, name: str, num_classes: int, in_channels: int, image_size: int) -> None:
        self.name = name
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)

    def check(self) -> None:  # noqa: B027 - optional hook, a no-op for sources without files
        """Fail fast (before any training) if the data cannot be found. Cheap: no image decoding."""

    def check_contents(self) -> None:
        """Open what the job will read of every part (train and test) and check it: labels in
        range and non-empty parts. Called once at start-up, before any training (issue 19: a
        broken test file used to fail only at the evaluation, after pretraining). Sources read
        labels and file headers, not every image, where their format allows."""
        self.check()
        for part in ("train", "test"):
            labels = self.targets(part)
            self._check_labels(labels)

    def data_files(self) -> list[tuple[str, Path]]:
        """The files whose bytes are this source's data, as ``(name under the root, path)``; the
        pipeline hashes them into every stage key (the data, not its path, identifies a cache
        entry). ``[]`` for a source without files."""
        return []

    def data_arrays(self) -> list[np.ndarray]:
        """The arrays that are this source's data when it has no files (embedded or synthetic
        data), hashed into the stage keys like :meth:`data_files`. ``[]`` by default."""
        return []

    @abstractmethod
    def dataset(self, part: Part, augment: bool) -> Dataset:
        """The ``part`` split; ``augment=True`` applies train transforms, else test transforms."""

    @abstractmethod
    def targets(self, part: Part) -> np.ndarray:
        """Integer labels of ``part`` in dataset order, shape ``(n,)``, dtype int64."""

    def in_memory(self, part: Part, augment: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(x, y)`` of ``part`` as tensors when the data sits in memory and needs no per-sample
        transform, else ``None``. Loaders then slice batches out of them instead of collating
        samples (SPEC §7, #10).

        The rows of ``x`` are the items of :meth:`dataset` stacked (ready to use), except with
        ``augment=True`` when :meth:`batch_augment` returns a transform: then ``x`` holds the
        stored images and a batch is ``batch_augment()(x[idx])``."""
        return None

    def batch_augment(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The train augmentation applied to each whole batch of ``in_memory(part, True)``'s
        images (e.g. :class:`~datamodules.batch_augment.BatchAugment`), or ``None`` when those
        rows are ready to use (no augmentation, or a per-sample one served by a DataLoader)."""
        return None

    def _check_labels(self, labels: np.ndarray, key: str = "dataset.num_classes") -> None:
        seen = int(labels.max()) + 1 if labels.size else 0
        if seen > self.num_classes:
            raise DataConfigError(
                key, self.num_classes, f"the data has labels up to {seen - 1}; set {key}={seen}"
            )


class TensorImageDataset(Dataset):
    """An in-memory image dataset: ``(x[i], y[i])`` with an optional per-sample transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y, self.transform = x, y, transform
        self.targets = y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.y[index])


class TensorSource(ImageSource):
    """A source whose whole data fits in memory as tensors (embedded and synthetic data).

    Subclasses implement :meth:`load` returning ``(x_train, y_train, x_test, y_test)``; it is called
    once, lazily.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @abstractmethod
    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``x_train, y_train, x_test, y_test`` (images float ``N×C×H×W``, labels int64)."""

    def train_transform(self):
        """Per-sample train augmentation (``None`` = none)."""
        return None

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._data is None:
            data = self.load()
            self._check_labels(data[1].numpy())
            self._check_labels(data[3].numpy())
            self._data = data
        return self._data

    def dataset(self, part: Part, augment: bool) -> Dataset:
        x_tr, y_tr, x_te, y_te = self._tensors()
        x, y = (x_tr, y_tr) if part == "train" else (x_te, y_te)
        return TensorImageDataset(x, y, self.train_transform() if augment else None)

    def targets(self, part: Part) -> np.ndarray:
        _, y_train, _, y_test = self._tensors()
        return (y_train if part == "train" else y_test).numpy().astype(np.int64)

    def data_arrays(self) -> list[np.ndarray]:
        """The four tensors of :meth:`load` (train and test images and labels)."""
        return [t.numpy() for t in self._tensors()]

    def in_memory(self, part: Part, augment: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        if augment and self.train_transform() is not None:
            return None  # a per-sample transform: served by a DataLoader
        x_tr, y_tr, x_te, y_te = self._tensors()
        x, y = (x_tr, y_tr) if part == "train" else (x_te, y_te)
        return x, y.to(torch.int64)


class RelabelledDataset(Dataset):
    """A dataset whose labels are replaced by ``labels`` (same order)."""

    def __init__(self, base: Dataset, labels: np.ndarray) -> None:
        self.base, self.labels = base, labels
        self.targets = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, _ = self.base[index]
        return x, int(self.labels[index])


class NoisyLabels(ImageSource):
    """A source whose training labels are flipped for a fixed random ``fraction`` of S.

    Each flipped sample gets a label drawn uniformly among the *other* classes. ``flipped``
    holds the indices (in S) of the flipped samples and ``clean_targets`` the original labels,
    so memorization of mislabeled points can be studied. Test labels are never changed.
    """

    def __init__(self, base: ImageSource, fraction: float, seed: int = 0) -> None:
        super().__init__(base.name, base.num_classes, base.in_channels, base.image_size)
        if not 0.0 <= fraction < 1.0:
            raise DataConfigError("dataset.label_noise", fraction, "must lie in [0, 1), e.g. 0.05")
        self.base, self.fraction = base, fraction
        self.clean_targets = base.targets("train")
        rng = np.random.default_rng(seed)
        n = len(self.clean_targets)
        self.flipped = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
        shift = rng.integers(1, self.num_classes, size=len(self.flipped))
        self.noisy_targets = self.clean_targets.copy()
        self.noisy_targets[self.flipped] = (
            self.clean_targets[self.flipped] + shift
        ) % self.num_classes

    def __getattr__(self, name: str):  # forward e.g. fine_targets to the wrapped source
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def check(self) -> None:
        self.base.check()

    def check_contents(self) -> None:
        self.base.check_contents()

    def data_files(self) -> list[tuple[str, Path]]:
        return self.base.data_files()

    def data_arrays(self) -> list[np.ndarray]:
        return [*self.base.data_arrays(), self.noisy_targets]

    def targets(self, part: Part) -> np.ndarray:
        return self.noisy_targets if part == "train" else self.base.targets(part)

    def dataset(self, part: Part, augment: bool) -> Dataset:
        data = self.base.dataset(part, augment)
        return RelabelledDataset(data, self.noisy_targets) if part == "train" else data

    def in_memory(self, part: Part, augment: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        tensors = self.base.in_memory(part, augment)
        if tensors is None or part != "train":
            return tensors
        return tensors[0], torch.from_numpy(self.noisy_targets).to(torch.int64)

    def batch_augment(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.base.batch_augment()  # only labels change: the images are the base's


#: keys of a ``dataset`` config that are handled here, not by the source's constructor.
LABEL_NOISE_KEYS = ("label_noise", "label_noise_seed")


def build_source(config: Mapping[str, Any]) -> ImageSource:
    """Instantiate the ``dataset`` config (``_target_`` + arguments) and apply
    ``label_noise``/``label_noise_seed`` if present and non-zero."""
    from hydra.utils import instantiate

    spec = {k: v for k, v in config.items() if k not in LABEL_NOISE_KEYS}
    source = instantiate(spec)
    noise = float(config.get("label_noise") or 0.0)
    if noise:
        return NoisyLabels(source, noise, int(config.get("label_noise_seed") or 0))
    return source
