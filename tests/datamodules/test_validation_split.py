"""The validation split (issue 16): a fixed, label-blind part of D_test, disjoint from the test
rows, that no training loader can draw from."""

import numpy as np
import pytest

from datamodules.embedded import Digits
from datamodules.unlearning_datamodule import UnlearningDataModule
from datamodules.validation import carve_validation


def test_the_split_is_a_seeded_disjoint_partition_of_the_held_out_rows():
    val, test = carve_validation(359, None, 0.2, seed=0)
    assert len(val) == round(0.2 * 359) and len(val) + len(test) == 359
    assert not set(val) & set(test) and sorted({*val, *test}) == list(range(359))
    again, _ = carve_validation(359, None, 0.2, seed=0)
    other, _ = carve_validation(359, None, 0.2, seed=1)
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_the_split_stays_inside_the_rows_a_class_split_kept():
    rows = np.arange(0, 359, 3)  # e.g. D_test without the forgotten class
    val, test = carve_validation(359, rows, 0.5, seed=0)
    assert set(val) | set(test) == set(rows) and len(test) >= 1
    with pytest.raises(ValueError, match="not in"):
        carve_validation(359, None, 1.0, seed=0)


def test_the_datamodule_serves_val_from_d_test_and_never_trains_on_held_out_data():
    source = Digits()
    val, test = carve_validation(len(source.targets("test")), None, 0.2, seed=0)
    data = UnlearningDataModule(source, np.arange(10), test_indices=test, val_indices=val)
    assert data.set_size("val") == len(val) and data.set_size("test") == len(test)
    labels = np.concatenate([y.numpy() for _, y in data.eval_dataloader("val")])
    assert np.array_equal(labels, source.targets("test")[val])
    for held_out in ("val", "test"):
        with pytest.raises(ValueError, match="unknown train set"):
            UnlearningDataModule(source, np.arange(10), train_sets=("retain", held_out))
