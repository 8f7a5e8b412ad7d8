"""The validation split (issue 16): a fixed, stratified part of the held-out data D_test that no
training stage reads and that every selection (tuning, best trial) uses instead of the test set
(002 §2: selection criteria fixed in advance and independent of the reported metric).

It is carved from D_test rather than from S so that S — and with it f_A, the forget set, the
oracle and every cache entry — stays what the papers train on; the test metrics are then read
on the rest of D_test (docs/pipeline.md, "The validation split").
"""

from __future__ import annotations

import numpy as np


def carve_validation(
    targets: np.ndarray, rows: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(val_rows, test_rows)``: a ``fraction`` of the held-out ``rows`` (indices into D_test
    whose labels are ``targets``; ``None`` = all of D_test) drawn per class with ``seed`` —
    round(fraction · n_c) of each class's n_c rows — and the rest; both sorted. Every class keeps
    at least one test row, so a class with a single row goes to the test part."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} is not in (0, 1)")
    targets = np.asarray(targets)
    rows = np.arange(len(targets)) if rows is None else np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(targets[rows]):
        members = rows[targets[rows] == label]
        take = min(int(round(fraction * len(members))), len(members) - 1)
        val.append(rng.permutation(members)[:take])
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    return val_rows, np.setdiff1d(rows, val_rows)
