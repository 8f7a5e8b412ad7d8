"""The NeurIPS 2023 competition's forgetting quality (Triantafillou et al. 2024): ε from FPR and
FNR, the threshold sweeps, the bins of the per-example score, the aggregation and the final
score, on hand-computed numbers and on the reference code's output."""

import math

import numpy as np
import pytest

from unlearning.evaluation.metrics.forgetting_quality import (
    DELTA,
    EPSILON_CAP,
    double_threshold_rates,
    epsilons,
    example_epsilon,
    final_score,
    forgetting_quality,
    scores,
    single_threshold_rates,
    threshold_epsilons,
)

# 8 unlearned and 8 retrained models' φ on 6 examples, and the ε the competition's own
# metric.py (google-deepmind/unlearning_evaluation, run on the CPU) returns for them:
# log 5, log 4, log 4, the cap (separated), log 5, log 7; its forget score is 0.875 / 6
UNLEARNED = np.array([
    [0.00, 0.80, 0.45, 2.11, -0.14, -1.99], [0.03, 1.84, 0.02, 2.38, 0.15, -0.64],
    [0.05, -0.43, 0.94, 3.70, -0.40, -1.46], [-0.95, -0.79, -2.68, 2.76, -0.38, -0.73],
    [0.08, 0.31, -4.03, 2.46, -0.01, -0.89], [-0.77, 0.02, -0.96, 2.19, 0.32, -1.81],
    [-0.02, 1.38, -0.17, 2.89, 0.03, -0.94], [-0.61, 0.58, 3.72, 1.45, 0.26, -0.88],
])  # fmt: skip
RETRAINED = np.array([
    [-0.64, 2.00, 0.76, -1.20, 0.07, 0.58], [-0.19, 0.68, -0.07, 0.67, 1.44, -0.68],
    [0.20, -0.46, 0.13, -1.19, -0.58, -0.20], [0.90, 1.15, -1.32, -0.79, 0.65, -1.99],
    [-0.46, -0.10, 1.26, 0.69, -0.33, -0.37], [-0.25, 1.52, -0.43, -0.30, 0.35, -0.12],
    [-0.20, -1.11, -0.01, -0.44, 1.17, 0.65], [-0.02, 0.67, -0.34, 1.05, -0.01, 0.58],
])  # fmt: skip
REFERENCE_EPS = [1.609422, 1.3862743, 1.3862743, 50.0, 1.609422, 1.9458988]


def test_epsilon_of_one_threshold_from_its_false_positive_and_negative_rates():
    fpr = np.array([0.25, 0.0, 0.0, 0.5, 1.0, 1.0])
    fnr = np.array([0.5, 0.0, 0.5, 0.5, 0.5, 1.0])
    eps = threshold_epsilons(fpr, fnr)
    # max(log(1 − δ − 0.25) − log 0.5, log(1 − δ − 0.5) − log 0.25) = log(2 (1 − 2δ)) ≈ 0.6931
    assert eps[0] == pytest.approx(math.log((0.5 - DELTA) / 0.25))
    assert eps[1] == math.inf  # perfect separation
    assert math.isnan(eps[2])  # one rate 0: too few models to tell, discarded
    assert eps[3] == 0.0  # both terms negative: clipped at 0
    assert eps[4] == 0.0  # FPR = 1: its term is undefined, the other is log(0.5 − δ) < 0
    assert math.isnan(eps[5])  # both terms undefined


def test_single_threshold_sweep_counts_models_on_each_side():
    fpr, fnr = single_threshold_rates(np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    assert len(fpr) == 200  # ⌈(2 − 0) · 100⌉ thresholds over the pooled range
    assert (fpr[0], fnr[0]) == (1.0, 0.0)  # t = 0: everything is positive
    assert (fpr[100], fnr[100]) == (0.0, 0.5)  # t ≈ 1.005: one positive below, no negative above
    assert (fpr[-1], fnr[-1]) == (0.0, 0.5)  # t = 2: "φ ≥ t" keeps the positive at 2


def test_double_threshold_sweep_puts_windows_around_the_peakier_population():
    pos, neg = np.array([0.0, 0.1]), np.array([-3.0, 3.0])
    fpr, fnr = double_threshold_rates(pos, neg)
    assert len(fpr) == 400 * 400  # right edges over max ± 2 (100 per unit) × 400 left edges
    # some window holds both values of the spike and neither of the wide population's
    assert np.any((fpr == 0.0) & (fnr == 0.0))
    # the roles do not depend on the order of the arguments when one is strictly peakier
    swapped = double_threshold_rates(neg, pos)
    assert np.array_equal(fpr, swapped[0]) and np.array_equal(fnr, swapped[1])


def test_epsilon_per_example_special_cases():
    assert example_epsilon(np.array([0.0, 1e-4]), np.array([0.0, 1.0])) == EPSILON_CAP  # spike
    assert example_epsilon(np.array([10.0, 11.0]), np.array([0.0, 1.0])) == EPSILON_CAP  # ∞
    assert example_epsilon(np.array([0.3, 0.3]), np.array([0.3, 0.3])) == 0.0  # one constant
    same = np.array([0.0, 0.4, 1.1, 2.0])
    assert example_epsilon(same, same.copy()) == 0.0


def test_epsilons_match_the_competitions_reference_code():
    assert epsilons(UNLEARNED, RETRAINED) == pytest.approx(REFERENCE_EPS, abs=1e-6)
    # the positive population is chosen per example by the median, not by the argument order
    assert epsilons(RETRAINED, UNLEARNED) == pytest.approx(REFERENCE_EPS, abs=1e-6)
    assert forgetting_quality(UNLEARNED, RETRAINED) == pytest.approx(0.875 / 6)


def test_score_bins_halve_per_half_unit_of_epsilon_up_to_log_of_the_models():
    eps = [0.0, 0.49, 0.5, 0.99, 1.0, 1.7, 2.0, 50.0]
    # 8 models: ⌈log 7⌉ = 2, so 4 bins of width 0.5 worth 1, ½, ¼, ⅛; ε ≥ 2 scores 0
    assert scores(eps, 8).tolist() == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125, 0.0, 0.0]
    assert scores([0.2, 0.7, 1.0], 3).tolist() == [1.0, 0.5, 0.0]  # ⌈log 2⌉ = 1: 2 bins
    with pytest.raises(ValueError, match="at least 2"):
        scores([0.0], 1)


def test_quality_is_one_for_the_same_models_and_zero_for_separated_ones():
    rng = np.random.default_rng(0)
    models = rng.normal(size=(8, 10))
    assert forgetting_quality(models, models.copy()) == 1.0
    assert forgetting_quality(models + 10.0, models) == 0.0
    assert forgetting_quality(models * 1e-4, models) == 0.0  # a spike against a spread
    # two samples of one distribution: the estimator's ε is log of small count ratios
    # (≈ log 4 to log 7 at N = 8), so F sits well below 1 but above the separated case
    other = rng.normal(size=(8, 10))
    assert 0.0 < forgetting_quality(other, models) < 0.5


def test_bad_margins_are_rejected():
    with pytest.raises(ValueError, match="margins must be"):
        epsilons(np.zeros((3, 5)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        epsilons(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_final_score_adjusts_for_utility_against_the_oracle():
    # 0.5 · (0.9 / 1.0) · (0.8 / 0.4) = 0.9
    assert final_score(0.5, 0.9, 1.0, 0.8, 0.4) == pytest.approx(0.9)
