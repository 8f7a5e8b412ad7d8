"""The report's figures: the metric against α (000 Fig. 2) and bars per forget set (000 Fig. 4).

Each figure is written only when the jobs have what it shows (several α for one method, at least
one summarised cell); :func:`write_plots` returns the files written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearning.outputs.plots import pyplot, save_figure
from unlearning.report.tables import Job, mean_ci95, usable

Curves = dict[tuple[str, str, str], dict[float, list[float]]]


def alpha_curves(jobs: Sequence[Job], metric: str) -> Curves:
    """``{(method, optim, split): {α: [value per seed]}}`` for the usable jobs of methods with
    an α, keeping only those swept over more than one α."""
    curves: Curves = defaultdict(lambda: defaultdict(list))
    for j in usable(jobs, metric):
        if j.alpha is not None:
            curves[(j.method, j.optim, j.split)][j.alpha].append(float(j.metrics[metric]))
    return {key: points for key, points in curves.items() if len(points) > 1}


def plot_alpha_curve(curves: Curves, metric: str, path: Path) -> Path:
    """``alpha_curve.png``: mean ± 95% CI of ``metric`` against α, one line per curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (method, optim, split), points in sorted(curves.items()):
        alphas = sorted(points)
        summary = [mean_ci95(points[a]) for a in alphas]
        ax.errorbar(
            alphas,
            [m for m, _ in summary],
            yerr=[h for _, h in summary],
            marker="o",
            capsize=3,
            label=f"{method}+{optim} {split}",
        )
    ax.set_xlabel("α (retain weight)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)


def plot_bars(cells: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """``bars.png``: one group of bars per forget set, one bar per row, with 95% intervals;
    ``cells`` are :func:`unlearning.report.tables.summarise` records without the ``avg``."""
    plt = pyplot()
    rows = sorted({r["row"] for r in cells})
    splits = sorted({r["split"] for r in cells})
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(splits) + 2), 4), dpi=120)
    for i, row in enumerate(rows):
        recs = {r["split"]: r for r in cells if r["row"] == row}
        xs = [k + i * width for k, s in enumerate(splits) if s in recs]
        ax.bar(
            xs,
            [recs[s]["mean"] for s in splits if s in recs],
            width,
            yerr=[recs[s]["ci95"] for s in splits if s in recs],
            capsize=3,
            label=row,
        )
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(splits))], splits)
    ax.set_ylabel(f"{metric} (mean ± 95% CI over seeds)")
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)


def write_plots(
    jobs: Sequence[Job], records: list[dict[str, Any]], metric: str, out: Path
) -> list[Path]:
    """The figures that apply to these jobs, written into ``out``: ``alpha_curve.png`` when a
    method was swept over α, ``bars.png`` when any cell was summarised."""
    written = []
    curves = alpha_curves(jobs, metric)
    if curves:
        written.append(plot_alpha_curve(curves, metric, out / "alpha_curve.png"))
    cells = [r for r in records if r["split"] != "avg"]
    if cells:
        written.append(plot_bars(cells, metric, out / "bars.png"))
    return written
