"""The results contract (SPEC §0, docs/results.md): ``results.json`` and the end-of-run summary.

``results.json`` = ``{"status": "ok" | "diverged", "config": <resolved config>, "metrics":
{flat key: number}}``. Metric keys are stable; the same keys go to the loggers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unlearning.files import atomic_write_text, writing

MODELS = ("original", "oracle", "unlearned")
SETS = ("retain", "forget", "test")
#: the validation set: a held-out part of D_test that selection reads instead of the test set
VAL = "val"
#: every set a model's accuracy is reported on (``<model>/acc_<set>``), in table order
ACCURACY_SETS = ("retain", "forget", VAL, "test")
#: evaluation-suite metrics shown in the summary table when present: (key, label, decimals)
HEADLINE_EVAL = (
    ("mia_efficacy", "MIA-eff", 3),
    ("avg_gap", "AvgGap", 4),
    ("e_var_all_raw", "E_Var", 1),
    ("e_wp_all", "E_Wp", 3),
    ("basin_ratio/test", "basin(test)", 2),
    ("hessian_top/retain", "λmax(R)", 2),
    ("klom/forget", "KLoM(F)", 2),
)


def accuracy_key(model: str, set_name: str) -> str:
    """Stable metric key of a model's accuracy on a set, e.g. ``unlearned/acc_forget``."""
    return f"{model}/acc_{set_name}"


def write_results(
    path: Path,
    status: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, float],
    notes: Mapping[str, str] | None = None,
    diverged_at_step: int | None = None,
) -> None:
    """Atomically write ``results.json``; non-finite numbers become ``null`` (valid JSON).
    ``notes`` maps a metric key (or an evaluation name) to why it is ``null`` or doubtful;
    ``diverged_at_step`` is the unlearning step at which a ``diverged`` run was stopped. A failed
    write (full disk, read-only folder) raises :class:`~unlearning.errors.WriteError` naming
    ``hydra.run.dir`` and the file; no half-written ``results.json`` is left (issue 19)."""
    clean = {
        k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
        for k, v in metrics.items()
    }
    payload = {
        "status": status,
        "diverged_at_step": diverged_at_step,
        "config": config,
        "metrics": clean,
        "notes": dict(notes or {}),
    }
    with writing(path, "the job's results", "hydra.run.dir"):
        atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def _pct(value: float) -> str:
    return "   n/a" if value is None or not math.isfinite(value) else f"{100 * value:6.2f}"


def summary_table(metrics: Mapping[str, float], title: str) -> str:
    """A plain-text table: accuracies (%) of the three models on R, F, the validation set and
    D_test, then the scores (validation beside test: selection reads the former)."""
    sets = [s for s in ACCURACY_SETS if accuracy_key("unlearned", s) in metrics]
    lines = [title, f"{'model':<10} " + " ".join(f"{s:>7}" for s in sets)]
    for model in MODELS:
        cells = " ".join(f"{_pct(metrics.get(accuracy_key(model, s), math.nan)):>7}" for s in sets)
        lines.append(f"{model:<10} {cells}")
    val = f" (val {metrics['tow_val']:.4f})" if "tow_val" in metrics else ""
    lines.append(
        f"ToW {metrics['tow']:.4f}{val}  ToW(abs) {metrics['tow_abs']:.4f}  "
        f"UA {_pct(metrics['ua']).strip()}%  RA {_pct(metrics['ra']).strip()}%  "
        f"TA {_pct(metrics['ta']).strip()}%  RTE {metrics['rte_s']:.2f} s"
    )
    headline = "  ".join(
        f"{label} {metrics[key]:.{digits}f}"
        for key, label, digits in HEADLINE_EVAL
        if key in metrics and math.isfinite(metrics[key])
    )
    if headline:
        lines.append(headline)
    width = max(len(line) for line in lines)
    return "\n".join(["=" * width, *lines, "=" * width])
