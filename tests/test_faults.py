"""Kill safety (issue #8): a job killed at any stage leaves the cache sound, and rerunning the same
command resumes the interrupted stage and ends with the metrics of an uninterrupted run.

Faults are injected with the ``UNLEARNING_FAULT=<stage>:<epoch>`` hook
(:mod:`unlearning.pipeline.faults`):
the process SIGKILLs (or SIGTERMs) itself at the start of that epoch, right after the previous
epoch's checkpoint was written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_config, run_cli
from unlearning.pipeline.cache import MANIFEST_FILE
from unlearning.pipeline.run import run

# tiny and fast; the same overrides in-process (reference) and on the command line (faulty runs)
TINY = [
    "pretrain.epochs=2",
    "method.epochs=3",
    "trainer.limit_train_batches=4",
    "eval=none",
    "logger=none",
]


def _metrics(results: dict) -> dict:
    """Metrics without wall times (``rte_s``, ``*_s``), which differ from run to run."""
    return {k: v for k, v in results["metrics"].items() if not k.endswith("_s")}


def _reference(tmp_path: Path, cache: str = "reference_cache", overrides: list[str] = TINY) -> dict:
    """An uninterrupted run, in-process, with the cache ``tmp_path / cache``."""
    return run(make_config(overrides, tmp_path / "reference", tmp_path / cache))


def _cli(tmp_path: Path, fault: str | None, overrides: list[str] = TINY):
    """``train.py`` with the faulty job's cache and output dir (the same on every rerun)."""
    env = {"UNLEARNING_FAULT": fault} if fault else {"UNLEARNING_FAULT": ""}
    args = [
        *overrides,
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    return run_cli(args, tmp_path, env_extra=env)


def _entries_sound(cache: Path) -> None:
    """Every finished entry has a manifest; only ``.partial`` dirs may be unfinished."""
    for stage in cache.iterdir():
        for entry in stage.iterdir():
            if entry.is_dir() and not entry.name.endswith(".partial"):
                assert (entry / MANIFEST_FILE).is_file(), f"half-written entry {entry}"


def test_sigkill_during_unlearning_resumes_to_the_uninterrupted_metrics(tmp_path, caplog):
    # the reference shares the cache: the faulty job only recomputes its unlearning stage
    reference = _reference(tmp_path, cache="cache")
    killed = _cli(tmp_path, "unlearn:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "[fault]" in killed.stdout
    assert not (tmp_path / "run" / "results.json").exists()
    _entries_sound(tmp_path / "cache")

    # the rerun, in-process to save a start-up (the slow tests below rerun on the command line)
    with caplog.at_level(logging.INFO):
        run(make_config(TINY, tmp_path / "run", tmp_path / "cache"))
    log = caplog.text
    for stage in ("pretrain", "split", "oracle"):
        assert f"[{stage}] cache hit" in log and f"[{stage}] computing" not in log, stage
    assert "[unlearn] computing (resuming)" in log
    assert "[unlearn] resuming from" in log and "(2 of 3 epochs done)" in log
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["status"] == "ok"
    assert _metrics(resumed) == _metrics(reference)


@pytest.mark.slow
def test_sigkill_at_every_stage_then_rerun_matches_an_uninterrupted_run(tmp_path):
    """Kill during pretraining, oracle retraining, unlearning and before evaluation, one after
    the other in the same job; each rerun reuses what finished and resumes what did not."""
    reference = _reference(tmp_path)
    expectations = {
        "pretrain:1": ([], []),
        "oracle:1": (["[pretrain] computing (resuming)"], []),
        "unlearn:2": (["[oracle] computing (resuming)"], ["[pretrain] cache hit"]),
        "evaluate:0": (["[unlearn] computing (resuming)"], ["[oracle] cache hit"]),
    }
    for fault, (resumed, hits) in expectations.items():
        result = _cli(tmp_path, fault)
        log = result.stdout + result.stderr
        assert result.returncode == -signal.SIGKILL, (fault, log[-3000:])
        assert all(line in log for line in resumed + hits), (fault, log[-3000:])
        _entries_sound(tmp_path / "cache")
    final = _cli(tmp_path, None)
    log = final.stdout + final.stderr
    assert final.returncode == 0, log[-3000:]
    for stage in ("pretrain", "split", "oracle", "unlearn"):
        assert f"[{stage}] cache hit" in log and f"[{stage}] computing" not in log, stage
    assert _metrics(json.loads((tmp_path / "run" / "results.json").read_text())) == _metrics(
        reference
    )


@pytest.mark.slow
def test_sigterm_stops_with_143_and_the_rerun_resumes(tmp_path):
    """SIGTERM (SLURM's preemption notice): Lightning stops after the current batch, train.py
    exits 143 with a hint, the epoch checkpoint survives and the rerun resumes from it."""
    reference = _reference(tmp_path)
    stopped = _cli(tmp_path, "unlearn:2:TERM")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "interrupted by SIGTERM" in stopped.stderr and "Traceback" not in stopped.stderr
    rerun = _cli(tmp_path, None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(2 of 3 epochs done)" in rerun.stdout + rerun.stderr
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _metrics(resumed) == _metrics(reference)


@pytest.mark.slow
def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (from /proc; none where there is no /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_memorization_estimate_killed_mid_way_resumes_member_by_member(tmp_path):
    """Kill the scores stage (Feldman–Zhang estimate) once some members are on disk: the rerun
    loads them instead of training them again and gives the same scores."""
    overrides = [
        "split=mem_high",
        "memorization.members=12",
        "pretrain.epochs=1",
        "method.epochs=1",
        "eval=none",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    job = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    members = tmp_path / "cache" / "memorization"
    deadline = time.monotonic() + 300
    while not list(members.glob("*.partial/members/*.npz")) and time.monotonic() < deadline:
        if job.poll() is not None:
            pytest.fail("the estimate finished before it could be killed")
        time.sleep(0.05)
    workers = _children(job.pid)  # memorization.workers=2: the spawned member trainers
    job.kill()
    job.wait()
    done = len(list(members.glob("*.partial/members/*.npz")))
    assert 1 <= done < 12
    # the killed estimate's worker processes end with it instead of waiting forever
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
    rerun = run_cli(overrides, tmp_path)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "[memorization] computing (resuming)" in log
    reference = _reference(tmp_path, overrides=overrides[:-3])
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert _metrics(resumed) == _metrics(reference)


# --------------------------------------------------------------------------------------------
# Divergence: a huge learning rate on gradient ascent
# --------------------------------------------------------------------------------------------

DIVERGING = ["method=ga", "method.lr=1e6", "pretrain.epochs=1", "method.epochs=2"]
DIVERGING += ["trainer.limit_train_batches=4", "eval=none", "logger=none"]


def test_diverging_ga_reports_diverged_with_the_step_and_finite_metrics(tmp_path):
    result = run(make_config(DIVERGING, tmp_path / "run", tmp_path / "cache"))
    assert result["status"] == "diverged"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "diverged"
    assert isinstance(saved["diverged_at_step"], int) and saved["diverged_at_step"] >= 1
    # metrics are those of the last finite state: every one is a number
    assert all(isinstance(v, float) for v in saved["metrics"].values()), saved["metrics"]


@pytest.mark.slow
def test_a_sweep_with_one_diverging_job_exits_zero_with_both_results(tmp_path):
    overrides = [o for o in DIVERGING if not o.startswith("method.lr")]
    result = run_cli(
        [
            "-m",
            "method.lr=0.01,1e6",
            *overrides,
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    payloads = [json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("results.json")]
    by_lr = {p["config"]["method"]["lr"]: p for p in payloads}
    assert set(by_lr) == {0.01, 1e6}
    assert by_lr[0.01]["status"] == "ok" and by_lr[0.01]["diverged_at_step"] is None
    assert by_lr[1e6]["status"] == "diverged" and by_lr[1e6]["diverged_at_step"] >= 1
