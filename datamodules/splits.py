"""Forget-set selection (SPEC §3): rules that turn labels (and later, scores) into the indices
of the forget set F ⊂ S. The retain set is R = S \\ F. The pipeline caches the result, so every
method of a sweep sees the same F.
"""

from __future__ import annotations

import numpy as np

from datamodules.errors import DataConfigError


def forget_count(size: float | int, n_train: int, key: str = "split.size") -> int:
    """|F| from ``size``: a fraction of |S| if ``0 < size < 1``, else a count. Must satisfy
    ``1 ≤ |F| < |S|``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataConfigError(key, size, "give a fraction of |S| in (0, 1) or a count ≥ 1")
    count = int(round(size * n_train)) if 0 < size < 1 else int(size)
    if size <= 0 or count < 1 or count >= n_train or (size >= 1 and size != int(size)):
        raise DataConfigError(
            key,
            size,
            f"the forget set must hold between 1 and {n_train - 1} of the {n_train} training "
            "samples: give a fraction in (0, 1) (e.g. 0.05) or an integer count in that range",
        )
    return count


def random_forget_set(
    targets: np.ndarray, size: float | int, seed: int, stratified: bool = True
) -> np.ndarray:
    """A uniformly random forget set of |F| = ``forget_count(size)`` indices, sorted.

    ``stratified=True`` keeps class proportions: each class c contributes ``|F|·n_c/|S|``
    samples (largest-remainder rounding so the total is exactly |F|), as in the per-class random
    forgetting of SalUn/004 §5.
    """
    n = len(targets)
    count = forget_count(size, n)
    rng = np.random.default_rng(seed)
    if not stratified:
        return np.sort(rng.choice(n, size=count, replace=False))
    classes, class_sizes = np.unique(targets, return_counts=True)
    quota = count * class_sizes / n
    take = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: count - take.sum()]] += 1
    chosen = [
        rng.choice(np.flatnonzero(targets == c), size=k, replace=False)
        for c, k in zip(classes, take)
        if k > 0
    ]
    return np.sort(np.concatenate(chosen))
