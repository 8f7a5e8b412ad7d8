"""Benchmark items 6 and 7: what the stage cache saves a sweep, and the README's run command.

Usage::

    python bench/bench_sweep.py [--quick]

Item 6: the cold sweep ``python train.py -m method=neggrad,ga,finetune,l1sparse optim=sgd,sam``
with one empty stage cache (pretraining f_A, the split and the oracle computed once, reused by
the 8 jobs) against the same 8 jobs run as independent ``python train.py method=… optim=…``
processes, each with its own empty cache (each pretrains and retrains the oracle). Ratio: sweep
wall time / independent wall time; aim ≤ 0.4. ``--quick`` shortens pretraining to 3 epochs on
both sides (the saving shrinks with it; the note says so).

Item 7: ``python train.py`` (what ``make demo`` runs, README quick start) end to end, cold (empty
cache) and warm (the same cache again), with the time to import the framework for reference.
Reported, not judged. Every run writes its cache and logs into a temporary directory.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPORT, ROOT, Aim, Row

METHODS = ("neggrad", "ga", "finetune", "l1sparse")
OPTIMS = ("sgd", "sam")
AIM = Aim("<=", 0.4)
NOT_IN_SMOKE = "not run with --smoke (each job is a separate process)"


def child_cpu_seconds() -> float:
    """User + system CPU seconds of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_py(args: list[str], cache: Path, logs: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``python train.py args`` with its cache and logs in the given
    dirs (CPU time: a cross-check that background load on a shared machine barely changes)."""
    env = {
        **os.environ,
        "UNLEARNING_CACHE_DIR": str(cache),
        "UNLEARNING_LOG_DIR": str(logs),
        "HYDRA_FULL_ERROR": "1",
    }
    t0, cpu0 = time.perf_counter(), child_cpu_seconds()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds, cpu = time.perf_counter() - t0, child_cpu_seconds() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return seconds, cpu


def sweep_rows(size: str = "full", work: Path | None = None) -> list[Row]:
    """Item 6."""
    name = "cached sweep / independent jobs (4 methods × 2 optimizers, cold)"
    if size == "smoke":
        return [Row("6", name, None, AIM, NOT_IN_SMOKE)]
    work = Path(work or tempfile.mkdtemp(prefix="bench_sweep_"))
    extra = ["trainer.enable_progress_bar=false"]
    if size == "quick":
        extra.append("pretrain.epochs=3")
    sweep_s, sweep_cpu = train_py(
        ["-m", f"method={','.join(METHODS)}", f"optim={','.join(OPTIMS)}", *extra],
        work / "sweep_cache",
        work / "logs",
    )
    jobs = list(itertools.product(METHODS, OPTIMS))
    runs = [
        train_py([f"method={m}", f"optim={o}", *extra], work / f"cache_{k}", work / "logs")
        for k, (m, o) in enumerate(jobs)
    ]
    independent_s, independent_cpu = (sum(r[i] for r in runs) for i in (0, 1))
    note = (
        f"sweep {sweep_s:.0f} s, {len(jobs)} independent jobs {independent_s:.0f} s "
        f"({independent_s / len(jobs):.1f} s each), one measurement each; CPU-time ratio "
        f"{sweep_cpu / independent_cpu:.2f} (insensitive to background load)"
    )
    if size == "quick":
        note += "; pretraining shortened to 3 epochs (--quick), which shrinks the saving"
    return [Row("6", name, sweep_s / independent_s, AIM, note, {"sweep_s": sweep_s})]


def readme_rows(size: str = "full", work: Path | None = None) -> list[Row]:
    """Item 7: ``python train.py`` cold and warm (reported)."""
    name = "README run command `python train.py`: warm / cold cache"
    if size == "smoke":
        return [Row("7", name, None, REPORT, NOT_IN_SMOKE)]
    work = Path(work or tempfile.mkdtemp(prefix="bench_readme_"))
    cold, _ = train_py([], work / "cache", work / "logs")
    warm, _ = train_py([], work / "cache", work / "logs")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import lightning, unlearning.pipeline.run"], cwd=ROOT, check=True
    )
    imports = time.perf_counter() - t0
    note = (
        f"cold {cold:.1f} s, warm {warm:.1f} s wall (of which ~{imports:.1f} s start-up: Python "
        "and the imports); eval=default included"
    )
    return [Row("7", name, warm / cold, REPORT, note, {"cold_s": cold, "warm_s": warm})]


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import print_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        print_table(sweep_rows(size, Path(tmp) / "6") + readme_rows(size, Path(tmp) / "7"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
