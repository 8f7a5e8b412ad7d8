"""U-LiRA, the per-example unlearning membership attack of Hayes et al. 2024 ("Inexact unlearning
needs more careful evaluations to avoid a false sense of privacy", arXiv 2403.01218): for
each example, can an attacker who sees one model's output on it tell whether the model was
*unlearned* (trained with the example, which was then unlearned) or *retrained* without it?

U-LiRA is LiRA's online attack (Carlini et al. 2022, "Membership inference attacks from first
principles", Alg. 1) with "trained on x" replaced by "trained on x, then x unlearned":

1. the statistic is the logit-scaled confidence φ(p_y) = log(p_y / (1 − p_y)) of the true label,
   which for a softmax is exactly the margin ``z_y − logsumexp_{k≠y} z_k`` the ensembles hold
   (002 §2);
2. per example, one Gaussian N(μ_u, σ_u²) is fitted to φ under shadow *unlearned* models and one,
   N(μ_r, σ_r²), under shadow *retrained* models (maximum likelihood: the mean and variance of
   LiRA Alg. 1; LiRA's public code takes the median as the location, we keep the algorithm's
   mean);
3. a target model's φ on the example is scored by the likelihood ratio
   Λ = N(φ; μ_u, σ_u²) / N(φ; μ_r, σ_r²) (LiRA Alg. 1's return value) and judged *unlearned*
   when Λ > 1, the Bayes decision between two equally likely hypotheses;
4. the attack's accuracy is measured on target models that were not shadows, half of them
   unlearned and half retrained; 0.5 means the unlearned models cannot be told from retrained
   ones on that example.

Here the shadow and target models come from the same two ensembles (N unlearned models, M
oracles): the members are split into ``folds`` (default: leave-one-out, member k of each ensemble
held out in fold k); each fold's held-out members are the targets and every other member is a
shadow, so no model scores itself. Hayes et al. train separate shadow populations on random
halves of the data, forget random subsets of them and attack fresh target models; with one
forget set and its two ensembles, cross-fitting is the closest held-out protocol.
"""

from __future__ import annotations

import numpy as np

from unlearning.evaluation.metrics.klom import margin_pair

#: added to every fitted standard deviation, as LiRA's reference code does (``std + 1e-30``), so
#: that a shadow population of identical values gives a (very narrow) Gaussian, not a 0/0
STD_FLOOR = 1e-30


def log_likelihood_ratio(
    x: np.ndarray,
    mean_u: np.ndarray,
    std_u: np.ndarray,
    mean_r: np.ndarray,
    std_r: np.ndarray,
) -> np.ndarray:
    """log Λ = log N(x; μ_u, σ_u²) − log N(x; μ_r, σ_r²), elementwise (LiRA Alg. 1's Λ).

    With z = (x − μ)/σ, log N(x; μ, σ²) = −z²/2 − log σ − log √(2π); the constant cancels.
    NaN where both densities underflow to 0 (x far from both spikes of degenerate fits)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        z_u = (x - mean_u) / std_u
        z_r = (x - mean_r) / std_r
        return (0.5 * z_r**2 + np.log(std_r)) - (0.5 * z_u**2 + np.log(std_u))


def fit_gaussians(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``(models, n)`` values, the maximum-likelihood Gaussian: the mean and the
    standard deviation (``ddof=0``, as LiRA's ``np.std``) plus :data:`STD_FLOOR`."""
    return values.mean(0), values.std(0) + STD_FLOOR


def _fold_of(members: int, folds: int) -> np.ndarray:
    """Member k of an ensemble is held out in fold ``k % folds``."""
    return np.arange(members) % folds


def ulira_accuracies(
    unlearned: np.ndarray, oracle: np.ndarray, folds: int | None = None
) -> np.ndarray:
    """Per example, the balanced accuracy of U-LiRA (Hayes et al. 2024) on held-out members.

    Args:
        unlearned: ``(N, n)`` logit-scaled confidences (margins) of n examples under N unlearned
            models.
        oracle: ``(M, n)`` the same under M oracles (models retrained without the forget set).
        folds: cross-fitting folds; member k of each ensemble is a target in fold ``k % folds``
            and a shadow in the others. ``None``: leave-one-out (``max(N, M)`` folds).

    Returns:
        ``(n,)`` accuracies ½ (TPR + TNR) with *unlearned* as the positive class, where a target
        is judged unlearned iff log Λ > 0 (a tie or an undefined ratio counts as *retrained*);
        0.5 = the two populations cannot be told apart on that example.

    Raises:
        ValueError: for mismatched shapes, margins that are not finite, or a fold that leaves
            fewer than two shadows of one ensemble (a Gaussian needs two values).
    """
    u, r = margin_pair(unlearned, oracle)
    folds = max(len(u), len(r)) if folds is None else folds
    fold_u, fold_r = _fold_of(len(u), folds), _fold_of(len(r), folds)
    shadows = min(min(np.sum(fold_u != f), np.sum(fold_r != f)) for f in range(folds))
    if folds < 2 or shadows < 2:
        raise ValueError(
            f"U-LiRA needs at least 2 shadow models of each kind in every fold; {len(u)} "
            f"unlearned and {len(r)} oracle models in {folds} folds leave {shadows}"
        )
    hits_u = np.zeros(u.shape[1])
    hits_r = np.zeros(u.shape[1])
    for f in range(folds):
        mean_u, std_u = fit_gaussians(u[fold_u != f])
        mean_r, std_r = fit_gaussians(r[fold_r != f])
        hits_u += (log_likelihood_ratio(u[fold_u == f], mean_u, std_u, mean_r, std_r) > 0).sum(0)
        hits_r += (~(log_likelihood_ratio(r[fold_r == f], mean_u, std_u, mean_r, std_r) > 0)).sum(0)
    return 0.5 * (hits_u / len(u) + hits_r / len(r))


def ulira_accuracy(unlearned: np.ndarray, oracle: np.ndarray, folds: int | None = None) -> float:
    """The mean over examples of :func:`ulira_accuracies` (Hayes et al. 2024 report the attack's
    accuracy over the forget set; 0.5 = indistinguishable, 1 = every target model told)."""
    return float(ulira_accuracies(unlearned, oracle, folds).mean())
