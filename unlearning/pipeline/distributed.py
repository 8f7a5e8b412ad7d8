"""Multi-process (DDP) jobs: who starts the ranks, which rank writes, how ranks share the cache.

With ``trainer.strategy=ddp`` every rank runs the *whole* job (Lightning's subprocess launcher
re-runs the script; SLURM and torchrun start one task per device). The pipeline therefore runs
in each rank, and this module makes that correct:

* **Launch.** Lightning's launcher starts the other ranks at the first ``trainer.fit`` with
  ``sys.argv`` (``_hydra_subprocess_cmd``): under ``-m`` the child replays the whole sweep into
  a second multirun folder, and it starts while rank 0 holds a stage-cache lock, so a child that
  waits on that lock deadlocks the fit. :func:`session` starts the ranks itself at the start of
  the job, with *this job's* overrides and output directory, and sets ``LOCAL_RANK`` etc. so
  Lightning sees externally created processes and launches nothing.
* **Cache.** :class:`RankAwareCache`: only rank 0 takes the entry's file lock, computes
  (training stages: together with the other ranks, who join the fit) and commits the entry;
  the other ranks learn what to do through a ``torch.distributed.TCPStore`` that they poll, so
  a long wait for another sweep job's lock never hits a collective timeout.
* **Writes.** Only rank 0 saves models, evaluates and writes ``results.json``, plots and logger
  output (:func:`is_rank_zero`).
* **Batch.** Config batch sizes are global (the papers' B); each of W devices gets B / W
  (:func:`per_device_batch_size`).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unlearning.config.topology import (
    cluster_started,
    runs_script_per_rank,
    strategy_name,
    world_size,
)
from unlearning.errors import ConfigError
from unlearning.pipeline.cache import StageCache

log = logging.getLogger(__name__)

#: the documented entry point that every rank runs (``config_path="conf"`` next to it)
ENTRY = Path(__file__).resolve().parents[2] / "train.py"
#: cached stages that run ``trainer.fit`` and so need every rank (the others run on rank 0)
COLLECTIVE_STAGES = frozenset({"pretrain", "oracle", "unlearn"})
#: environment variable naming the coordination store's port (default ``MASTER_PORT + 1``)
STORE_PORT_ENV = "UNLEARNING_STORE_PORT"
#: how often a waiting rank polls the coordination store, in seconds
POLL_S = 0.05
#: how long a rank waits to connect to rank 0's store
CONNECT_TIMEOUT = timedelta(minutes=30)
#: environment variables that :func:`session` sets in the launching process (restored after)
_LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    STORE_PORT_ENV,
)
#: Hydra overrides that a rank's command must not inherit from a sweep job
_SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra.run", "hydra.output_subdir", "hydra.job.name")


# ---------------------------------------------------------------------------- ranks


@dataclass
class Session:
    """This process's place in a multi-process job."""

    rank: int
    world_size: int
    store: Any  # torch.distributed.TCPStore
    children: list[subprocess.Popen] = field(default_factory=list)
    #: numbers the cache calls; every rank makes the same calls in the same order
    calls: Iterator[int] = field(default_factory=itertools.count)


_SESSION: Session | None = None


def rank() -> int:
    """The global rank of this process in the running job (0 outside a multi-process job)."""
    return _SESSION.rank if _SESSION is not None else 0


def is_rank_zero() -> bool:
    """Whether this process writes the job's outputs (models, results, plots, logs)."""
    return rank() == 0


def _quote(value: str) -> str:
    """``value`` as a quoted Hydra override value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rank_command(local_rank: int) -> list[str]:
    """The command that runs local rank ``local_rank`` of *this* Hydra job.

    Lightning's ``_hydra_subprocess_cmd`` repeats ``sys.argv``: inside ``-m a=1,2`` that is the
    whole sweep. Here the rank gets this job's own overrides, in run mode, writing into this
    job's output directory (its log is ``<job name>_rank<r>.log`` there; no ``.hydra/``).
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [sys.executable, str(ENTRY), f"--config-name={hc.job.config_name}"]
    for source in hc.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            command.append(f"--config-path={source.path}")
        elif source.provider == "command-line" and source.schema == "file":
            command.append(f"--config-dir={source.path}")
    command += [o for o in hc.overrides.hydra if not o.lstrip("~+").startswith(_SWEEP_ONLY)]
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir={_quote(str(hc.runtime.output_dir))}",
        "hydra.output_subdir=null",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
    ]
    return command


def _free_port() -> int:
    from callbacks.lightning_compat import free_network_port

    return free_network_port()


def _watch(children: list[subprocess.Popen], done: threading.Event) -> None:
    """Like Lightning's launcher: if a rank dies, end the job rather than let the others hang
    in a collective (NCCL waits for its timeout; gloo fails by itself)."""
    while not done.wait(2.0):
        for i, child in enumerate(children, start=1):
            if child.poll() not in (None, 0):
                log.error("rank %d exited with code %d; stopping the job", i, child.returncode)
                for other in children:
                    if other.poll() is None:
                        other.kill()
                os.kill(os.getpid(), signal.SIGTERM)
                return


