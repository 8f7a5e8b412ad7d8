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
* ``bars.png`` — bars with 95% intervals per forget set (000 Fig. 4);
* ``klom.png``, ``klom_retain.png`` — 002 Fig. 1 and 7 for runs with KLoM.

When the jobs also report the metric's validation version (``tow`` → ``tow_val``), its table
follows the test table, labelled as what selection reads (issue 16). A ``selection.json``
below a directory (written by ``python -m unlearning.tuning``) adds, per row, the configuration
the equal-budget search selected and the metric that selected it.

Jobs whose ``status`` is not ``ok`` are counted and listed, never averaged in. The numbers come
from :mod:`unlearning.report.tables`, the figures from :mod:`unlearning.report.plots`; this
module reads the command line and writes the files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearning.report.plots import write_plots
from unlearning.report.tables import (
    Job,
    load_jobs,
    load_selections,
    markdown_table,
    selection_note,
    summarise,
)


def _parser() -> argparse.ArgumentParser:
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
    return parser


def failed_note(jobs: Sequence[Job]) -> str:
    """The lines under the table: how many jobs, how many not ``ok``, and each of those."""
    failed = [j for j in jobs if j.status != "ok"]
    return f"\n\n{len(jobs)} jobs, {len(failed)} not ok" + "".join(
        f"\n- {j.status}: {j.path}" for j in failed
    )


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """``report.csv``: the summarised records in long form."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["row", "split", "n", "mean", "ci95"])
        writer.writeheader()
        writer.writerows(records)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report; exit status 2 (a one-line error) without directories or results."""
    args = _parser().parse_args(argv)
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
    val_metric = f"{args.metric}_val"
    if any(j.metrics.get(val_metric) is not None for j in jobs):
        val_table = markdown_table(*summarise(jobs, val_metric), val_metric)
        table = f"test:\n\n{table}\n\nvalidation (what selection reads):\n\n{val_table}"
    note = selection_note(load_selections(args.dirs), jobs) + failed_note(jobs)
    (out / "report.md").write_text(table + note + "\n")
    write_csv(records, out / "report.csv")
    plots = write_plots(jobs, records, args.metric, out)
    print(table + note)
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}" + "".join(f", {p}" for p in plots))
    return 0
