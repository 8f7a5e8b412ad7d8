"""``hydra/launcher=slurm`` against a real Slurm cluster (issue 17): a sweep as an array job, one
job over two nodes with DDP, a requeue while training, a time-limit hit, a failing job.

Marked ``slurm`` (excluded from the default run): ``make test-slurm`` starts a two-node cluster
on this machine with ``.ci/slurm-up``, runs ``pytest -m slurm`` and stops it with
``.ci/slurm-down`` (docs/cluster.md, "Testing the Slurm path locally"). Without a reachable
cluster every test skips with one line saying why. Real Slurm, real submitit: the jobs are
``sbatch``-ed by the submitting ``train.py -m`` process and run under ``slurmd``.

A requeued job waits for ``scontrol update StartTime=now`` here: Slurm makes a requeued batch job
ineligible for 120 s (measured: eligible 121 s after ``scontrol requeue``), which the tests skip.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, cli_dirs, make_config, run_cli
from tests.test_ddp import ACC_TOLERANCE
from unlearning.pipeline.run import run

pytestmark = pytest.mark.slurm
JOB_ID = re.compile(r"\d+(_\d+)?")

#: the cluster of .ci/slurm-up when $SLURM_CONF is not set
DEFAULT_CONF = (
    Path(os.environ.get("UNLEARNING_SLURM_DIR", "/tmp/unlearning-slurm")) / "etc/slurm.conf"
)
#: one CPU per task: the local cluster has two nodes of two CPUs
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1"]
#: tiny digits jobs (as tests/test_launchers.py): the launcher, not the model, is under test
SHRUNK = ["pretrain.epochs=1", "method.epochs=1", "eval=none", "logger=none"]
#: a DDP job long enough to be requeued while it trains the oracle (~0.8 s an epoch over gloo)
DDP_JOB = ["pretrain.epochs=40", "method.epochs=1", "eval=none", "logger=none"]
TWO_NODES = ["trainer=ddp_multinode_cpu", "trainer.num_nodes=2"]
#: a one-process job whose unlearning stage (fine-tuning on R) is long enough to be requeued
UNLEARN_JOB = [
    "pretrain.epochs=2",
    "method=finetune",
    "method.epochs=60",
    "eval=none",
    "logger=none",
]


def _conf() -> Path | None:
    conf = os.environ.get("SLURM_CONF")
    if conf:
        return Path(conf)
    return DEFAULT_CONF if DEFAULT_CONF.is_file() else None


def _env() -> dict[str, str]:
    """What the submitting process needs: the cluster's config, and this checkout first on the
    jobs' ``sys.path`` (the jobs unpickle the task function and import ``unlearning``)."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    conf = _conf()
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    return env


