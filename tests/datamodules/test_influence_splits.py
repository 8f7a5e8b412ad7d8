"""The influence-PC forget-set rule (002 App. M, forget sets 4–9): sizes and selection."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.errors import DataConfigError
from datamodules.splits import influence_count, influence_forget_set, select_split, split_size


class _Source:
    """The one thing select_split reads from a source: the training labels."""

    def __init__(self, n: int) -> None:
        self.n = n

    def targets(self, part: str) -> np.ndarray:
        return np.zeros(self.n, dtype=np.int64)


@pytest.mark.parametrize(
    ("size", "n", "expected"),
    [
        (0.0002, 50_000, 10),  # 002's sets 4 and 7 on CIFAR-10
        (0.002, 50_000, 100),  # sets 5 and 8
        (0.01, 50_000, 500),  # sets 6 and 9 (250 + 250)
        (0.0002, 1438, 10),  # digits: floored at min_size
        (0.002, 1438, 10),
        (0.01, 1438, 14),
        (30, 1438, 30),  # a count is taken as given, below the floor too
        (3, 1438, 3),
    ],
)
def test_influence_sizes_scale_002s_cifar10_sizes_with_a_floor(size, n, expected):
    assert influence_count(size, n, min_size=10) == expected


@pytest.mark.parametrize(
    ("size", "min_size", "key"),
    [
        (2000, 10, "split.size"),
        (1438, 10, "split.size"),
        (0.01, 1438, "split.min_size"),
        (0, 10, "split.size"),
    ],
)
def test_influence_sizes_that_leave_nothing_to_retain_are_refused(size, min_size, key):
    with pytest.raises(DataConfigError) as info:
        influence_count(size, 1438, min_size)
    assert info.value.key == key


def test_top_takes_the_highest_projections_and_both_takes_each_end():
    projections = np.array([0.5, -3.0, 2.0, 0.0, -1.0, 4.0, 1.0, -2.0])
    assert influence_forget_set(projections, 3, "top").tolist() == [2, 5, 6]
    # ⌈5/2⌉ = 3 highest (5, 2, 6) and ⌊5/2⌋ = 2 lowest (1, 7)
    assert influence_forget_set(projections, 5, "both").tolist() == [1, 2, 5, 6, 7]
    assert influence_forget_set(projections, 4, "both").tolist() == [1, 2, 5, 7]
    with pytest.raises(DataConfigError, match=r"split\.ends"):
        influence_forget_set(projections, 3, "middle")


def test_select_split_uses_the_chosen_component_and_records_the_mean_projection():
    rng = np.random.default_rng(0)
    projections = rng.normal(size=(200, 2))
    split = {"name": "influence_pc", "size": 10, "min_size": 10, "ends": "top"}
    first = select_split({**split, "component": 1}, _Source(200), projections=projections)
    second = select_split({**split, "component": 2}, _Source(200), projections=projections)
    assert first.forget.tolist() == sorted(np.argsort(-projections[:, 0])[:10].tolist())
    assert second.forget.tolist() == sorted(np.argsort(-projections[:, 1])[:10].tolist())
    assert second.summary["influence_mean_projection"] == pytest.approx(
        np.sort(projections[:, 1])[-10:].mean()
    )
    with pytest.raises(DataConfigError, match=r"split\.component"):
        select_split({**split, "component": 3}, _Source(200), projections=projections)
    with pytest.raises(ValueError, match="projections"):
        select_split({**split, "component": 1}, _Source(200))


def test_split_size_sizes_every_rule_before_anything_is_computed():
    influence = {"name": "influence_pc", "size": 0.0002, "min_size": 10}
    assert split_size(influence, 1438) == 10
    assert split_size({"name": "random", "size": 0.01}, 1438) == 14
    assert split_size({"name": "class", "label": 0}, 1438) is None
    with pytest.raises(DataConfigError, match=r"split\.min_size"):
        split_size({**influence, "min_size": 1438}, 1438)
    trak = {**influence, "attribution": "trak", "proj_dim": 512}
    assert split_size(trak, 1438) == 10
    with pytest.raises(DataConfigError, match=r"split\.proj_dim=2048: must be below \|S\| = 1438"):
        split_size({**trak, "proj_dim": 2048}, 1438)
