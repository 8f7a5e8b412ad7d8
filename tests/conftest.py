"""Shared fixtures: compose the real config from ``conf/`` and shrink it for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Quiet, fast trainers in every test; the evaluation suite is off unless a test turns it on
# (tests/unlearning/test_evaluation.py runs it).
QUIET = ["trainer.enable_progress_bar=false", "logger=none", "eval=none"]


def make_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides``, writing to ``output_dir``/``cache_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "config",
            overrides=[
                *QUIET,
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={cache_dir}",
                f"paths.data_dir={output_dir / 'data'}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the whole session, so f_A and the oracle train once."""
    return tmp_path_factory.mktemp("stage_cache")


@pytest.fixture
def config(tmp_path: Path, shared_cache: Path) -> Callable[..., DictConfig]:
    """``config(*overrides)`` → a composed config using the session cache."""

    def _make(*overrides: str, cache: Path | None = None) -> DictConfig:
        return make_config(list(overrides), tmp_path / "run", cache or shared_cache)

    return _make


def cli_dirs(tmp_path: Path) -> list[str]:
    """Overrides that keep a CLI run's cache and logs inside ``tmp_path``, without progress bars
    or the evaluation suite."""
    return [
        "trainer.enable_progress_bar=false",
        "eval=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]


def run_cli(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, timeout: int = 600
):
    """Run ``python train.py args`` as a user would; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
