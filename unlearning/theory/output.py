"""What every theory lab leaves behind: a CSV, its PNGs, ``results.json``, the loggers' copy of
the headline metrics and a short printed summary (the results contract of docs/results.md)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unlearning.outputs.publish import publish
from unlearning.outputs.results import write_results


def output_dir(cfg: DictConfig) -> Path:
    """The job's output directory (created)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) as a CSV with a header line."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def finish(
    cfg: DictConfig, metrics: dict[str, float], images: list[Path], summary: str
) -> dict[str, Any]:
    """Publish ``metrics`` to the configured loggers, write ``results.json``, print ``summary``;
    return the ``{"status", "metrics"}`` payload that ``train.py`` expects."""
    out = output_dir(cfg)
    metrics = {k: float(v) for k, v in metrics.items()}
    loggers = [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec]
    publish(loggers, metrics, "ok", images)
    write_results(out / "results.json", "ok", OmegaConf.to_container(cfg, resolve=True), metrics)
    width = min(100, max(len(line) for line in summary.splitlines()))
    print("\n".join(["=" * width, summary, f"outputs: {out}", "=" * width]), flush=True)
    return {"status": "ok", "metrics": metrics}


def fmt(value: float, digits: int = 3) -> str:
    """A number for the summary (``n/a`` when not finite)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