def _slurm(*command: str, check: bool = True, timeout: float = 60) -> str:
    """Run a Slurm client command (``scontrol``, ``squeue``, ``sacct``) on the cluster."""
    result = subprocess.run(
        command, env={**os.environ, **_env()}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout


@functools.cache
def cluster_problem() -> str | None:
    """Why no Slurm cluster can be used here (one line), or ``None``."""
    missing = [p for p in ("sbatch", "sinfo", "sacct", "scontrol") if shutil.which(p) is None]
    if missing:
        tools = ", ".join(missing)
        return f"no Slurm client ({tools}) on PATH: `make test-slurm` (as root) installs one"
    if _conf() is None and not Path("/etc/slurm/slurm.conf").is_file():
        return "no Slurm cluster configured ($SLURM_CONF unset): `make test-slurm` starts one"
    conf = _conf()
    if conf is not None and not conf.is_file():  # sinfo would retry reading it for 60 s
        return f"SLURM_CONF={conf} does not exist: `make test-slurm` starts a cluster"
    try:
        nodes = _slurm("sinfo", "-h", "-N", "-o", "%N %T", timeout=20).split("\n")
    except (AssertionError, subprocess.TimeoutExpired) as error:
        return (
            f"no Slurm cluster reachable ({str(error).splitlines()[-1][:120]}): `make test-slurm`"
        )
    usable = {
        line.split()[0] for line in nodes if line and "down" not in line and "drain" not in line
    }
    if len(usable) < 2:
        return f"the Slurm cluster has {len(usable)} usable node(s), the tests need 2"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def cancel_leftovers(tmp_path: Path) -> Iterator[None]:
    """A failing test leaves no job of its own on the cluster."""
    yield
    for folder in tmp_path.rglob(".submitit/*"):
        if JOB_ID.fullmatch(folder.name):
            _slurm("scancel", folder.name.split("_")[0], check=False)


# ------------------------------------------------------------------- helpers


def _sweep(args: list[str], tmp_path: Path, timeout: int = 600) -> tuple[int, str]:
    result = run_cli(["-m", *SLURM, *args, *cli_dirs(tmp_path)], tmp_path, _env(), timeout)
    return result.returncode, result.stdout + result.stderr


def _start_sweep(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """``train.py -m`` started in the background (the test acts on its job meanwhile)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **_env()}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *SLURM, *args, *cli_dirs(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(condition, what: str, timeout: float = 300, every: float = 0.05):
    """Poll ``condition()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _sweep_dir(tmp_path: Path) -> Path:
    (sweep_dir,) = (p for p in (tmp_path / "logs" / "multirun").iterdir() if p.is_dir())
    return sweep_dir


def _job_ids(sweep_dir: Path) -> list[str]:
    """Slurm ids of the sweep's jobs (``<array>_<task>``, or ``<job>`` for a single job): the
    names of submitit's job folders (an array also has one named by the array's id)."""
    ids = [p.name for p in (sweep_dir / ".submitit").glob("*") if JOB_ID.fullmatch(p.name)]
    tasks = [i for i in ids if "_" in i]
    return sorted(tasks or ids)


def _first_job(tmp_path: Path) -> str:
    """The id of the only job of the sweep running in ``tmp_path``, once it is submitted."""

    def submitted() -> str | None:
        for sweep_dir in tmp_path.glob("logs/multirun/*"):
            if (sweep_dir / ".submitit").is_dir() and _job_ids(sweep_dir):
                return _job_ids(sweep_dir)[0]
        return None

    return _wait(submitted, "the job's submission")


def _payloads(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def _rank0_log(sweep_dir: Path, job_id: str) -> str:
    """The job's rank-0 stdout and stderr across all its attempts (submitit appends)."""
    folder = sweep_dir / ".submitit" / job_id
    return "".join(p.read_text() for p in sorted(folder.glob(f"{job_id}_0_log.*")))


def _metrics(payload: dict) -> dict[str, float]:
    """Metrics without wall times (``*_s``), which differ from run to run."""
    return {k: v for k, v in payload["metrics"].items() if not k.endswith("_s")}


def _sacct(job_id: str) -> dict[str, str]:
    """``{step id: "<id>|<state>|<nodes>"}`` of one job as Slurm's accounting has it."""
    out = _slurm("sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,NodeList")
    return {line.split("|")[0]: line for line in out.splitlines() if line}


class Releaser(threading.Thread):
    """Lets a requeued job start at once instead of after Slurm's 120 s: while running, sets
    ``StartTime=now`` on the job whenever it waits for its begin time, and releases it when it
    is held — as a job requeued while suspended is (``JobHeldAdmin``), or one whose relaunch
    found the previous attempt's files still on the node (``launch failed requeued held``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(daemon=True)
        self.job_id, self.stop, self.releases = job_id, threading.Event(), 0

    def run(self) -> None:
        previous = ""
        while not self.stop.wait(0.5):
            state = _slurm("squeue", "-h", "-j", self.job_id, "-o", "%T %r", check=False).strip()
            waiting = state.startswith("PENDING") and (
                "BeginTime" in state or "held" in state.lower()
            )
            # the same state twice (0.5 s apart): the last attempt's clean-up on the nodes is over
            if waiting and state == previous:
                if "held" in state.lower():
                    _slurm("scontrol", "release", self.job_id, check=False)
                _slurm("scontrol", "update", f"jobid={self.job_id}", "StartTime=now", check=False)
                self.releases += 1
                state = ""
            previous = state


def _latest_epoch(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


def _requeue_while_training(job_id: str, partial_glob: str, root: Path, epochs: int) -> int:
    """Once the stage's epoch checkpoint exists (``root/partial_glob``), suspend the job (its
    processes stop where they are), check the stage is mid-way, and ``scontrol requeue`` it.
    Returns the number of epochs the checkpoint holds."""
    while True:
        checkpoint = _wait(lambda: next(iter(root.glob(partial_glob)), None), partial_glob)
        _slurm("scontrol", "suspend", job_id)
        if checkpoint.is_file():
            break
        _slurm("scontrol", "resume", job_id)  # stopped while the file was being replaced
    done = _latest_epoch(checkpoint) + 1
    assert done < epochs, f"the stage finished ({done} of {epochs} epochs) before the requeue"
    _slurm("scontrol", "requeue", job_id)
    return done


# ------------------------------------------------------------------- a sweep as an array job


def test_sweep_runs_as_an_array_job_and_a_rerun_skips_the_finished_jobs(tmp_path):
    code, log = _sweep(["method=ga,neggrad", *SHRUNK], tmp_path)
    assert code == 0, log[-4000:]
    assert "Submitit 'slurm' sweep output dir" in log
    sweep_dir = _sweep_dir(tmp_path)
    jobs = _job_ids(sweep_dir)
    # one array job, one array task per sweep job, each ran and finished under Slurm
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs
    for job in jobs:
        assert "COMPLETED" in _sacct(job)[job], _sacct(job)
    payloads = _payloads(sweep_dir)
    assert {p["config"]["method"]["name"] for p in payloads.values()} == {"ga", "neggrad"}
    assert all(p["status"] == "ok" for p in payloads.values())
    stamps = {k: (sweep_dir / k / "results.json").stat().st_mtime_ns for k in payloads}

    # the same sweep into its directory: both array tasks find their results.json and skip
    code, log = _sweep(["method=ga,neggrad", *SHRUNK, f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert code == 0, log[-4000:]
    rerun_logs = "".join(_rank0_log(sweep_dir, j) for j in _job_ids(sweep_dir) if j not in jobs)
    assert rerun_logs.count("already says ok") == 2, rerun_logs[-3000:]
    assert "computing" not in rerun_logs
    assert {k: (sweep_dir / k / "results.json").stat().st_mtime_ns for k in payloads} == stamps


def test_a_failing_job_shows_as_failed_without_waiting_for_its_time_limit(tmp_path):
    """A user error (alpha=-1) in one array task: with accounting, submitit sees the task FAILED
    as soon as it ends; the sweep stops with the task's id, its state and its one-line error,
    long before the 60-minute limit (the command's own timeout is 5 minutes)."""
    args = ["alpha=0.9,-1", *SHRUNK, "hydra.launcher.timeout_min=60"]
    code, log = _sweep(args, tmp_path, timeout=300)
    assert code != 0
    sweep_dir = _sweep_dir(tmp_path)
    failed = _job_ids(sweep_dir)[1]
    assert f"Job {failed}" in log and "(state: FAILED)" in log, log[-4000:]
    assert "error: alpha=-1: must be a number in [0, 1]" in log
    assert "FAILED" in _sacct(failed)[failed]
    # the other job finished normally
    assert [p["status"] for p in _payloads(sweep_dir).values()] == ["ok"]


# ------------------------------------------------------------------- one job over two nodes


@pytest.fixture(scope="module")
def two_node_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """``trainer=ddp_multinode_cpu trainer.num_nodes=2``: one Slurm job, one task per node."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    code, log = _sweep([*TWO_NODES, *DDP_JOB], tmp)
    assert code == 0, log[-4000:]
    sweep_dir = _sweep_dir(tmp)
    (job,) = _job_ids(sweep_dir)
    (payload,) = _payloads(sweep_dir).values()
    return sweep_dir, job, payload


def test_one_job_over_two_nodes_matches_ddp_on_one_node(two_node_job, tmp_path):
    sweep_dir, job, payload = two_node_job
    assert payload["status"] == "ok"
    assert _sacct(job)[job].endswith("|node[1-2]"), _sacct(job)  # the allocation: both nodes
    rank1 = (sweep_dir / ".submitit" / job / f"{job}_1_log.out").read_text()
    assert "node=1(2), global_rank=1(2)" in rank1 and "[ddp] rank 1 of 2" in rank1
    # the same job with two gloo processes on one node (trainer=ddp_cpu, no Slurm)
    one_node = run_cli(["trainer=ddp_cpu", *DDP_JOB, *cli_dirs(tmp_path)], tmp_path)
    assert one_node.returncode == 0, (one_node.stdout + one_node.stderr)[-3000:]
    (local,) = tmp_path.glob("logs/runs/*/results.json")
    single = json.loads(local.read_text())["metrics"]
    keys = [k for k in single if "/acc_" in k]
    gaps = {k: abs(payload["metrics"][k] - single[k]) for k in keys}
    assert len(keys) == 12 and max(gaps.values()) <= ACC_TOLERANCE, gaps


# ------------------------------------------------------------------- preemption and time limits


def _finish(sweep: subprocess.Popen, releaser: Releaser, timeout: int = 480) -> str:
    try:
        out, _ = sweep.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        sweep.send_signal(signal.SIGINT)
        out, _ = sweep.communicate(timeout=60)
        raise AssertionError(f"the sweep did not finish in {timeout} s:\n{out[-4000:]}") from None
    finally:
        releaser.stop.set()
    assert sweep.returncode == 0, out[-4000:]
    return out


def test_a_job_requeued_while_unlearning_resumes_and_matches_an_uninterrupted_run(tmp_path):
    sweep = _start_sweep(UNLEARN_JOB, tmp_path)
    job = _first_job(tmp_path)
    releaser = Releaser(job)
    releaser.start()
    done = _requeue_while_training(
        job, "logs/multirun/*/*/unlearn/*.partial/checkpoints/latest.ckpt", tmp_path, 60
    )
    _finish(sweep, releaser)
    sweep_dir = _sweep_dir(tmp_path)
    (payload,) = _payloads(sweep_dir).values()
    assert payload["status"] == "ok"
    log = _rank0_log(sweep_dir, job)
    assert releaser.releases >= 1 and "DUE TO JOB REQUEUE" in log, log[-4000:]
    # the second attempt reused every finished stage and resumed unlearning at its checkpoint
    for stage in ("pretrain", "split", "oracle"):
        assert log.count(f"[{stage}] computing") == 1 and f"[{stage}] cache hit" in log, stage
    assert "[unlearn] computing (resuming)" in log
    assert f"({done} of 60 epochs done)" in log, log[-4000:]
    reference = run(make_config(UNLEARN_JOB, tmp_path / "reference", tmp_path / "ref_cache"))
    assert _metrics(payload) == _metrics(reference)


def test_a_two_node_job_requeued_while_training_matches_the_uninterrupted_one(
    two_node_job, tmp_path
):
    sweep = _start_sweep([*TWO_NODES, *DDP_JOB], tmp_path)
    job = _first_job(tmp_path)
    releaser = Releaser(job)
    releaser.start()
    done = _requeue_while_training(
        job, "cache/oracle/*.partial/checkpoints/latest.ckpt", tmp_path, 40
    )
    _finish(sweep, releaser)
    sweep_dir = _sweep_dir(tmp_path)
    (payload,) = _payloads(sweep_dir).values()
    log = _rank0_log(sweep_dir, job)
    assert "DUE TO JOB REQUEUE" in log, log[-4000:]
    assert log.count("[pretrain] computing") == 1 and "[pretrain] cache hit" in log
    assert "[oracle] computing (resuming)" in log and f"({done} of 40 epochs done)" in log
    # the resumed two-node job ends exactly where the uninterrupted one did
    assert _metrics(payload) == _metrics(two_node_job[2])


def test_a_job_hitting_its_time_limit_is_checkpointed_resubmitted_and_completes(tmp_path):
    """timeout_min=2: Slurm sends USR2 30 s before the limit, submitit's handler counts a
    timeout, requeues the job and exits; the next attempt resumes the unlearning stage.

    Slurm may send the signal up to 60 s earlier than asked (sbatch --signal: "due to the
    resolution of event handling"), so the limit leaves at least 30 s for Python to start and
    submitit to install its handler; with timeout_min=1 a USR2 that came during start-up
    killed the job once (CI, 2026-12-05)."""
    args = [
        "pretrain.epochs=2",
        "method=finetune",
        "method.epochs=3000",  # ~210 s of fine-tuning: more than one attempt gets (≤ 90 s)
        "eval=none",
        "logger=none",
        "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=30",
        "hydra.launcher.max_num_timeout=8",
    ]
    sweep = _start_sweep(args, tmp_path)
    job = _first_job(tmp_path)
    releaser = Releaser(job)
    releaser.start()
    _finish(sweep, releaser, timeout=900)
    sweep_dir = _sweep_dir(tmp_path)
    (payload,) = _payloads(sweep_dir).values()
    assert payload["status"] == "ok"
    log = _rank0_log(sweep_dir, job)
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, log[-4000:]
    assert "remaining timeouts" in log  # submitit's "Requeued job ... (N remaining timeouts)"
    assert "[unlearn] computing (resuming)" in log and "[unlearn] resuming from" in log
    assert log.count("[pretrain] computing") == 1
