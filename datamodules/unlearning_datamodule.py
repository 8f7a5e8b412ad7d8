"""The datamodule that serves S, R = S \\ F, F and D_test for every stage (SPEC §0, §2).

Training batches are always a dict keyed by set name, produced by Lightning's
``CombinedLoader`` in ``max_size_cycle`` mode: for a method that trains on ``("retain",
"forget")`` each step draws B retain and B forget samples, an epoch has ⌈|R|/B⌉ steps and the
shorter forget loader cycles (000 §2.2). Evaluation loaders use the test transforms on R and F
(000 eq. 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.sources import ImageSource

SET_NAMES = ("train", "retain", "forget", "test")


class UnlearningDataModule(L.LightningDataModule):
    """Loaders for the sets a stage trains on and for evaluation.

    Args:
        source: where the images come from.
        forget_indices: indices of F in S (``None`` before a split exists: only ``train``).
        train_sets: which sets ``train_dataloader`` yields, e.g. ``("train",)`` for pretraining,
            ``("retain",)`` for the oracle, ``("retain", "forget")`` for NegGrad.
        batch_size: B, per set and per step.
        eval_batch_size: batch size of evaluation loaders (no gradients: larger is faster).
        augment: apply the source's train transforms to training batches.
        test_indices: the part of D_test to evaluate on (class/group forgetting removes the
            forgotten class from D_test); ``None`` = all of it.
        num_workers: DataLoader workers (0 is fastest for in-memory data).
    """

    def __init__(
        self,
        source: ImageSource,
        forget_indices: np.ndarray | None,
        train_sets: Sequence[str] = ("train",),
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        augment: bool = True,
        num_workers: int = 0,
        test_indices: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        unknown = set(train_sets) - set(SET_NAMES)
        if unknown:
            raise ValueError(f"unknown train set(s) {sorted(unknown)}; use {SET_NAMES}")
        self.source, self.train_sets = source, tuple(train_sets)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augment, self.num_workers = augment, num_workers
        n = len(source.targets("train"))
        forget = np.zeros(n, dtype=bool)
        if forget_indices is not None:
            forget[np.asarray(forget_indices, dtype=np.int64)] = True
        self.indices = {
            "train": np.arange(n),
            "retain": np.flatnonzero(~forget),
            "forget": np.flatnonzero(forget),
        }
        self.test_indices = None if test_indices is None else np.asarray(test_indices)

    def _subset(self, name: str, augment: bool) -> Dataset:
        if name == "test":
            test = self.source.dataset("test", augment=False)
            return test if self.test_indices is None else Subset(test, self.test_indices.tolist())
        return Subset(self.source.dataset("train", augment=augment), self.indices[name].tolist())

    def set_size(self, name: str) -> int:
        """Number of samples in set ``name``."""
        if name == "test":
            if self.test_indices is not None:
                return len(self.test_indices)
            return len(self.source.targets("test"))
        return len(self.indices[name])

    def train_dataloader(self) -> CombinedLoader:
        loaders = {
            name: DataLoader(
                self._subset(name, self.augment),
                batch_size=self.batch_size,
                shuffle=True,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
            for name in self.train_sets
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def eval_dataloader(self, name: str, batch_size: int | None = None) -> DataLoader:
        """Loader over set ``name`` (``retain``, ``forget``, ``test`` or ``train``) with test
        transforms and no shuffling (``batch_size`` defaults to ``eval_batch_size``)."""
        return DataLoader(
            self._subset(name, augment=False),
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
