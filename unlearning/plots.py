"""Figures saved next to ``results.json`` (PNG, matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_scores(scores: np.ndarray, forget: np.ndarray, path: Path, split_name: str) -> Path:
    """Histogram of the memorization scores of S with the chosen forget set F overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(scores)
    bins = np.linspace(min(-0.1, np.nanmin(scores)), max(1.0, np.nanmax(scores)), 41)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.hist(scores[finite], bins=bins, color="0.7", label=f"S (n={int(finite.sum())})")
    chosen = scores[forget]
    ax.hist(
        chosen[np.isfinite(chosen)],
        bins=bins,
        color="C3",
        alpha=0.8,
        label=f"F = {split_name} (n={len(forget)})",
    )
    ax.set_xlabel("memorization score (000 eq. 9)")
    ax.set_ylabel("samples")
    ax.set_yscale("log")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
