"""Forget-set selection (SPEC §3): rules that turn labels and memorization scores into the
indices of the forget set F ⊂ S. The retain set is R = S \\ F. The pipeline caches the result,
so every method of a sweep sees the same F. Scores reach this module as arrays computed by the
pipeline (STYLE.md: datamodules never import the library).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.errors import DataConfigError
from datamodules.sources import ImageSource


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


MEMORIZATION_LEVELS = ("high", "mid", "low")


def memorization_forget_set(
    scores: np.ndarray, size: float | int, level: str, exclude: np.ndarray | None = None
) -> np.ndarray:
    """F by memorization level (000 App. C.1), sorted indices.

    ``high``: the |F| samples of highest score; ``low``: lowest; ``mid``: the |F| samples whose
    score is closest to 0.5. Samples in ``exclude`` are never chosen (disjoint levels). Samples
    with a NaN score (never held out by the estimator) are never chosen. Ties break by index.
    """
    if level not in MEMORIZATION_LEVELS:
        raise DataConfigError("split.level", level, f"choose one of {list(MEMORIZATION_LEVELS)}")
    count = forget_count(size, len(scores))
    candidates = np.flatnonzero(np.isfinite(scores))
    if exclude is not None and len(exclude):
        candidates = np.setdiff1d(candidates, exclude)
    if count > len(candidates):
        raise DataConfigError(
            "split.size",
            size,
            f"only {len(candidates)} samples are eligible for level '{level}' (finite score, not "
            "excluded); lower split.size or set split.disjoint=false",
        )
    values = scores[candidates]
    key = {"high": -values, "low": values, "mid": np.abs(values - 0.5)}[level]
    return np.sort(candidates[np.argsort(key, kind="stable")[:count]])


def memorization_levels(
    scores: np.ndarray, size: float | int, disjoint: bool = False
) -> dict[str, np.ndarray]:
    """F_high, F_mid and F_low of the same size. With ``disjoint=True`` mid excludes high and
    low excludes high and mid, so the three levels never share a sample."""
    levels: dict[str, np.ndarray] = {}
    taken = np.empty(0, dtype=np.int64)
    for level in MEMORIZATION_LEVELS:
        levels[level] = memorization_forget_set(scores, size, level, taken if disjoint else None)
        taken = np.union1d(taken, levels[level])
    return levels


def level_overlaps(levels: dict[str, np.ndarray]) -> dict[str, float]:
    """Pairwise overlap |A ∩ B| / |A| of the memorization levels, keyed ``high_mid`` etc."""
    out = {}
    for i, a in enumerate(MEMORIZATION_LEVELS):
        for b in MEMORIZATION_LEVELS[i + 1 :]:
            shared = len(np.intersect1d(levels[a], levels[b]))
            out[f"{a}_{b}"] = shared / max(len(levels[a]), 1)
    return out


def mixed_memorization_forget_set(scores: np.ndarray, size: float | int) -> np.ndarray:
    """``mix``: |F| split as evenly as possible over disjoint high, mid and low levels."""
    count = forget_count(size, len(scores))
    parts = [count // 3 + (1 if i < count % 3 else 0) for i in range(3)]
    taken = np.empty(0, dtype=np.int64)
    for level, part in zip(MEMORIZATION_LEVELS, parts):
        if part:
            taken = np.union1d(taken, memorization_forget_set(scores, part, level, taken))
    return taken


def class_forget_set(targets: np.ndarray, label: int, key: str = "split.label") -> np.ndarray:
    """Class-wise forgetting (004 §5.1): every sample of class ``label``."""
    forget = np.flatnonzero(targets == label)
    if len(forget) == 0 or len(forget) == len(targets):
        present = sorted(set(np.unique(targets).tolist()))
        raise DataConfigError(key, label, f"choose a class present in S: {present[:20]}")
    return forget


#: the principal components an influence-PC split may use (002 App. M: the 1st and the 2nd)
INFLUENCE_COMPONENTS = (1, 2)
#: which end(s) of a component's projections an influence-PC split takes
INFLUENCE_ENDS = ("top", "both")
#: |S| of CIFAR-10, where 002 App. M's forget-set sizes (10, 100, 250 + 250) are counted
INFLUENCE_REFERENCE_N = 50_000


def influence_count(size: float | int, n_train: int, min_size: int) -> int:
    """|F| of an influence-PC split. A count ``size ≥ 1`` is taken as given; a fraction
    ``0 < size < 1`` of |S| is floored at ``min_size``: 002 App. M's sizes as fractions of
    CIFAR-10's 50,000 (0.0002, 0.002, 0.01 for 10, 100, 500 samples) give the same counts there
    and never fewer than ``min_size`` samples on a small dataset (digits: 10, 10, 14). Must
    leave 1 ≤ |F| < |S|."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise DataConfigError("split.size", size, "give a fraction of |S| in (0, 1) or a count ≥ 1")
    if size >= 1:
        return forget_count(size, n_train)
    count = max(int(round(size * n_train)), int(min_size))
    if count >= n_train:
        raise DataConfigError(
            "split.min_size",
            min_size,
            f"the forget set must leave samples to retain: give a floor below |S| = {n_train}",
        )
    return count


