"""Weights & Biases for ``logger=wandb``: a Lightning ``WandbLogger`` that goes offline by itself
when no credentials are available, and one W&B run per job, finished even when the job fails.

``wandb`` is imported only when ``logger=wandb`` is chosen; nothing here touches the network in
offline mode (``wandb sync <run dir>`` uploads later, see docs/cluster.md).
"""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

#: WANDB_MODE values that mean "do not talk to the server".
OFFLINE_MODES = ("offline", "dryrun")


def has_credentials() -> bool:
    """Whether W&B could log in without asking: ``WANDB_API_KEY`` or a netrc entry for the
    server (``WANDB_BASE_URL``, default api.wandb.ai; netrc at ``$NETRC`` or ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host or "") is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wants_offline(offline: bool | None) -> bool:
    """``offline`` when given; else ``WANDB_MODE`` when set; else offline without credentials."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in OFFLINE_MODES
    return not has_credentials()


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` (``kwargs`` go to it and on to ``wandb.init``: project, entity, group,
    tags, config, ...); ``offline=None`` picks offline mode when no credentials are found."""
    if not wants_offline(offline):
        return WandbLogger(offline=False, **kwargs)
    if offline:
        why = "logger.wandb.offline=true"
    elif os.environ.get("WANDB_MODE"):
        why = f"WANDB_MODE={os.environ['WANDB_MODE']}"
    else:
        why = "no credentials found (WANDB_API_KEY, netrc)"
    print(f"W&B: offline run ({why})", flush=True)
    return WandbLogger(offline=True, **kwargs)


def finish_run(exit_code: int = 0) -> Path | None:
    """Finish the active W&B run, if any (``exit_code`` ≠ 0 marks it failed); print the
    ``wandb sync`` command for an offline run. Returns the run directory (or ``None``)."""
    wandb = sys.modules.get("wandb")  # never imported by jobs without logger=wandb
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    run_dir = Path(run.dir).parent  # <save_dir>/wandb/<offline-run-...>/files -> the run dir
    offline = bool(run.offline)
    wandb.finish(exit_code=exit_code)
    if offline:
        print(f"W&B offline run saved; upload it with: wandb sync {run_dir}", flush=True)
    return run_dir


@contextmanager
def one_run_per_job() -> Iterator[None]:
    """Finish the job's W&B run when the job ends, failed (exit code 1) or not, so that the next
    job of a multirun (same process under the basic or joblib launcher) starts a new run."""
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        finish_run(exit_code)