def _launch(cfg: DictConfig, size: int) -> tuple[Session, dict[str, str | None]]:
    """Rank 0 of a single-node job: start local ranks 1..W−1 with this job's config."""
    from hydra.core.hydra_config import HydraConfig
    from torch.distributed import TCPStore

    if not HydraConfig.initialized():
        raise ConfigError(
            "trainer.strategy",
            strategy_name(cfg),
            "multi-process training starts its ranks from the command line: run it through "
            "train.py (or use trainer=cpu / trainer=gpu here)",
        )
    saved = {name: os.environ.get(name) for name in _LAUNCH_ENV}
    master_port, store_port = _free_port(), _free_port()
    os.environ.update(
        MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        MASTER_PORT=str(master_port),
        NODE_RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE=str(size),
        **{STORE_PORT_ENV: str(store_port)},
    )
    store = TCPStore(
        os.environ["MASTER_ADDR"], store_port, size, True, CONNECT_TIMEOUT, wait_for_workers=False
    )
    session = Session(0, size, store)
    cwd = HydraConfig.get().runtime.cwd
    for local_rank in range(1, size):
        env = {**os.environ, "LOCAL_RANK": str(local_rank)}
        command = rank_command(local_rank)
        log.info("[ddp] starting rank %d: %s", local_rank, " ".join(command))
        session.children.append(subprocess.Popen(command, env=env, cwd=cwd))
    return session, saved


def _join(cfg: DictConfig, size: int, cluster: str | None) -> Session:
    """A rank started by us (``LOCAL_RANK`` set), SLURM or torchrun: connect to rank 0."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )
    from torch.distributed import TCPStore

    env = {"slurm": SLURMEnvironment, "torchrun": TorchElasticEnvironment}.get(
        cluster or "", LightningEnvironment
    )()
    if cluster is None:
        node = int(os.environ.get("NODE_RANK", 0))
        global_rank = node * int(cfg.trainer.devices) + env.local_rank()
    else:
        global_rank = env.global_rank()
    port = int(os.environ.get(STORE_PORT_ENV, env.main_port + 1))
    store = TCPStore(
        env.main_address, port, size, global_rank == 0, CONNECT_TIMEOUT, wait_for_workers=False
    )
    return Session(global_rank, size, store)


@contextmanager
def session(cfg: DictConfig) -> Iterator[Session | None]:
    """The ranks of one job for a ``ddp`` preset, from the job's start to its end; nothing for
    a single process. On exit rank 0 waits for its ranks, and the process group, the store and
    the environment are reset so that the next job of a sweep starts its own ranks."""
    global _SESSION
    if not runs_script_per_rank(cfg):
        yield None
        return
    size = world_size(cfg)
    cluster = cluster_started()
    saved: dict[str, str | None] = {}
    if cluster is None and "LOCAL_RANK" not in os.environ:
        current, saved = _launch(cfg, size)
    else:
        current = _join(cfg, size, cluster)
    done = threading.Event()
    if current.children:
        threading.Thread(target=_watch, args=(current.children, done), daemon=True).start()
    _SESSION = current
    log.info("[ddp] rank %d of %d", current.rank, size)
    try:
        yield current
    except BaseException:
        for child in current.children:  # they may wait on this rank: do not leave them behind
            if child.poll() is None:
                child.kill()
        raise
    finally:
        done.set()
        _SESSION = None
        codes = [child.wait() for child in current.children]
        _end_process_group()
        current.store = None
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    failed = {i: code for i, code in enumerate(codes, start=1) if code}
    if failed:
        raise RuntimeError(f"DDP rank(s) failed, {{rank: exit code}}: {failed}")


def end_collectives() -> None:
    """Leave the job's process group: after the last ``trainer.fit`` the ranks no longer work
    together, and rank 0 evaluates alone (torchmetrics would otherwise try to sync with the
    other ranks). A no-op outside a multi-process job."""
    if _SESSION is not None:
        _end_process_group()


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- cache


class RankAwareCache(StageCache):
    """A :class:`StageCache` shared by the ranks of one job.

    Rank 0 alone takes the entry's lock (so concurrent sweep jobs still compute each entry
    once), computes and commits it. A stage in :data:`COLLECTIVE_STAGES` trains with
    ``trainer.fit``, so when rank 0 computes it, it first announces the work directory and the
    other ranks run the same computation with it (their writes are rank-0 guarded); every other
    stage runs on rank 0 only. The other ranks poll the store for the finished entry.
    """

    def __init__(
        self, root: str | os.PathLike, current: Session, setting: str = "paths.cache_dir"
    ) -> None:
        super().__init__(root, setting)
        self.session = current

    def get_or_compute(
        self,
        stage: str,
        config: Mapping[str, Any],
        compute: Callable[[Path], Mapping[str, Any] | None],
    ) -> Path:
        key = f"cache/{next(self.session.calls)}/{stage}"
        store = self.session.store
        if self.session.rank == 0:

            def announced(work: Path) -> Mapping[str, Any] | None:
                store.set(f"{key}/compute", str(work))
                return compute(work)

            collective = stage in COLLECTIVE_STAGES
            final = super().get_or_compute(stage, config, announced if collective else compute)
            store.set(f"{key}/done", str(final))
            return final
        joined = False
        while True:
            # rank 0 announces a computation before it commits: read "done" first, so that a
            # computation announced by then is seen below and joined
            done = store.check([f"{key}/done"])
            if not joined and stage in COLLECTIVE_STAGES and store.check([f"{key}/compute"]):
                log.info("[%s] computing with rank 0", stage)
                compute(Path(store.get(f"{key}/compute").decode()))
                joined = True
            elif done:
                return Path(store.get(f"{key}/done").decode())
            else:
                time.sleep(POLL_S)


def stage_cache(root: str | os.PathLike, setting: str = "paths.cache_dir") -> StageCache:
    """The stage cache for this process: rank-aware inside a multi-process job. ``setting`` is
    the config key that chose ``root`` (a failed write names it)."""
    if _SESSION is not None:
        return RankAwareCache(root, _SESSION, setting)
    return StageCache(root, setting)
