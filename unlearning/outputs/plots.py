"""Figures saved next to ``results.json`` (PNG, matplotlib's non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: the
    figures are optional and matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay ``fig`` out tightly (unless it has a layout engine of its own), write it to ``path``
    and close it (frees its memory); returns ``path``."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_scores(scores: np.ndarray, forget: np.ndarray, path: Path, split_name: str) -> Path:
    """Histogram of the memorization scores of S with the chosen forget set F overlaid."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_influence(
    projections: np.ndarray, forget: np.ndarray, path: Path, title: str, component: int
) -> Path:
    """Each training sample's projection on the influence matrix's 1st and 2nd principal
    components (002 App. M) with the forget set F highlighted; the component F was chosen on
    (``component``) is named on its axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=120)
    keep = np.setdiff1d(np.arange(len(projections)), forget)
    ax.scatter(
        projections[keep, 0], projections[keep, 1], s=4, c="0.65", label=f"S \\ F (n={len(keep)})"
    )
    ax.scatter(
        projections[forget, 0],
        projections[forget, 1],
        s=16,
        c="C3",
        marker="x",
        label=f"F (n={len(forget)})",
    )
    for c, axis in ((1, ax.set_xlabel), (2, ax.set_ylabel)):
        axis(f"projection on PC{c}" + (" (F chosen here)" if c == component else ""))
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, path)


def plot_landscapes(landscapes: dict, path: Path, set_name: str) -> Path:
    """Loss landscapes of several models side by side (000 Fig. 3): one column per model
    (e.g. original, unlearned), rows = 1-D curve, 2-D contour, 2-D surface. ``landscapes`` maps
    a model name to a :class:`unlearning.evaluation.metrics.landscape.Landscape`."""
    plt = pyplot()
    names = list(landscapes)
    fig = plt.figure(figsize=(4.2 * len(names), 11), dpi=110)
    zmax = max(float(np.nanmax(ls.surface)) for ls in landscapes.values())
    zmin = min(float(np.nanmin(ls.surface)) for ls in landscapes.values())
    levels = np.linspace(zmin, zmax, 21) if zmax > zmin else 10
    for col, name in enumerate(names):
        ls = landscapes[name]
        title = f"{name} on {set_name}: basin ratio {ls.basin_ratio:.2f}"
        ax = fig.add_subplot(3, len(names), col + 1)
        ax.plot(ls.alphas, ls.curve, color="C0")
        ax.axvline(0.0, color="0.6", lw=0.8)
        ax.set_xlabel("α (filter-normalised direction 1)")
        ax.set_ylabel("loss")
        ax.set_title(title, fontsize=9)
        ax = fig.add_subplot(3, len(names), len(names) + col + 1)
        a, b = np.meshgrid(ls.grid_axis, ls.grid_axis, indexing="ij")
        cs = ax.contour(a, b, ls.surface, levels=levels, cmap="viridis")
        ax.clabel(cs, fontsize=6)
        ax.plot([0], [0], "r+")
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax = fig.add_subplot(3, len(names), 2 * len(names) + col + 1, projection="3d")
        ax.plot_surface(a, b, ls.surface, cmap="viridis", vmin=zmin, vmax=zmax)
        ax.set_zlim(zmin, zmax)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel("loss")
    return save_figure(fig, path)


def plot_features(panels: dict, path: Path) -> Path:
    """2-D projections of retain and forget embeddings coloured by class (000 Fig. 1), one panel
    per model. ``panels`` maps a model name to ``(points_R, labels_R, points_F, labels_F)``;
    retain points are small and faint, forget points are crosses."""
    plt = pyplot()
    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.6), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        pr, yr, pf, yf = panels[name]
        vmax = max(int(np.max(yr, initial=0)), int(np.max(yf, initial=0)), 1)
        ax.scatter(pr[:, 0], pr[:, 1], c=yr, cmap="tab10", vmin=0, vmax=vmax, s=4, alpha=0.35)
        ax.scatter(
            pf[:, 0], pf[:, 1], c=yf, cmap="tab10", vmin=0, vmax=vmax, s=30, marker="x", lw=1.2
        )
        ax.set_title(f"{name}: R (dots, n={len(pr)}) and F (crosses, n={len(pf)})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)
