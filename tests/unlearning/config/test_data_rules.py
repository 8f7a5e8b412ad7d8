"""Issue 19: the rules over the loaded data (unlearning/config/consistency.py ``check_data_sets``,
``check_scores``), run by ``check_inputs`` before any training; each names the key that made a
set empty."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from unlearning.config.consistency import check_data_sets, check_scores
from unlearning.errors import ConfigError


class Labels:
    """A stand-in source: only the labels the rules read."""

    def __init__(self, train, test, fine_train=None, fine_test=None) -> None:
        self._t = {"train": np.asarray(train), "test": np.asarray(test)}
        self._f = {"train": np.asarray(fine_train or train), "test": np.asarray(fine_test or test)}

    def targets(self, part: str) -> np.ndarray:
        return self._t[part]

    def fine_targets(self, part: str) -> np.ndarray:
        return self._f[part]


def _cfg(split: dict, **dataset):
    return OmegaConf.create({"dataset": {"name": "x", **dataset}, "split": split})


def _refused(cfg, source) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_data_sets(cfg, source)
    assert "\n" not in str(info.value)
    return info.value


def test_an_empty_test_part_names_the_key_that_sized_it():
    random = {"name": "random"}
    error = _refused(_cfg(random, test_fraction=0.001), Labels([0, 1, 2], []))
    assert error.key == "dataset.test_fraction" and "it holds 0" in str(error)
    assert _refused(_cfg(random, n_test=0), Labels([0, 1], [])).key == "dataset.n_test"
    assert _refused(_cfg(random, root="/d"), Labels([0, 1], [])).key == "dataset.root"
    assert _refused(_cfg(random, n_train=1), Labels([0], [1])).key == "dataset.n_train"
    check_data_sets(_cfg(random, test_fraction=0.2), Labels([0, 1], [1]))  # passes


def test_a_class_split_names_a_class_of_s_and_leaves_r_and_the_test_set_non_empty():
    source = Labels([0, 0, 1, 1], [1, 1])
    check_data_sets(_cfg({"name": "class", "label": 0}), source)
    absent = _refused(_cfg({"name": "class", "label": 2}), source)
    assert absent.key == "split.label" and "no sample of S has it" in str(absent)
    no_test = _refused(_cfg({"name": "class", "label": 1}), source)
    assert no_test.key == "split.label" and "D_test without it is empty" in str(no_test)
    everything = _refused(_cfg({"name": "class", "label": 0}), Labels([0, 0], [1]))
    assert "R is empty" in str(everything)


def test_a_group_split_reads_the_fine_labels():
    source = Labels([0, 0, 1], [0, 1], fine_train=[3, 4, 5], fine_test=[3, 3])
    check_data_sets(_cfg({"name": "group", "fine_label": 4}), source)
    error = _refused(_cfg({"name": "group", "fine_label": 3}), source)
    assert error.key == "split.fine_label" and "D_test" in str(error)


def test_score_files_need_finite_scores_enough_for_the_forget_set():
    cfg = OmegaConf.create(
        {"memorization": {"path": "s.npz"}, "split": {"size": 0.1, "disjoint": True}}
    )
    scores = np.linspace(0, 1, 30)
    check_scores(cfg, scores, 10)  # 30 finite: three disjoint levels of 10
    scores[0] = np.nan
    with pytest.raises(ConfigError, match="at least 30 finite scores"):
        check_scores(cfg, scores, 10)
    check_scores(OmegaConf.merge(cfg, {"split": {"disjoint": False}}), scores, 10)
    scores[1] = -np.inf
    with pytest.raises(ConfigError, match="1 of its 30 scores are infinite"):
        check_scores(cfg, scores, 1)
