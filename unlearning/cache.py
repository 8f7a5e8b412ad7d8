"""Content-addressed stage cache (SPEC §0).

Each stage's artefact (pretrained model, split indices, oracle) lives in
``<cache_dir>/<stage>/<key>/`` where ``key`` hashes exactly the config that determines it.
A stage is computed at most once per key:

* a file lock (``filelock``) per key makes parallel sweep jobs wait for the one that computes;
* the computation writes into ``<key>.partial/`` and the finished directory is renamed into
  place (``os.replace`` — atomic on POSIX), so an entry is either complete or absent;
* a killed computation leaves ``<key>.partial/`` behind; the next run hands it to the compute
  function again, which resumes from the checkpoints it finds there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

META_FILE = "cache_meta.json"


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit SHA-256 of a JSON-serialisable mapping (key order irrelevant)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StageCache:
    """Cache of pipeline stages under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def path(self, stage: str, config: Mapping[str, Any]) -> Path:
        """Where the entry of ``stage`` for ``config`` lives (whether or not it exists)."""
        return self.root / stage / config_hash(config)

    def has(self, stage: str, config: Mapping[str, Any]) -> bool:
        return (self.path(stage, config) / META_FILE).is_file()

    def get_or_compute(
        self,
        stage: str,
        config: Mapping[str, Any],
        compute: Callable[[Path], Mapping[str, Any] | None],
    ) -> Path:
        """Return the directory of the finished entry, computing it if absent.

        ``compute(work_dir)`` writes the artefact's files into ``work_dir`` (which may hold a
        previous, interrupted attempt's checkpoints) and may return extra metadata (e.g. the
        wall time) that is stored in the entry's ``cache_meta.json`` with the config.
        """
        final = self.path(stage, config)
        if (final / META_FILE).is_file():
            log.info("[%s] cache hit: %s", stage, final)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if (final / META_FILE).is_file():
                log.info("[%s] cache hit (computed by a concurrent job): %s", stage, final)
                return final
            work = final.with_name(final.name + ".partial")
            resumed = work.exists()
            work.mkdir(exist_ok=True)
            log.info("[%s] computing%s -> %s", stage, " (resuming)" if resumed else "", final)
            start = time.perf_counter()
            extra = compute(work) or {}
            meta = {
                "stage": stage,
                "key": final.name,
                "config": config,
                "seconds": time.perf_counter() - start,
                **extra,
            }
            atomic_write_text(work / META_FILE, json.dumps(meta, indent=2, default=str))
            if final.exists():  # a stale, unfinished directory (no meta): replace it
                shutil.rmtree(final)
            os.replace(work, final)
        return final

    @staticmethod
    def meta(entry: Path) -> dict[str, Any]:
        """The metadata stored with a finished entry."""
        return json.loads((entry / META_FILE).read_text())
