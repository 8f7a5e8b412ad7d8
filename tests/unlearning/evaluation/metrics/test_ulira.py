"""U-LiRA (Hayes et al. 2024): the Gaussian likelihood ratio, the fits, the held-out
(cross-fitted) accuracy on hand-computed numbers, and its behaviour on synthetic ensembles."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from unlearning.evaluation.metrics.ulira import (
    fit_gaussians,
    log_likelihood_ratio,
    ulira_accuracies,
    ulira_accuracy,
)


def test_log_likelihood_ratio_of_two_gaussians():
    # log N(1; 1, 1) − log N(1; 0, 2²) = (0 − log 1) − (−(1/2)²/2 − log 2) = 1/8 + log 2
    value = log_likelihood_ratio(np.array(1.0), 1.0, 1.0, 0.0, 2.0)
    assert value == pytest.approx(0.125 + math.log(2.0))
    x = np.array([-1.0, 0.3, 4.0])
    expected = norm.logpdf(x, 0.5, 0.7) - norm.logpdf(x, -0.2, 1.3)
    assert log_likelihood_ratio(x, 0.5, 0.7, -0.2, 1.3) == pytest.approx(expected)


def test_gaussians_are_the_maximum_likelihood_fit_per_example():
    mean, std = fit_gaussians(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert mean.tolist() == [2.0, 5.0]
    assert std[0] == pytest.approx(1.0)  # ddof = 0, as LiRA's np.std
    assert 0.0 < std[1] < 1e-20  # identical shadows: the floor, not a zero


def test_leave_one_out_accuracy_by_hand():
    # 3 models each: fold k holds out unlearned k and oracle k and fits on the other two.
    # Fold 0: N(11.5, 0.5²) vs N(1.5, 0.5²); 10 is nearer the first, 0 the second: both right.
    unlearned, oracle = np.array([[10.0], [11.0], [12.0]]), np.array([[0.0], [1.0], [2.0]])
    assert ulira_accuracies(unlearned, oracle).tolist() == [1.0]
    # unlearned member 2 looks like an oracle: fold 2 fits N(0.5, 0.5²) vs N(0.5, 0.5²) on
    # unlearned [0, 1], oracle [0, 1]: Λ = 1, judged retrained -> one miss of 3 unlearned; the
    # other folds fit the oracle Gaussian on [1, 2] or [0, 2] and get both targets right.
    unlearned = np.array([[10.0], [11.0], [1.0]])
    folds = [(np.delete(unlearned, k, 0), np.delete(oracle, k, 0)) for k in range(3)]
    hits_u = hits_o = 0
    for k, (u, o) in enumerate(folds):  # the test written out with scipy
        llr = [norm.logpdf(x, u.mean(), u.std()) - norm.logpdf(x, o.mean(), o.std())
               for x in (unlearned[k, 0], oracle[k, 0])]  # fmt: skip
        hits_u += llr[0] > 0
        hits_o += llr[1] <= 0
    expected = 0.5 * (hits_u / 3 + hits_o / 3)
    assert ulira_accuracies(unlearned, oracle)[0] == pytest.approx(expected)
    assert expected < 1.0


def test_halves_are_disjoint_shadow_and_target_models():
    # 2 folds of 4: fold 0 targets members 0 and 2, shadows 1 and 3 (and the other way round)
    unlearned = np.array([[5.0], [4.0], [6.0], [5.5]])
    oracle = np.array([[0.0], [1.0], [-1.0], [0.5]])
    assert ulira_accuracies(unlearned, oracle, folds=2).tolist() == [1.0]
    with pytest.raises(ValueError, match="2 shadow models"):
        ulira_accuracies(unlearned[:2], oracle[:2])  # leave-one-out leaves one shadow


def test_identical_ensembles_give_one_half_and_separated_ones_one():
    rng = np.random.default_rng(0)
    models = rng.normal(size=(8, 40))
    assert ulira_accuracy(models, models.copy()) == 0.5  # Λ = 1 everywhere: judged retrained
    # two samples of one distribution: near chance
    assert abs(ulira_accuracy(rng.normal(size=(16, 200)), rng.normal(size=(16, 200))) - 0.5) < 0.05
    assert ulira_accuracy(models + 10.0, models) == 1.0
    # the attack is per example: shifts in both directions are found
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    assert ulira_accuracy(models + 10.0 * signs, models) == 1.0


def test_bad_margins_are_rejected():
    with pytest.raises(ValueError, match="margins must be"):
        ulira_accuracies(np.zeros((4, 5)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        ulira_accuracies(np.full((4, 2), np.nan), np.zeros((4, 2)))
