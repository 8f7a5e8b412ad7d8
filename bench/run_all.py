"""Every benchmark of issue #10 in one run: one table of ratios next to their aims, written to
``docs/benchmarks.md``.

Usage::

    python -m bench                 # full (make bench): < 10 min on 2 idle cores
    python -m bench --quick         # shorter runs, noisier ratios (make bench QUICK=1)
    python -m bench --smoke --out /tmp/b.md   # tiny sizes: checks that everything runs
    python -m bench --only 2,4      # some items

Items: 1 SAM/SGD step, 2 framework epoch / hand loop, 3 ensemble members: engine / plain loop,
4 in-memory data path / per-sample DataLoader, 5 exact OT / Sinkhorn, 6 cached sweep /
independent jobs, 7 README run command cold and warm.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import job
from bench.common import ROOT, Row

ITEMS = ("1", "2", "3", "4", "5", "6", "7")


def benches() -> dict[str, Callable[[str, Path], list[Row]]]:
    """Item → ``rows(size, work_dir)`` (imported lazily: each pulls in torch, Lightning, POT)."""
    from bench import (
        bench_data,
        bench_ensemble,
        bench_ot,
        bench_sam,
        bench_sweep,
        bench_unlearn,
    )

    return {
        "1": lambda size, work: bench_sam.rows(size),
        "2": bench_unlearn.rows,
        "3": lambda size, work: bench_ensemble.rows(size, work / "ensemble"),
        "4": bench_data.rows,
        "5": bench_ot.rows,
        "6": bench_sweep.sweep_rows,
        "7": bench_sweep.readme_rows,
    }


def format_table(rows: list[Row]) -> str:
    """A Markdown table: item, comparison, ratio, aim, verdict, note."""
    lines = [
        "| item | ratio of | measured | aim | verdict | note |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for r in rows:
        value = "—" if r.ratio is None else f"{r.ratio:.3g}"
        cells = [r.item, r.name, value, str(r.aim), r.verdict, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def script_main(rows: Callable[[str], list[Row]], doc: str | None, argv: list[str] | None) -> int:
    """The command line of one benchmark script: prints its rows (``--quick``: short sizes)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print_table(rows("quick" if args.quick else "full"))
    return 0


def print_table(rows: list[Row]) -> None:
    print("\n" + format_table(rows), flush=True)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU cores ({cpu}), {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def write_report(
    path: Path, rows: list[Row], size: str, command: str, took: float, loads: tuple[float, float]
) -> None:
    """``docs/benchmarks.md``: the explanations below, the machine, the command, the table.
    ``loads``: the 1-minute load average at the start and at the end of the run."""
    from bench.report_text import HEADER, explanations

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            HEADER,
            "## Last run",
            "",
            f"- command: `{command}` ({size} sizes, {took / 60:.1f} min)",
            f"- date: {date}",
            f"- machine: {machine()}",
            f"- load average (1 min) at the start {loads[0]:.1f}, at the end {loads[1]:.1f}"
            + (
                f" — above the {os.cpu_count()} cores: other processes competed for the CPU "
                "and the ratios are noisy; rerun `make bench` on an idle machine"
                if max(loads) > (os.cpu_count() or 1)
                else ""
            ),
            "",
            format_table(rows),
            "",
            explanations(rows),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="shorter runs (make bench QUICK=1)")
    group.add_argument("--smoke", action="store_true", help="tiny sizes: checks that all runs")
    parser.add_argument("--only", default=",".join(ITEMS), help="comma list of items, e.g. 2,4")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown report (default docs/benchmarks.md; with --smoke: none)",
    )
    args = parser.parse_args(argv)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = [i.strip() for i in args.only.split(",") if i.strip()]
    unknown = sorted(set(only) - set(ITEMS))
    if unknown:
        parser.error(f"--only: unknown item(s) {unknown}; choose from {', '.join(ITEMS)}")
    out = args.out or (None if args.smoke else ROOT / "docs" / "benchmarks.md")
    import lightning.pytorch  # noqa: F401  (sets its logger's level on import: import first)

    # quiet logs while benchmarking; restored after, as main() may run inside a test session
    quiet = {"lightning.pytorch": logging.ERROR, "unlearning": logging.WARNING}
    previous = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        warnings.filterwarnings("ignore")
        load_start = os.getloadavg()[0]
        print(f"bench ({size}): {machine()}; load average {load_start:.1f}", flush=True)

        start = time.perf_counter()
        rows: list[Row] = []
        table = benches()
        with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
            job.SHARED_CACHE = Path(tmp) / "cache"  # f_A pretrained once for items 2-5
            for item in only:
                t0 = time.perf_counter()
                work = Path(tmp) / f"item_{item}"
                work.mkdir()
                try:
                    new = table[item](size, work)
                except Exception as exc:  # a broken benchmark is a row, not a lost table
                    traceback.print_exc()
                    new = [Row(item, "(failed)", None, note=f"{type(exc).__name__}: {exc}")]
                rows.extend(new)
                print(f"[{item}] {time.perf_counter() - t0:.0f} s", flush=True)
                print_table(new)
        job.SHARED_CACHE = None
        took = time.perf_counter() - start
        print(f"\nall items ({size}), {took / 60:.1f} min:", flush=True)
        print_table(rows)
        if out is not None:
            flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[size]
            loads = (load_start, os.getloadavg()[0])
            write_report(Path(out), rows, size, f"python -m bench{flag}", took, loads)
            print(f"written: {out}", flush=True)
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
