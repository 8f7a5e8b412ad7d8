"""Aggregate finished jobs into tables and plots: ``python -m unlearning.report DIR [DIR ...]``.

Collects every ``results.json`` below the given directories (a sweep dir, several run dirs) and
writes, into ``--out`` (default: the first directory):

* ``report.md`` — a table shaped like 000 Table 1: one row per method and unlearning optimizer
  (with the pretraining optimizer A and α when they vary), one column per forget set
  (``split.name``) and their average; each cell the mean of ``--metric`` (ToW by default) over
  seeds ± the half-width of its 95% t-interval;
* ``report.csv`` — the same numbers in long form (one line per row × forget set, with n);
* ``alpha_curve.png`` — the metric against α per method/optimizer and forget set (000 Fig. 2),
  for those swept over more than one α;
* ``bars.png`` — bars with 95% intervals per forget set (000 Fig. 4).

Jobs whose ``status`` is not ``ok`` are counted and listed, never averaged in.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from unlearning.outputs.plots import pyplot, save_figure


@dataclass(frozen=True)
class Job:
    """What the report needs from one ``results.json``."""

    path: Path
    status: str
    method: str
    optim: str
    pretrain_optim: str
    alpha: float | None  # the method's retain weight; None for methods that do not mix
    split: str
    seed: int
    metrics: dict[str, float | None]


def _method_alpha(cfg: dict[str, Any]) -> float | None:
    """α as the method used it (its ``method.alpha``), or None for methods without one."""
    value = cfg.get("method", {}).get("alpha")
    return None if value is None else float(value)


def load_jobs(roots: Iterable[Path]) -> list[Job]:
    """Every ``results.json`` below ``roots`` (sorted, each file once)."""
    files = sorted({p.resolve() for root in roots for p in Path(root).rglob("results.json")})
    jobs = []
    for path in files:
        payload = json.loads(path.read_text())
        cfg = payload.get("config", {})
        jobs.append(
            Job(
                path=path,
                status=payload.get("status", "unknown"),
                method=cfg.get("method", {}).get("name", "?"),
                optim=cfg.get("optim", {}).get("name", "?"),
                pretrain_optim=cfg.get("pretrain", {}).get("optim", {}).get("name", "?"),
                alpha=_method_alpha(cfg),
                split=cfg.get("split", {}).get("name", "?"),
                seed=int(cfg.get("seed", 0)),
                metrics=payload.get("metrics", {}),
            )
        )
    return jobs


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (0 for a single value)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def _row_key(job: Job, vary_pretrain: bool, vary_alpha: bool) -> str:
    label = f"{job.method} + {job.optim}"
    if vary_pretrain:
        label += f" (A={job.pretrain_optim})"
    if vary_alpha and job.alpha is not None:
        label += f" α={job.alpha:g}"
    return label


def summarise(
    jobs: Sequence[Job], metric: str
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Long-form rows ``{row, split, n, mean, ci95}`` (plus an ``avg`` column per row: the mean
    over forget sets of the per-set means), the row labels and the split names, both sorted."""
    ok = [j for j in jobs if j.status == "ok" and j.metrics.get(metric) is not None]
    vary_pretrain = len({j.pretrain_optim for j in ok}) > 1
    vary_alpha = len({j.alpha for j in ok if j.alpha is not None}) > 1
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job in ok:
        cells[(_row_key(job, vary_pretrain, vary_alpha), job.split)].append(
            float(job.metrics[metric])
        )
    rows = sorted({r for r, _ in cells})
    splits = sorted({s for _, s in cells})
    records = []
    for row in rows:
        means = []
        for split in splits:
            values = cells.get((row, split), [])
            if values:
                mean, half = mean_ci95(values)
                means.append(mean)
                records.append(
                    {"row": row, "split": split, "n": len(values), "mean": mean, "ci95": half}
                )
        if len(splits) > 1 and len(means) == len(splits):
            records.append(
                {
                    "row": row,
                    "split": "avg",
                    "n": len(means),
                    "mean": float(np.mean(means)),
                    "ci95": math.nan,
                }
            )
    return records, rows, splits


def markdown_table(
    records: list[dict[str, Any]], rows: list[str], splits: list[str], metric: str
) -> str:
    """The 000-Table-1-shaped Markdown table (values in %, ToW-like metrics are fractions)."""
    columns = splits + (["avg"] if len(splits) > 1 else [])
    by_cell = {(r["row"], r["split"]): r for r in records}
    lines = [f"| {metric} (%) | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            rec = by_cell.get((row, column))
            if rec is None:
                cells.append("")
            elif math.isnan(rec["ci95"]) or rec["n"] == 1:
                cells.append(f"{100 * rec['mean']:.2f}")
            else:
                cells.append(f"{100 * rec['mean']:.2f} ± {100 * rec['ci95']:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(
    jobs: Sequence[Job], records: list[dict[str, Any]], metric: str, out: Path
) -> list[Path]:
    plt = pyplot()

    written = []
    ok = [j for j in jobs if j.status == "ok" and j.metrics.get(metric) is not None]
    curves: dict[tuple[str, str, str], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for j in ok:
        if j.alpha is not None:
            curves[(j.method, j.optim, j.split)][j.alpha].append(float(j.metrics[metric]))
    curves = {key: points for key, points in curves.items() if len(points) > 1}
    if curves:  # some method was swept over alpha (000 Fig. 2)
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
        written.append(save_figure(fig, out / "alpha_curve.png"))
    cells = [r for r in records if r["split"] != "avg"]
    if cells:
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
        written.append(save_figure(fig, out / "bars.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unlearning.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "dirs", nargs="+", type=Path, help="sweep or run directories to search for results.json"
    )
    parser.add_argument("--metric", default="tow", help="metric key of results.json (default: tow)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: the first DIR)"
    )
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    jobs = load_jobs(args.dirs)
    if not jobs:
        print(f"error: no results.json below {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    records, rows, splits = summarise(jobs, args.metric)
    table = markdown_table(records, rows, splits, args.metric)
    failed = [j for j in jobs if j.status != "ok"]
    note = f"\n\n{len(jobs)} jobs, {len(failed)} not ok" + "".join(
        f"\n- {j.status}: {j.path}" for j in failed
    )
    (out / "report.md").write_text(table + note + "\n")
    with (out / "report.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["row", "split", "n", "mean", "ci95"])
        writer.writeheader()
        writer.writerows(records)
    plots = _plots(jobs, records, args.metric, out)
    print(table + note)
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}" + "".join(f", {p}" for p in plots))
    return 0
