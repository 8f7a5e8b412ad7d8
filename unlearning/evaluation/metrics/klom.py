"""KLoM — KL divergence of margins (002 §2, Georgiev et al. 2024; SPEC §5).

For every sample, the margin ``logit_y − logsumexp_{k≠y} logit_k`` is read from each of N
unlearned models and each of M oracle models (models retrained without F). The two empirical
margin distributions of the sample are compared by histogram binning, as in the reference
implementation: margins are clipped to [−100, 100], 20 equal-width bins span the pooled range of
both sets of margins, empty oracle bins get a small floor, and

    KLoM_i = KL(P_unlearned ‖ Q_oracle) = Σ_b p_b log(p_b / q_b)   (bins with p_b = 0 add 0).

A set is summarised by the 95th percentile of KLoM_i over its samples. 0 = the unlearned models
are distributed like the oracles on that sample.
"""

from __future__ import annotations

import numpy as np
import torch

#: probability given to empty oracle bins (keeps the divergence finite)
FLOOR = 1e-5


def margins(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``(..., n)`` margins ``z_y − logsumexp_{k≠y} z_k`` of ``(..., n, K)`` logits; ``labels``
    ``(n,)`` (or any shape that broadcasts to ``logits.shape[:-1]``)."""
    logits = logits.double()
    idx = labels.long().expand(logits.shape[:-1]).unsqueeze(-1)
    correct = logits.gather(-1, idx)
    others = logits.scatter(-1, idx, float("-inf"))
    return (correct.squeeze(-1) - torch.logsumexp(others, dim=-1)).numpy()


def margin_pair(unlearned: np.ndarray, oracle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, n)`` and ``(M, n)`` margins of two ensembles on the same n samples as float64,
    checked: two 2-D arrays over the same samples, every margin finite (a diverged member's NaN
    is refused, not scored)."""
    u = np.asarray(unlearned, np.float64)
    r = np.asarray(oracle, np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"margins must be (N, n) and (M, n), got {u.shape} and {r.shape}")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("the margins hold NaN or ±inf (a diverged ensemble member?)")
    return u, r


def klom_scores(
    unlearned: np.ndarray,
    oracle: np.ndarray,
    bins: int = 20,
    clip: float = 100.0,
    floor: float = FLOOR,
) -> np.ndarray:
    """Per-sample KLoM from ``(N, n)`` unlearned and ``(M, n)`` oracle margins (002 §2)."""
    # a diverged model's NaN margin counts as the worst margin, −clip
    u = np.clip(np.nan_to_num(np.asarray(unlearned, np.float64), nan=-clip), -clip, clip)
    o = np.clip(np.nan_to_num(np.asarray(oracle, np.float64), nan=-clip), -clip, clip)
    if u.ndim != 2 or o.ndim != 2 or u.shape[1] != o.shape[1]:
        raise ValueError(f"margins must be (N, n) and (M, n), got {u.shape} and {o.shape}")
    if len(u) == 0 or len(o) == 0:
        raise ValueError("KLoM needs at least one unlearned and one oracle model")
    lo = np.minimum(u.min(0), o.min(0))
    hi = np.maximum(u.max(0), o.max(0))
    width = np.where(hi > lo, hi - lo, 1.0)

    def histogram(v: np.ndarray) -> np.ndarray:
        b = np.clip(((v - lo) / width * bins).astype(np.int64), 0, bins - 1)  # (N, n)
        counts = np.zeros((v.shape[1], bins))
        np.add.at(counts, (np.broadcast_to(np.arange(v.shape[1]), v.shape), b), 1.0)
        return counts / len(v)

    p, q = histogram(u), np.maximum(histogram(o), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(1)


def klom(unlearned: np.ndarray, oracle: np.ndarray, percentile: float = 95.0, **kw) -> float:
    """The ``percentile``-th percentile over samples of :func:`klom_scores` (002 §2: 95th)."""
    return float(np.percentile(klom_scores(unlearned, oracle, **kw), percentile))