def split_size(split: Mapping[str, Any], n_train: int) -> int | None:
    """|F| that the ``split`` rule will choose, checked against |S| (a :class:`DataConfigError`
    naming the key otherwise) before anything is computed; ``None`` for rules without a size
    (class, group). For ``influence_pc`` with TRAK also ``split.proj_dim < |S|``: TRAK inverts
    the projected gradients' (proj_dim × proj_dim) Gram matrix, which has rank ≤ |S|."""
    if "size" not in split:
        return None
    if split["name"] != INFLUENCE_SPLIT:
        return forget_count(split["size"], n_train)
    if split.get("attribution") == "trak" and split["proj_dim"] >= n_train:
        raise DataConfigError(
            "split.proj_dim",
            split["proj_dim"],
            f"must be below |S| = {n_train}: TRAK inverts the Gram matrix of the projected "
            f"gradients, singular from |S| dimensions on (e.g. split.proj_dim={n_train // 3})",
        )
    return influence_count(split["size"], n_train, split["min_size"])


def influence_forget_set(projections: np.ndarray, count: int, ends: str) -> np.ndarray:
    """F from one principal component's projections (002 App. M, forget sets 4–9), sorted
    indices: ``top`` takes the ``count`` targets of highest projection; ``both`` the
    ⌈count/2⌉ highest and the ⌊count/2⌋ lowest (sets 6 and 9: 250 + 250). Ties break by index."""
    if ends not in INFLUENCE_ENDS:
        raise DataConfigError("split.ends", ends, f"choose one of {list(INFLUENCE_ENDS)}")
    if not 1 <= count < len(projections):
        raise DataConfigError(
            "split.size", count, f"give between 1 and {len(projections) - 1} samples"
        )
    highest = np.argsort(-projections, kind="stable")
    if ends == "top":
        return np.sort(highest[:count])
    top = (count + 1) // 2
    lowest = np.argsort(projections, kind="stable")[: count - top]
    return np.sort(np.concatenate([highest[:top], lowest]))


#: split rules that need memorization scores.
MEMORIZATION_SPLITS = ("mem_high", "mem_mid", "mem_low", "mix")
#: the split rule that needs the influence matrix's principal components (002 App. M)
INFLUENCE_SPLIT = "influence_pc"


@dataclass
class ForgetSplit:
    """The result of a ``split`` rule: F's indices in S, the part of D_test to evaluate on
    (``None`` = all of it), and summary numbers recorded in ``results.json`` under ``split/``."""

    forget: np.ndarray
    test: np.ndarray | None = None
    summary: dict[str, float] = field(default_factory=dict)


def select_split(
    split: Mapping[str, Any],
    source: ImageSource,
    scores: np.ndarray | None = None,
    projections: np.ndarray | None = None,
) -> ForgetSplit:
    """Apply the ``split`` config (SPEC §3) to ``source``: ``random``, ``mem_high|mid|low``,
    ``mix`` (these need ``scores``), ``influence_pc`` (needs ``projections``, (|S|, components):
    each training sample's projection on the influence matrix's principal components), ``class``
    or ``group``."""
    name, targets = split["name"], source.targets("train")
    summary: dict[str, float] = {}
    test = None
    if name == "random":
        forget = random_forget_set(targets, split["size"], split["seed"], split["stratified"])
    elif name in MEMORIZATION_SPLITS:
        if scores is None:
            raise ValueError(f"split={name} needs memorization scores")
        levels = memorization_levels(scores, split["size"], disjoint=split.get("disjoint", False))
        forget = (
            mixed_memorization_forget_set(scores, split["size"])
            if name == "mix"
            else levels[name.removeprefix("mem_")]
        )
        summary.update({f"overlap_{k}": v for k, v in level_overlaps(levels).items()})
        summary["mean_mem"] = float(np.nanmean(scores[forget]))
        summary["mean_mem_all"] = float(np.nanmean(scores))
    elif name == INFLUENCE_SPLIT:
        if projections is None:
            raise ValueError(f"split={name} needs the influence matrix's projections")
        component = split["component"]
        if component not in INFLUENCE_COMPONENTS:
            raise DataConfigError(
                "split.component", component, f"choose one of {list(INFLUENCE_COMPONENTS)}"
            )
        count = influence_count(split["size"], len(targets), split["min_size"])
        values = projections[:, component - 1]
        forget = influence_forget_set(values, count, split["ends"])
        summary["influence_mean_projection"] = float(values[forget].mean())
    elif name == "class":
        forget = class_forget_set(targets, split["label"])
        test = np.flatnonzero(source.targets("test") != split["label"])
    elif name == "group":
        if not hasattr(source, "fine_targets"):
            raise DataConfigError(
                "split", "group", f"dataset={source.name} has no sub-classes; use dataset=cifar20"
            )
        fine = split["fine_label"]
        forget = class_forget_set(source.fine_targets("train"), fine, "split.fine_label")
        test = np.flatnonzero(source.fine_targets("test") != fine)
    else:
        raise DataConfigError("split.name", name, "unknown split rule")
    flipped = getattr(source, "flipped", None)
    if flipped is not None:
        summary["n_noisy_forget"] = int(np.isin(forget, flipped).sum())
    return ForgetSplit(forget, test, summary)
