"""The validation split (issue 16): a fixed part of the held-out data D_test that no training
stage reads and that every selection (tuning, best trial) uses instead of the test set (002 §2:
selection criteria fixed in advance and independent of the reported metric).

It is carved from D_test rather than from S so that S — and with it f_A, the forget set, the
oracle and every cache entry — stays what the papers train on; the test metrics are then read
on the rest of D_test (docs/config/validation.md). The draw reads no label: which samples are
validation samples cannot depend on the test labels, so permuting them changes no selection.
"""

from __future__ import annotations

import numpy as np


def carve_validation(
    n_held_out: int, rows: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(val_rows, test_rows)``: round(``fraction`` · |rows|) of the held-out ``rows`` (indices
    into D_test, which has ``n_held_out`` samples; ``None`` = all of them) drawn uniformly with
    ``seed``, and the rest; both sorted. At least one row stays a test row."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} is not in (0, 1)")
    rows = np.arange(n_held_out) if rows is None else np.asarray(rows, dtype=np.int64)
    take = min(int(round(fraction * len(rows))), max(len(rows) - 1, 0))
    val_rows = np.sort(np.random.default_rng(seed).choice(rows, take, replace=False))
    return val_rows, np.setdiff1d(rows, val_rows)
