"""Forgetting quality of the NeurIPS 2023 machine-unlearning competition (Triantafillou et al.
2024, "Are we making progress in unlearning? Findings from the first NeurIPS unlearning
competition", arXiv 2406.09073), following the competition's public scoring code
(``google-deepmind/unlearning_evaluation``, ``metric.py`` and ``main.py``) step by step.

Unlearning is read as (ε, δ)-indistinguishability between the distribution of the unlearned
models and that of models retrained without the forget set, measured per forget example on the
logit-scaled confidence φ = log(p_y / (1 − p_y)), which for a softmax is the margin
``z_y − logsumexp_{k≠y} z_k`` the ensembles hold:

1. **Orientation.** The *positive* population of an example is the one (unlearned or retrained)
   with the larger median φ; the other is *negative*.
2. **Attacks.** Two families of decision rules are swept over a grid of thresholds:
   single thresholds ("positive iff φ ≥ t", :data:`THRESHOLDS_PER_UNIT` per unit of φ over the
   pooled range) and double thresholds ("positive iff l ≤ φ ≤ r", windows around the peakier
   population, :func:`double_threshold_rates`). Each gives a false positive rate (FPR) and a false
   negative rate (FNR) over the models.
3. **ε per threshold** (the paper's eq. for (ε, δ)-DP hypothesis tests, Kairouz et al. 2015):
   ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped below at 0, with
   δ = :data:`DELTA`; a threshold with FPR = FNR = 0 separates perfectly (ε = ∞); a threshold with
   exactly one of them 0 is discarded (too few models to estimate it).
4. **ε per example**: the largest over thresholds, capped at :data:`EPSILON_CAP`; an example whose
   two populations differ in spread by more than 100× (the smaller range under 1% of the larger:
   one population is a spike) gets the cap directly.
5. **Score per example**: H(ε) = 2 / 2^b(ε), b(ε) the 1-based index of ε's bin of width
   :data:`BIN_WIDTH` (1 point for ε < 0.5, ½ for ε < 1, …), 0 beyond ⌈log(N − 1)⌉, the largest ε
   that N unlearned models can resolve.
6. **Forgetting quality** F: the mean of H over the forget set. **Final score**:
   F · (RA_U / RA_R) · (TA_U / TA_R), the retain and test accuracies of the unlearned and the
   retrained models (the competition's "utility adjustment").

Rates are computed with sorted populations and ``searchsorted`` (exactly the fraction of models
on each side of each threshold), in float64; the reference code uses float32 rates, which can
move an ε across a bin edge only when it lies within ~1e-7 of it.
"""

from __future__ import annotations

import math

import numpy as np

from unlearning.evaluation.metrics.klom import margin_pair

#: δ of the (ε, δ) estimate (the competition's ``DELTA``)
DELTA = 1e-5
#: the largest ε reported (and the ε of an example whose populations differ 100× in spread)
EPSILON_CAP = 50.0
#: thresholds per unit of φ in both sweeps
THRESHOLDS_PER_UNIT = 100
#: half-width of the double-threshold sweep around the peakier population, in units of φ
BUFFER = 2.0
#: width of the ε bins of the per-example score
BIN_WIDTH = 0.5
#: below this ratio of the smaller to the larger range of φ, ε is :data:`EPSILON_CAP`
PEAKY_RATIO = 0.01


def _count(sorted_values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """How many of ``sorted_values`` lie in [low, high] (0 where low > high)."""
    inside = np.searchsorted(sorted_values, high, "right") - np.searchsorted(sorted_values, low)
    return np.maximum(inside, 0)


def single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and FNR of "positive iff φ ≥ t" for ⌈(max − min) · 100⌉ thresholds t spread evenly
    over the pooled range of ``pos`` and ``neg`` (``metric.py: _get_single_threshold_rates``)."""
    pooled = np.concatenate([pos, neg])
    low, high = pooled.min(), pooled.max()
    thresholds = np.linspace(low, high, math.ceil((high - low) * THRESHOLDS_PER_UNIT))
    pos, neg = np.sort(pos), np.sort(neg)
    fnr = np.searchsorted(pos, thresholds) / len(pos)  # positives below t
    fpr = 1.0 - np.searchsorted(neg, thresholds) / len(neg)  # negatives at or above t
    return fpr, fnr


def double_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and FNR of "positive iff l ≤ φ ≤ r" (``metric.py: _get_double_threshold_rates``).

    The positive class is the peakier population (the smaller range w; the two swap when
    ``pos`` is not strictly the peakier). The right edges r run over [min + w − 2, max + 2] of
    that population (that is, max ± 2), 100 per unit, and for each r the left edges l over
    [r − w − 2, r − w + 2], 400 of them: windows of widths w ± 2 around the peakier one."""
    if np.ptp(pos) >= np.ptp(neg):
        pos, neg = neg, pos
    width = np.ptp(pos)
    low, high = pos.min() + width - BUFFER, pos.max() + BUFFER
    right = np.linspace(low, high, math.ceil((high - low) * THRESHOLDS_PER_UNIT))
    left = np.linspace(
        right - width - BUFFER,
        right - width + BUFFER,
        math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT),
        axis=1,
    )
    right = np.broadcast_to(right[:, None], left.shape)
    pos, neg = np.sort(pos), np.sort(neg)
    fnr = 1.0 - _count(pos, left, right) / len(pos)
    fpr = _count(neg, left, right) / len(neg)
    return fpr.ravel(), fnr.ravel()


