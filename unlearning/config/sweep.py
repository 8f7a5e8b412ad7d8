"""Sweep plumbing: collision-free sweep directories, resuming a sweep, launcher checks.

* ``${uid:}`` — a short random id, resolved once per sweep (Hydra copies the master config's
  resolver cache into every job), so two sweeps started in the same second get different
  ``hydra.sweep.dir`` s.
* ``${short_hash:<text>}`` — 8 hex digits of a string; the job subdir hashes the job's override
  set (``hydra.job.override_dirname``), so the same job lands in the same subdir when a sweep is
  rerun into its old directory (``hydra.sweep.dir=<old dir>``).
* :func:`completed_results` — the stored payload when the job's ``results.json`` already says
  ``ok`` for the same config: the job is skipped on a rerun.
* :class:`LauncherCheck` — a Hydra callback that fails at start-up, before any directory is
  created or anything submitted, when the run or sweep directory cannot be written or the chosen
  launcher cannot work on this machine (plugin missing, no ``sbatch``).

Importing this module registers the resolvers (``train.py`` imports it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from unlearning.errors import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
#: config keys that never change a job's result (where things are written or read from).
LOCATION_KEYS = ("paths",)

#: launcher class → (pip package of its Hydra plugin, programs it needs on PATH).
LAUNCHER_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": (
        "hydra-submitit-launcher",
        ("sbatch", "squeue", "scancel"),
    ),
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher": (
        "hydra-submitit-launcher",
        (),
    ),
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": (
        "hydra-joblib-launcher",
        (),
    ),
}

#: Slurm launcher keys that follow the trainer (conf/hydra/launcher/slurm.yaml).
TRAINER_SOURCES = {"nodes": "trainer.num_nodes", "tasks_per_node": "trainer.devices"}
#: Lightning accelerators that run on GPUs.
GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def short_hash(text: Any) -> str:
    """8 hex digits of SHA-256 of ``str(text)`` (stable across processes and machines)."""
    return hashlib.sha256(str(text).encode()).hexdigest()[:8]


def slurm_gpus(accelerator: str, devices: Any) -> Any:
    """GPUs per node to ask Slurm for: ``trainer.devices`` on a GPU accelerator, else ``None``
    (no ``--gpus-per-node`` flag at all)."""
    return devices if str(accelerator) in GPU_ACCELERATORS else None


def register_resolvers() -> None:
    """Register ``${uid:}`` (cached: one value per config), ``${short_hash:...}`` and
    ``${slurm_gpus:<accelerator>,<devices>}``."""
    for name, resolver, cache in (
        ("uid", _uid, True),
        ("short_hash", short_hash, False),
        ("slurm_gpus", slurm_gpus, False),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cache)


register_resolvers()

# conf/hydra/launcher/{joblib,submitit_local}.yaml share their names with the plugins' schemas, so
# Hydra validates them against those schemas (a typo in a key fails) and warns that this matching
# is deprecated. The presets are complete (own _target_ and every key), so they keep working
# without the matching; silence the warning.
warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")


def _comparable(config: Any) -> Any:
    """``config`` as plain JSON values, without :data:`LOCATION_KEYS`."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in plain.items() if k not in LOCATION_KEYS}


def completed_results(cfg: DictConfig) -> dict[str, Any] | None:
    """The payload of ``<paths.output_dir>/results.json`` when it says ``ok`` for this very config
    (locations aside), else ``None``.

    A rerun of a sweep into its old directory (``hydra.sweep.dir=<old dir>``) reaches the same
    job subdirs (they hash the job's overrides), so finished jobs return their stored metrics and
    only missing, failed or diverged jobs run again.
    """
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    if not isinstance(output_dir, str) or not output_dir:  # refused by validate_config
        return None
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring unreadable %s; running the job", path)
        return None
    if payload.get("status") != "ok":
        return None
    if _comparable(payload.get("config", {})) != _comparable(cfg):
        log.warning("%s holds results of a different config; running the job again", path)
        return None
    print(f"skipped: {path} already says ok", flush=True)
    return payload


def launcher_problem(launcher: DictConfig) -> str | None:
    """What is missing on this machine for ``hydra.launcher`` to work, or ``None``."""
    target = launcher.get("_target_", "")
    if target not in LAUNCHER_NEEDS:
        return None
    package, programs = LAUNCHER_NEEDS[target]
    module = target.rsplit(".", 2)[0]
    if importlib.util.find_spec(module.split(".")[0]) is None or (
        importlib.util.find_spec(module) is None
    ):
        return f"its Hydra plugin is not installed: pip install {package}"
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found on PATH: submit from a Slurm login node "
            "(or use hydra/launcher=submitit_local, joblib or basic on this machine)"
        )
    for key, source in TRAINER_SOURCES.items():
        value = launcher.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return (
                f"{key}={value!r} (from {source}) must be a positive integer: "
                f"set {source}=<{'GPUs per node' if key == 'tasks_per_node' else 'nodes'}>"
            )
    return None


class LauncherCheck(Callback):
    """Hydra callback (``hydra.callbacks``): the start-up checks that must run before Hydra
    creates a directory or submits a job, each ending in one message and exit status 2, no
    traceback. A run or sweep whose output directory cannot be written (``paths.log_dir``,
    ``hydra.run.dir``, ``hydra.sweep.dir``: null, empty, a file on the way, read-only) is
    refused before Hydra's ``mkdir`` fails with a traceback; so is a sweep whose job subdir is
    empty (issue 19: every job would write into the sweep directory itself); a sweep whose
    launcher cannot work on this machine is refused before anything is submitted."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(lambda: _check_output_dirs(config, "hydra.run.dir"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(lambda: _check_output_dirs(config, "hydra.sweep.dir"))
        _exit_on_error(lambda: _check_job_subdir(config))
        _exit_on_error(lambda: _check_launcher(config))


def _check_launcher(config: DictConfig) -> None:
    """``hydra.launcher`` can work on this machine (:func:`launcher_problem`)."""
    launcher = config.hydra.launcher
    problem = launcher_problem(launcher)
    if problem is not None:
        choice = OmegaConf.select(config, "hydra.runtime.choices")
        name = (choice or {}).get("hydra/launcher", launcher.get("_target_"))
        raise ConfigError("hydra/launcher", name, problem)


def _check_output_dirs(config: DictConfig, key: str) -> None:
    """``paths.log_dir`` and the run's (``key``) directory can be written; creates nothing."""
    from unlearning.config.kinds import require
    from unlearning.config.rules import WRITABLE_DIR

    require("paths.log_dir", OmegaConf.select(config, "paths.log_dir"), WRITABLE_DIR, "logs")
    require(key, OmegaConf.select(config, key), WRITABLE_DIR, "outputs/run")


def _check_job_subdir(config: DictConfig) -> None:
    """``hydra.sweep.subdir`` names a directory below the sweep directory. Hydra joins an empty
    (or blank, or null) subdir to ``hydra.sweep.dir`` as the sweep directory itself, so every job
    would write its ``results.json`` over the previous job's (issue 19). Read unresolved: a subdir
    with an interpolation is resolved per job, after this check."""
    from unlearning.config.kinds import TEXT, reject

    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if not TEXT.test(subdir):
        raise reject(
            "hydra.sweep.subdir",
            subdir,
            "a non-empty directory name below hydra.sweep.dir",
            "drop the override (the default names each job by its overrides)",
            "an empty one puts every job in the sweep directory, each overwriting the last",
        )


def _exit_on_error(check: Callable[[], None]) -> None:
    """Run ``check``; on a :class:`ConfigError` print it as ``train.py`` does and exit 2."""
    try:
        check()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
