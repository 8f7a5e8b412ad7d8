"""A test-only data source: the embedded digits with the labels of the *test* rows of D_test
shuffled among themselves (the validation rows keep theirs). A job on it must select exactly as
on the real labels if selection reads no test label (issue 16)."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.embedded import Digits
from datamodules.validation import carve_validation


class PermutedTestDigits(Digits):
    """:class:`~datamodules.embedded.Digits` whose test labels outside the validation split
    (``validation_fraction``, ``validation_seed``: the job's ``validation`` settings) are
    permuted with ``permute_seed``."""

    def __init__(
        self,
        validation_fraction: float = 0.2,
        validation_seed: int = 0,
        permute_seed: int = 0,
        **digits,
    ) -> None:
        super().__init__(**digits)
        self.validation = (validation_fraction, validation_seed)
        self.permute_seed = permute_seed

    def data_arrays(self) -> list[np.ndarray]:
        return [*super().data_arrays(), np.array([self.permute_seed])]

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_tr, y_tr, x_te, y_te = super().load()
        _, test_rows = carve_validation(len(y_te), None, *self.validation)
        shuffled = np.random.default_rng(self.permute_seed).permutation(test_rows)
        y_te = y_te.clone()
        y_te[torch.from_numpy(test_rows)] = y_te[torch.from_numpy(shuffled)]
        return x_tr, y_tr, x_te, y_te