def threshold_epsilons(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """ε of each threshold from its FPR and FNR (``metric.py: _get_epsilons``): ∞ where both are
    0 (perfect separation), NaN (discarded) where exactly one is 0, else
    max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR) clipped below at 0 — a term with
    a rate of 1 is undefined and the other term is used; NaN when both are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1.0 - delta - fpr) - np.log(fnr)
        b = np.log(1.0 - delta - fnr) - np.log(fpr)
        eps = np.clip(np.fmax(a, b), 0.0, None)
    eps = np.where(fpr * fnr == 0, np.nan, eps)
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float = DELTA) -> float:
    """ε of one example from its positive and negative populations of φ (steps 2–4 of the module
    docstring), in [0, :data:`EPSILON_CAP`].

    Where no threshold gives an estimate (both populations one and the same constant: every
    threshold has FPR or FNR 0), ε is 0 — nothing tells the two apart; the reference code stops
    with an assertion there."""
    spreads = sorted((np.ptp(pos), np.ptp(neg)))
    if spreads[1] > 0 and spreads[0] / spreads[1] < PEAKY_RATIO:
        return EPSILON_CAP
    rates = [single_threshold_rates(pos, neg), double_threshold_rates(pos, neg)]
    eps = threshold_epsilons(
        np.concatenate([r[0] for r in rates]), np.concatenate([r[1] for r in rates]), delta
    )
    if np.all(np.isnan(eps)):
        return 0.0
    return float(min(np.nanmax(eps), EPSILON_CAP))


def epsilons(unlearned: np.ndarray, oracle: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """``(n,)`` ε per example from ``(N, n)`` unlearned and ``(M, n)`` oracle φ (steps 1–4):
    the positive population of an example is the one with the larger median
    (``metric.py: compute_forget_score_from_confs``; ties: the unlearned one)."""
    u, r = margin_pair(unlearned, oracle)
    oracle_positive = np.median(r, 0) > np.median(u, 0)
    return np.array(
        [
            example_epsilon(r[:, i], u[:, i], delta)
            if oracle_positive[i]
            else example_epsilon(u[:, i], r[:, i], delta)
            for i in range(u.shape[1])
        ]
    )


def scores(eps: np.ndarray, models: int) -> np.ndarray:
    """H(ε) per example (step 5): 2 / 2^b for ε in the b-th bin [0.5(b − 1), 0.5 b), for the
    2⌈log(models − 1)⌉ bins below ⌈log(models − 1)⌉, and 0 beyond (the competition's bucket
    points; ``models`` is the number of unlearned models)."""
    if models < 2:
        raise ValueError(f"the score needs at least 2 unlearned models, got {models}")
    bins = int(round(math.ceil(math.log(models - 1)) / BIN_WIDTH))
    index = np.floor(np.asarray(eps, np.float64) / BIN_WIDTH)
    return np.where(index < bins, 0.5**index, 0.0)


def forgetting_quality(unlearned: np.ndarray, oracle: np.ndarray, delta: float = DELTA) -> float:
    """F: the mean of H(ε) over the examples (step 6), in [0, 1]; 1 = no threshold attack tells
    the unlearned models from the retrained ones on any example."""
    return float(scores(epsilons(unlearned, oracle, delta), len(unlearned)).mean())


def final_score(
    quality: float,
    retain_acc: float,
    oracle_retain_acc: float,
    test_acc: float,
    oracle_test_acc: float,
) -> float:
    """The competition's utility-adjusted score F · (RA_U / RA_R) · (TA_U / TA_R)
    (``main.py``; Triantafillou et al. 2024)."""
    return quality * (retain_acc / oracle_retain_acc) * (test_acc / oracle_test_acc)
