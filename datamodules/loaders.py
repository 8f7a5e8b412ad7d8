"""Batch-level datasets for in-memory tensors, and the wrappers a schedule needs (sample ids,
consecutive passes).

For data that already sits in memory as tensors (the embedded and synthetic datasets), a
per-sample ``DataLoader`` spends most of its time in Python: one ``__getitem__`` per sample, then
``collate`` stacking them again. :class:`TensorBatches` implements ``__getitems__`` (PyTorch's
batched-fetch hook), so the ``DataLoader`` hands it each batch's index list and gets back
``x[idx]`` in one tensor op, passed through unchanged by :func:`keep_batch`. It stays a plain
``DataLoader`` with its usual sampler: the batches, their order and the global RNG draws are
exactly those of the per-sample path (results and resumes are unchanged, bit for bit), and
Lightning still shards it across processes under DDP. ``bench/bench_data.py`` measures the
speed-up.

A train augmentation that works on whole batches (:class:`~datamodules.batch_augment
.BatchAugment`, for the CIFAR/SVHN uint8 images) is passed as ``transform`` and applied to each
fetched ``x[idx]``. The tensors may live on a GPU (the datamodule's ``data_device``): then
indexing and augmentation run there, in the main process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler


class TensorBatches(Dataset):
    """Rows of in-memory tensors ``(x[i], y[i])`` — or ``(x[i], y[i], ids[i])`` — fetched a whole
    batch at a time through ``__getitems__``. Use with ``collate_fn=keep_batch``.

    ``transform`` (e.g. a batched train augmentation) maps each fetched image batch ``x[idx]`` to
    the batch served; ``None`` serves the rows as they are."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        ids: Tensor | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if len(x) != len(y) or (ids is not None and len(ids) != len(y)):
            raise ValueError(f"{len(x)} images, {len(y)} labels and ids of another length")
        self.tensors = (x, y) if ids is None else (x, y, ids)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """One row as the per-sample datasets give it: ``(x, int(y)[, int(id)])``."""
        x, *rest = (t[index] for t in self.tensors)
        if self.transform is not None:
            x = self.transform(x.unsqueeze(0))[0]
        return (x, *(int(v) for v in rest))

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.tensors[0].device)
        x, *rest = (t[idx] for t in self.tensors)
        if self.transform is not None:
            x = self.transform(x)
        return (x, *rest)


class DirectBatches(DataLoader):
    """A ``DataLoader(data, batch_size, shuffle, collate_fn=keep_batch)`` over a
    :class:`TensorBatches` whose iteration skips the per-batch machinery (iterator object,
    sampler, fetcher, collate: ~0.1 ms a batch, a visible share of a small model's step; bench
    item 2): each batch is ``data.__getitems__`` of a slice of one permutation.

    Same batches, same order, same draws from torch's global RNG as the plain ``DataLoader``:
    an iterator draws the workers' base seed when it is created, and ``RandomSampler`` draws the
    seed of its own generator (which then draws the permutation) at the first batch;
    ``tests/datamodules/test_direct_batches.py`` checks batches and RNG state against a
    ``DataLoader`` through a ``Trainer``, so results and resumes do not depend on which one
    serves the data. It stays a ``DataLoader`` so that Lightning treats it as one (Lightning
    probes other iterables with an extra ``iter()``, which would cost an RNG draw). Only for one
    process without workers: under DDP the trainer shards a plain ``DataLoader`` instead.
    """

    def __init__(self, data: TensorBatches, batch_size: int, shuffle: bool) -> None:
        # the DataLoader checks batch_size and gives len() = ⌈n / B⌉, as for the batches below
        super().__init__(data, batch_size=batch_size, shuffle=shuffle, collate_fn=keep_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:  # type: ignore[override]
        torch.empty((), dtype=torch.int64).random_()  # the base seed for workers (none here)
        return self._batches()

    def _batches(self) -> Iterator[tuple[Tensor, ...]]:
        data: TensorBatches = self.dataset  # type: ignore[assignment]
        n = len(data)
        if isinstance(self.sampler, RandomSampler):  # without a generator of its own
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield data.__getitems__(order[start : start + self.batch_size])


def keep_batch(batch: Any) -> Any:
    """The collate function of :class:`TensorBatches`: its batches are already stacked."""
    return batch


class WithSampleIds(Dataset):
    """``(x, y, id)`` items: a dataset's items with a fixed per-item sample id appended."""

    def __init__(self, base: Dataset, ids: Sequence[int]) -> None:
        self.base, self.ids = base, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.base[index], self.ids[index])


class ChainedPasses:
    """One epoch as consecutive full passes over single sets: ``{name: batch}`` for every batch of
    ``loaders[passes[0]]``, then of ``loaders[passes[1]]``, … (SCRUB's max-pass over F followed by
    its min-pass over R). Lightning's ``CombinedLoader`` has no training mode for this
    (``sequential`` is refused by ``trainer.fit``)."""

    def __init__(self, loaders: Mapping[str, Any], passes: Sequence[str]) -> None:
        unknown = set(passes) - set(loaders)
        if unknown:
            raise ValueError(f"passes over {sorted(unknown)} but only {sorted(loaders)} loaded")
        self.loaders, self.passes = loaders, tuple(passes)

    def __len__(self) -> int:
        return sum(len(self.loaders[name]) for name in self.passes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for name in self.passes:
            for batch in self.loaders[name]:
                yield {name: batch}
