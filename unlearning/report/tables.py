"""The report's numbers: finished jobs read from their ``results.json`` and summarised per row
(method + optimizer) and forget set as mean ± 95% t-interval over seeds (000 Table 1).

Used by :mod:`unlearning.report.cli` (``python -m unlearning.report``) and
:mod:`unlearning.report.plots`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


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
    split_config: dict[str, Any] = field(default_factory=dict)  # the job's whole ``split`` node


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
                split_config=cfg.get("split", {}),
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


def usable(jobs: Sequence[Job], metric: str) -> list[Job]:
    """The jobs that count: status ``ok`` and a value for ``metric`` (the others are listed
    under the table, never averaged in)."""
    return [j for j in jobs if j.status == "ok" and j.metrics.get(metric) is not None]


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
    ok = usable(jobs, metric)
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


#: the file ``python -m unlearning.tuning`` writes beside the reruns of the selected configurations
SELECTION_FILE = "selection.json"


def load_selections(roots: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``{method: record}`` from every :data:`SELECTION_FILE` below ``roots``; a record holds
    the selected ``params``, the ``objective`` that selected them, its ``best_value`` and the
    number of ``trials``."""
    selections: dict[str, dict[str, Any]] = {}
    for root in roots:
        for path in sorted(Path(root).rglob(SELECTION_FILE)):
            selections.update(json.loads(path.read_text()))
    return selections


def selection_note(selections: dict[str, dict[str, Any]], jobs: Sequence[Job]) -> str:
    """The lines that say which configuration each method's rows used and what selected it."""
    if not selections:
        return ""
    lines = ["\n\nselected configurations (equal budget, chosen on the validation objective):"]
    for method in sorted({j.method for j in jobs} & set(selections)):
        record = selections[method]
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(record["params"].items())
        )
        lines.append(
            f"- {method}: {params} — best {record['objective']} {record['best_value']:.4f} "
            f"of {record['trials']} trials"
        )
    return "\n".join(lines)
