"""A stand-in for ``UnlearningDataModule`` in evaluation tests: fixed tensors per set behind the
datamodule's loader interface (``set_size``, ``eval_dataloader``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


class TensorSets:
    """R, F, D_test (and the validation set: D_test's tensors when not given) as
    ``{name: (x, y)}``, served in batches of :attr:`batch_size`."""

    batch_size = 64

    def __init__(self, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.sets = {"val": sets["test"], **sets} if "test" in sets else sets

    def set_size(self, name: str) -> int:
        return len(self.sets[name][1])

    def eval_dataloader(self, name: str, batch_size: int | None = None, positions=None):
        x, y = self.sets[name]
        if positions is not None:
            x, y = x[positions], y[positions]
        return DataLoader(TensorDataset(x, y), batch_size=batch_size or self.batch_size)
