"""The report's figures: the metric against α (000 Fig. 2), bars per forget set (000 Fig. 4) and
KLoM on F against KLoM on held-out data for every run (002 Fig. 1).

Each figure is written only when the jobs have what it shows (several α for one method, at least
one summarised cell); :func:`write_plots` returns the files written.
"""

from __future__ import annotations

import itertools
import math
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


#: the KLoM keys of one run: the unlearned ensemble's and the pretrained ensemble's, per set
KLOM_KEY, KLOM_ORIGINAL_KEY = "klom/{}", "klom_original/{}"


def _finite(job: Job, key: str) -> float | None:
    value = job.metrics.get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def forget_set_labels(jobs: Sequence[Job]) -> dict[Path, str]:
    """A label per job (by its ``results.json`` path) naming its forget set: the split's name
    and, among the jobs with that name, the ``split`` settings that differ between them
    (``influence_pc component=2``)."""
    by_name: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_name[job.split].append(job)
    labels = {}
    for name, group in by_name.items():
        keys = sorted({k for j in group for k in j.split_config if k != "name"})
        varying = [k for k in keys if len({repr(j.split_config.get(k)) for j in group}) > 1]
        for job in group:
            settings = " ".join(f"{k}={job.split_config.get(k)}" for k in varying)
            labels[job.path] = f"{name} {settings}".strip()
    return labels


def relative_cost(job: Job) -> float:
    """The run's cost relative to retraining, ``rte_s / oracle_s`` (002 Fig. 1's colour; NaN
    when either is missing)."""
    rte, oracle = _finite(job, "rte_s"), _finite(job, "oracle_s")
    return rte / oracle if rte is not None and oracle else math.nan


def klom_runs(jobs: Sequence[Job], held_out: str = "test") -> list[Job]:
    """The finished runs that report KLoM on F and on ``held_out`` (every run, not only the best
    per cost: 002 App. M reports all runs)."""
    keys = (KLOM_KEY.format("forget"), KLOM_KEY.format(held_out))
    return [j for j in jobs if j.status == "ok" and all(_finite(j, k) is not None for k in keys)]


def plot_klom(jobs: Sequence[Job], path: Path, held_out: str = "test") -> Path:
    """``klom.png`` (002 Fig. 1; ``klom_retain.png``, Fig. 7, with ``held_out="retain"``): one
    panel per forget set, one point per run at (KLoM on F, KLoM on ``held_out``), marker by
    method and colour by cost relative to retraining (``rte_s / oracle_s``, log scale); the
    pretrained ensemble (○, ``klom_original/*``) and the oracle (★ at 0, 0: perfect
    unlearning) are marked. Lower-left is better."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    runs = klom_runs(jobs, held_out)
    labels = forget_set_labels(runs)
    panels = sorted(set(labels.values()))
    methods = sorted({j.method for j in runs})
    # "o" and "*" mark the pretrained models and the oracle
    markers = dict(zip(methods, itertools.cycle("sD^v<>pPhXd8H")))
    costs = [c for c in map(relative_cost, runs) if math.isfinite(c) and c > 0]
    norm = LogNorm(min(costs), max(costs)) if costs else None
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.2 * len(panels) + 1, 4),
        dpi=120,
        squeeze=False,
        layout="constrained",  # leaves room for the shared colour bar
    )
    scatter = None
    for ax, panel in zip(axes[0], panels):
        members = [j for j in runs if labels[j.path] == panel]
        for method in methods:
            points = [j for j in members if j.method == method]
            if not points:
                continue
            scatter = ax.scatter(
                [j.metrics[KLOM_KEY.format("forget")] for j in points],
                [j.metrics[KLOM_KEY.format(held_out)] for j in points],
                c=[relative_cost(j) for j in points],
                cmap="viridis",
                norm=norm,
                marker=markers[method],
                edgecolors="black",
                linewidths=0.4,
            )
        pretrained = [
            (
                _finite(j, KLOM_ORIGINAL_KEY.format("forget")),
                _finite(j, KLOM_ORIGINAL_KEY.format(held_out)),
            )
            for j in members
        ]
        pretrained = sorted({p for p in pretrained if None not in p})
        if pretrained:
            ax.scatter(
                *zip(*pretrained),
                marker="o",
                facecolors="none",
                edgecolors="red",
                s=80,
            )
        ax.scatter([0], [0], marker="*", color="gold", edgecolors="black", s=160)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("KLoM on F (95th pct.)")
        ax.set_ylabel(f"KLoM on {held_out} (95th pct.)")
    from matplotlib.lines import Line2D

    # grey legend markers: the colour of a point is its cost, not its method
    handles = [
        Line2D([], [], marker=markers[m], ls="", color="grey", mec="black", label=m)
        for m in methods
    ]
    handles += [
        Line2D([], [], marker="o", ls="", mfc="none", mec="red", ms=9, label="pretrained"),
        Line2D([], [], marker="*", ls="", color="gold", mec="black", ms=12, label="oracle"),
    ]
    axes[0][-1].legend(handles=handles, fontsize=7, frameon=False, loc="best")
    if scatter is not None and norm is not None:
        fig.colorbar(scatter, ax=axes[0].tolist(), label="cost / retraining (rte_s / oracle_s)")
    return save_figure(fig, path)


def write_plots(
    jobs: Sequence[Job], records: list[dict[str, Any]], metric: str, out: Path
) -> list[Path]:
    """The figures that apply to these jobs, written into ``out``: ``alpha_curve.png`` when a
    method was swept over α, ``bars.png`` when any cell was summarised, ``klom.png`` and
    ``klom_retain.png`` when runs report KLoM (``eval=klom``)."""
    written = []
    curves = alpha_curves(jobs, metric)
    if curves:
        written.append(plot_alpha_curve(curves, metric, out / "alpha_curve.png"))
    cells = [r for r in records if r["split"] != "avg"]
    if cells:
        written.append(plot_bars(cells, metric, out / "bars.png"))
    if klom_runs(jobs):
        written.append(plot_klom(jobs, out / "klom.png"))
    if klom_runs(jobs, "retain"):
        written.append(plot_klom(jobs, out / "klom_retain.png", held_out="retain"))
    return written
