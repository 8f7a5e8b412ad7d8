"""KLoM (002 §2): margins and the binned KL between unlearned and oracle margin distributions."""

import numpy as np
import pytest
import torch

from unlearning.evaluation.metrics.klom import klom, klom_scores, margins


def test_margin_is_the_true_logit_minus_logsumexp_of_the_others():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 2])
    expected = [2.0 - np.log(2.0), 3.0 - np.log(np.exp(0.0) + np.exp(1.0))]
    assert margins(logits, labels) == pytest.approx(expected)
    stacked = margins(torch.stack([logits, logits]), labels)  # (models, n, K) -> (models, n)
    assert stacked.shape == (2, 2) and stacked[1] == pytest.approx(expected)


def test_klom_is_zero_when_unlearned_and_oracle_ensembles_are_the_same_models():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(16, 50)) * 5
    assert np.all(klom_scores(m, m.copy()) == 0.0)
    assert klom(m, m.copy()) == 0.0


def test_klom_grows_as_the_unlearned_margins_move_away_from_the_oracles():
    rng = np.random.default_rng(0)
    oracle = rng.normal(size=(64, 30))
    values = [klom(rng.normal(size=(64, 30)) + shift, oracle) for shift in (0.0, 1.0, 3.0)]
    assert values[0] < values[1] < values[2]
    assert np.isfinite(values[2])  # empty oracle bins are floored, not divided by zero


def test_margins_are_clipped_and_nan_counts_as_the_worst_margin():
    oracle = np.full((4, 1), -100.0)
    unlearned = np.array([[np.nan], [-1e6], [np.nan], [-500.0]])
    assert klom_scores(unlearned, oracle)[0] == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="margins must be"):
        klom_scores(np.zeros((3, 5)), np.zeros((3, 4)))
