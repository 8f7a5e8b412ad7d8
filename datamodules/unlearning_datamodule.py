"""The datamodule that serves S, R = S \\ F, F and D_test for every stage (SPEC §0, §2).

Training batches are always a dict keyed by set name. By default they are joint batches from
Lightning's ``CombinedLoader``: for a method that trains on ``("retain", "forget")`` each step
draws B retain and B forget samples, an epoch has ⌈|R|/B⌉ steps and the shorter forget loader
cycles (000 §2.2). A method can instead make one pass over another set an epoch (``driver``:
UGradSL iterates over F), walk the sets one after another (``passes``: SCRUB's F pass then R
pass) or receive sample ids (``with_ids``: RL's per-sample labels); see
:meth:`unlearning.methods.base.UnlearningMethod.epoch_schedule`. Evaluation loaders use the test
transforms on R and F (000 eq. 10). In-memory data is served a whole batch per fetch
(:mod:`datamodules.loaders`), with the source's batched train augmentation if it has one; when
the trainer runs on a GPU those tensors are moved there once (``data_device``), so batches are
indexed and augmented on the GPU (issue #10).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.loaders import (
    ChainedPasses,
    DirectBatches,
    TensorBatches,
    WithSampleIds,
    keep_batch,
)
from datamodules.sources import ImageSource

SET_NAMES = ("train", "retain", "forget", "test", "val")
#: the sets a training loader may draw from: never the held-out test or validation data
TRAIN_SET_NAMES = ("train", "retain", "forget")
#: the held-out sets, parts of D_test
HELD_OUT = ("test", "val")
CPU = torch.device("cpu")


def resolve_data_device(
    setting: str, trainer_device: torch.device | None, in_memory: bool
) -> torch.device:
    """Where a loader's in-memory tensors live.

    ``setting="auto"``: the trainer's device when it is a CUDA device (``None`` = no trainer),
    else the CPU; ``"cpu"`` or another device name (``"cuda:1"``): that device. Data that is not
    in memory (per-sample fetches through DataLoader workers) always stays on the CPU.
    """
    if not in_memory:
        return CPU
    if setting == "auto":
        if trainer_device is not None and torch.device(trainer_device).type == "cuda":
            return torch.device(trainer_device)
        return CPU
    return torch.device(setting)


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
        num_workers: DataLoader workers (0 is fastest for in-memory data).
        test_indices: the part of D_test to evaluate on (class/group forgetting removes the
            forgotten class from D_test; the validation split takes its part); ``None`` = all
            of it.
        val_indices: the part of D_test that is the validation set ``val``
            (:func:`datamodules.validation.carve_validation`); ``None`` = no validation set.
        driver: the set one pass of which is a training epoch when several sets are drawn
            jointly; the other sets are cycled (longer driver) or cut short (shorter driver).
            ``None`` = the longest set (⌈|R|/B⌉ steps for a small F, 000 §2.2).
        passes: ``passes(epoch)`` → the sets to pass over *one after another* in that epoch,
            one set per batch (``{name: batch}``), instead of joint batches; ``None`` from it
            means joint batches for that epoch. Needs the trainer to reload the train loader
            every epoch (:attr:`reload_every_epoch`).
        with_ids: sets whose batches carry each sample's index in S as a third element
            ``(x, y, ids)``, for per-sample state (e.g. RL's per-epoch random labels).
        in_memory: fetch whole batches from in-memory tensors when the source has them
            (:class:`~datamodules.loaders.TensorBatches`: the same batches as per-sample
            fetches, faster); ``False`` forces per-sample fetches.
        data_device: where in-memory tensors live (:func:`resolve_data_device`): ``"auto"``
            moves them once to the trainer's device when it is a GPU, so batches are indexed and
            augmented there (``num_workers`` is then 0: workers cannot share CUDA tensors, and
            nothing is pinned); on a CPU trainer, or without a trainer, nothing changes.
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
        val_indices: np.ndarray | None = None,
        driver: str | None = None,
        passes: Callable[[int], Sequence[str] | None] | None = None,
        with_ids: Sequence[str] = (),
        in_memory: bool = True,
        data_device: str = "auto",
    ) -> None:
        super().__init__()
        if data_device != "auto":
            try:
                torch.device(data_device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(
                    f"data_device={data_device!r}: use 'auto', 'cpu' or a device such as "
                    f"'cuda:0' ({exc})"
                ) from None
        unknown = (set(train_sets) | set(with_ids) | {driver or "train"}) - set(TRAIN_SET_NAMES)
        if unknown:
            raise ValueError(f"unknown train set(s) {sorted(unknown)}; use {TRAIN_SET_NAMES}")
        if driver is not None and driver not in train_sets:
            raise ValueError(f"driver={driver!r} is not one of the train sets {train_sets}")
        self.source, self.train_sets = source, tuple(train_sets)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augment, self.num_workers = augment, num_workers
        self.driver, self.passes, self.with_ids = driver, passes, tuple(with_ids)
        self.use_in_memory = in_memory
        self.data_device = data_device
        self._on_device: dict[tuple[str, bool, torch.device], tuple[torch.Tensor, ...]] = {}
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
        if val_indices is not None:
            self.indices["val"] = np.asarray(val_indices, dtype=np.int64)

    @property
    def reload_every_epoch(self) -> bool:
        """Whether the trainer must call :meth:`train_dataloader` anew every epoch (the epoch's
        schedule depends on its index)."""
        return self.passes is not None

    def _rows(self, name: str) -> np.ndarray | None:
        """Indices of set ``name`` in its part (``None`` = all of D_test)."""
        if name == "val" and "val" not in self.indices:
            raise ValueError("this datamodule has no validation set (val_indices=None)")
        return self.test_indices if name == "test" else self.indices[name]

    @staticmethod
    def _part(name: str) -> str:
        """The part of the source a set lies in: D_test for the held-out sets, else S."""
        return "test" if name in HELD_OUT else "train"

    def _subset(self, name: str, augment: bool, rows: np.ndarray | None) -> Dataset:
        data = self.source.dataset(self._part(name), augment=augment)
        return data if rows is None else Subset(data, rows.tolist())

    def set_size(self, name: str) -> int:
        """Number of samples in set ``name``."""
        rows = self._rows(name)
        return len(self.source.targets("test")) if rows is None else len(rows)

    def loader(
        self,
        name: str,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        with_ids: bool = False,
        positions: np.ndarray | None = None,
        direct: bool = False,
    ) -> DataLoader:
        """A ``DataLoader`` over set ``name`` (only its samples at ``positions``, in that order,
        when given): batch-level fetches (:class:`TensorBatches`) where the source holds the set
        as tensors, else per-sample fetches and ``collate``. With ``direct`` (one process only),
        tensor batches without workers are served by :class:`DirectBatches`: the same batches and
        RNG draws without the DataLoader's per-batch machinery."""
        part = self._part(name)
        rows = self._rows_at(name, positions)
        tensors = self.source.in_memory(part, augment) if self.use_in_memory else None
        device = self.device_for(tensors is not None)
        num_workers = self.num_workers if device.type == "cpu" else 0
        if tensors is None:
            data = self._sample_dataset(name, augment, rows, with_ids)
        else:
            data = self._tensor_batches(part, augment, rows, tensors, device, with_ids)
        return self._batched(data, batch_size, shuffle, num_workers, direct)

    def _rows_at(self, name: str, positions: np.ndarray | None) -> np.ndarray | None:
        """Indices in its part of set ``name``'s samples at ``positions`` (all when ``None``;
        ``None`` = all of D_test)."""
        rows = self._rows(name)
        if positions is None:
            return rows
        positions = np.asarray(positions, dtype=np.int64)
        return positions if rows is None else rows[positions]

    def _tensor_batches(
        self,
        part: str,
        augment: bool,
        rows: np.ndarray | None,
        tensors: tuple[torch.Tensor, ...],
        device: torch.device,
        with_ids: bool,
    ) -> TensorBatches:
        """The in-memory ``rows`` of ``part`` on ``device``, fetched a batch at a time, with the
        source's batched train augmentation when ``augment``."""
        x, y = self._tensors_on(part, augment, tensors, device)
        ids = torch.arange(len(y)) if rows is None else torch.from_numpy(rows)
        ids = ids.to(device)
        if rows is not None and not np.array_equal(rows, np.arange(len(y))):
            x, y = x[ids], y[ids]  # a subset (S itself needs no copy)
        transform = self.source.batch_augment() if augment else None
        return TensorBatches(x, y, ids if with_ids else None, transform)

    def _sample_dataset(
        self, name: str, augment: bool, rows: np.ndarray | None, with_ids: bool
    ) -> Dataset:
        """Set ``name``'s ``rows`` fetched one sample at a time (a source without tensors, or
        ``in_memory=False``), with each sample's index in its part appended for ``with_ids``."""
        data = self._subset(name, augment, rows)
        if with_ids:
            data = WithSampleIds(data, range(len(data)) if rows is None else rows.tolist())
        return data

    @staticmethod
    def _batched(
        data: Dataset, batch_size: int, shuffle: bool, num_workers: int, direct: bool
    ) -> DataLoader:
        """The loader class for ``data``: :class:`DirectBatches` for tensor batches without
        workers when ``direct``; else a ``DataLoader`` (``keep_batch`` passes tensor batches
        through, per-sample items are collated), its workers kept across epochs when it
        shuffles (a training loader)."""
        batches = isinstance(data, TensorBatches)
        if direct and batches and num_workers == 0:
            return DirectBatches(data, batch_size, shuffle)
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            persistent_workers=num_workers > 0 and shuffle,
            collate_fn=keep_batch if batches else None,
        )

    def device_for(self, in_memory: bool) -> torch.device:
        """The device of a loader's tensors: :func:`resolve_data_device` with the attached
        trainer's root device (CPU when no trainer is attached, e.g. for evaluation loops)."""
        trainer_device = self.trainer.strategy.root_device if self.trainer is not None else None
        return resolve_data_device(self.data_device, trainer_device, in_memory)

    def _tensors_on(
        self, part: str, augment: bool, tensors: tuple[torch.Tensor, ...], device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        """``tensors`` on ``device``, copied there once per datamodule (CPU: as they are)."""
        if device.type == "cpu":
            return tensors
        key = (part, augment, device)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in tensors)
        return self._on_device[key]

    def train_dataloader(self) -> Iterable:
        loaders = {name: self._train_loader(name) for name in self.train_sets}
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        chained = self.passes(epoch) if self.passes is not None else None
        if chained is not None:
            return ChainedPasses(loaders, chained)
        return CombinedLoader(loaders, mode=self._joint_mode(loaders))

    def _train_loader(self, name: str) -> DataLoader:
        """Shuffled training batches of set ``name``; in one process, in-memory tensors go
        through :class:`~datamodules.loaders.DirectBatches` (under DDP the trainer must insert
        its ``DistributedSampler`` into a plain ``DataLoader``)."""
        single = self.trainer is None or self.trainer.world_size == 1
        with_ids = name in self.with_ids
        return self.loader(name, self.batch_size, True, self.augment, with_ids, direct=single)

    def _joint_mode(self, loaders: dict[str, Iterable]) -> str:
        """``max_size_cycle`` when the driver is the longest set, ``min_size`` when it is the
        shortest (two sets: one of the two always holds)."""
        if self.driver is None:
            return "max_size_cycle"
        steps = {name: len(loader) for name, loader in loaders.items()}
        if steps[self.driver] == max(steps.values()):
            return "max_size_cycle"
        if steps[self.driver] == min(steps.values()):
            return "min_size"
        raise ValueError(f"driver={self.driver!r} is neither the longest nor the shortest set")

    def eval_dataloader(
        self, name: str, batch_size: int | None = None, positions: np.ndarray | None = None
    ) -> DataLoader:
        """Batches over set ``name`` (``retain``, ``forget``, ``test`` or ``train``) with test
        transforms and no shuffling (``batch_size`` defaults to ``eval_batch_size``);
        ``positions`` restricts it to those samples of the set, in that order."""
        return self.loader(
            name, batch_size or self.eval_batch_size, False, augment=False, positions=positions
        )
