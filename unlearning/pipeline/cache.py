"""Content-addressed stage cache (SPEC §0).

Each stage's artefact (pretrained model, split indices, oracle) lives in
``<cache_dir>/<stage>/<key>/`` where ``key`` hashes exactly the config that determines it.
A stage is computed at most once per key:

* a file lock (``filelock``) per key makes parallel sweep jobs wait for the one that computes;
* the computation writes into ``<key>.partial/`` and the finished directory is renamed into
  place (``os.replace`` — atomic on POSIX), so an entry is either complete or absent;
* a killed computation leaves ``<key>.partial/`` behind; the next run hands it to the compute
  function again, which resumes from the checkpoints it finds there;
* every entry carries a ``manifest.json`` (written last, before the rename): the key, the hash
  of its config, the size and SHA-256 of each file and the library versions. A hit is verified
  against it; an entry that fails (truncated or altered file, missing manifest) is reported,
  moved aside to ``<key>.corrupt-<time>/`` for inspection and computed again — never loaded;
* an entry that matches its manifest but whose files cannot be read safely (a file replaced
  together with its manifest: ``torch.load(weights_only=True)`` refuses it) is treated the same
  way: moved aside, logged and computed again (issue 19), never a traceback on every run;
* a write that fails while computing (full disk or quota, read-only folder; PyTorch's zip
  writer reports a full disk as a ``RuntimeError``) ends as one :class:`CacheWriteError` naming
  the file and what was written; the ``.partial`` work is kept and the next run resumes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from unlearning.errors import WriteError
from unlearning.files import atomic_write_text, write_failure, writing

log = logging.getLogger(__name__)

META_FILE = "cache_meta.json"
MANIFEST_FILE = "manifest.json"
#: packages whose versions are recorded in every manifest (informational, not verified)
VERSIONED = ("torch", "lightning", "numpy")


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit SHA-256 of a JSON-serialisable mapping (key order irrelevant)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Python and :data:`VERSIONED` package versions (recorded, so a stale entry can be told)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _entry_files(entry: Path) -> list[Path]:
    return sorted(
        p for p in entry.rglob("*") if p.is_file() and p.relative_to(entry) != Path(MANIFEST_FILE)
    )


def write_manifest(entry: Path, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Record the key, config hash, each file's size and SHA-256 and the library versions in
    ``entry/manifest.json`` (atomically; the manifest marks the entry as complete)."""
    manifest = {
        "stage": stage,
        "key": config_hash(config),
        "config_sha256": hashlib.sha256(
            json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest(),
        "files": {
            str(p.relative_to(entry)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in _entry_files(entry)
        },
        "versions": library_versions(),
    }
    atomic_write_text(entry / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


def verify_entry(entry: Path, key: str) -> str | None:
    """What is wrong with the finished entry ``entry`` (of key ``key``), or ``None`` if it
    matches its manifest: every listed file present with its recorded size and SHA-256."""
    try:
        manifest = json.loads((entry / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (unfinished, or written by an older version)"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST_FILE} ({exc})"
    if manifest.get("key") != key:
        return f"{MANIFEST_FILE} is for key {manifest.get('key')!r}, not {key!r}"
    for name, expected in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, the manifest says {expected['bytes']} (truncated?)"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def load_problem(entry: Path) -> str | None:
    """What keeps a file of ``entry`` from loading the way the pipeline loads it, or ``None``.

    Run on a hit after :func:`verify_entry`: a checksum shows a file is the one the manifest
    names, not that the manifest is honest. ``.pt``/``.ckpt`` files must load with
    ``torch.load(weights_only=True)`` (no code can run), ``.npy``/``.npz`` with
    ``allow_pickle=False`` (every array of an archive is read), ``.json`` must parse. Costs one
    more read of each file per job, like the checksum.
    """
    for path in _entry_files(entry):
        try:
            if path.suffix in (".pt", ".ckpt"):
                torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".npy":
                np.load(path, allow_pickle=False)
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    for name in archive.files:
                        archive[name]
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as exc:  # unpicklable, wrong format: never trust it, never a traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{path.relative_to(entry)} does not load ({type(exc).__name__}: {first})"
    return None


def entry_problem(entry: Path, key: str) -> str | None:
    """What is wrong with a finished entry: its manifest (:func:`verify_entry`), then whether its
    files load (:func:`load_problem`); ``None`` when it is sound."""
    return verify_entry(entry, key) or load_problem(entry)


class CacheWriteError(WriteError):
    """A write into the cache failed (full disk or quota, read-only folder, no permission): a
    user-fixable error naming the file and what was written (issue 19)."""


class StageCache:
    """Cache of pipeline stages under ``root``."""

    def __init__(self, root: str | os.PathLike, setting: str = "paths.cache_dir") -> None:
        self.root = Path(root).expanduser()
        #: the config key that chose :attr:`root`, named by a failed write (the unlearning
        #: stage's entries live in the job's output directory: ``hydra.run.dir``)
        self.setting = setting

    def path(self, stage: str, config: Mapping[str, Any]) -> Path:
        """Where the entry of ``stage`` for ``config`` lives (whether or not it exists)."""
        return self.root / stage / config_hash(config)

    def has(self, stage: str, config: Mapping[str, Any]) -> bool:
        """Whether a finished entry exists (not verified; :meth:`get_or_compute` verifies)."""
        return (self.path(stage, config) / MANIFEST_FILE).is_file()

    def _lookup(self, stage: str, final: Path, note: str = "") -> bool:
        """Whether ``final`` is a sound entry (:func:`entry_problem`); a corrupt one is reported
        and moved aside."""
        if not final.exists():
            return False
        problem = entry_problem(final, final.name)
        if problem is None:
            log.info("[%s] cache hit%s: %s", stage, note, final)
            return True
        aside = final.with_name(f"{final.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning(
            "[%s] cache entry %s is corrupt: %s; moved to %s and computing it again",
            stage,
            final,
            problem,
            aside.name,
        )
        os.replace(final, aside)
        return False

    def get_or_compute(
        self,
        stage: str,
        config: Mapping[str, Any],
        compute: Callable[[Path], Mapping[str, Any] | None],
    ) -> Path:
        """Return the directory of the finished, verified entry, computing it if absent.

        ``compute(work_dir)`` writes the artefact's files into ``work_dir`` (which may hold a
        previous, interrupted attempt's checkpoints) and may return extra metadata (e.g. the
        wall time) that is stored in the entry's ``cache_meta.json`` with the config. A failed
        write while computing (:func:`unlearning.files.write_failure`: full disk or quota,
        read-only folder) raises :class:`CacheWriteError` naming :attr:`setting`, the file (a
        stage's own :func:`unlearning.files.writing` names it; else the work directory) and what
        was written; ``work_dir`` is kept, so the next run resumes from it. Other errors pass.
        """
        final = self.path(stage, config)
        if final.is_dir() and entry_problem(final, final.name) is None:
            log.info("[%s] cache hit: %s", stage, final)
            return final
        work = final.with_name(final.name + ".partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(final) + ".lock"):
                if self._lookup(stage, final, " (computed by a concurrent job)"):
                    return final
                self._compute(stage, config, compute, final)
        except WriteError as exc:  # named by the stage (or a nested cache): this cache's key
            raise CacheWriteError(self.setting, exc.path, exc.what, exc.reason) from None
        except (OSError, RuntimeError) as exc:
            reason = write_failure(exc)
            if reason is None:
                raise
            raise CacheWriteError(self.setting, work, f"the {stage} entry", reason) from None
        return final

    def _compute(
        self,
        stage: str,
        config: Mapping[str, Any],
        compute: Callable[[Path], Mapping[str, Any] | None],
        final: Path,
    ) -> None:
        """Compute into ``<key>.partial/``, write meta and manifest, rename into place."""
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
        with writing(work / META_FILE, f"the {stage} entry's metadata", self.setting):
            atomic_write_text(work / META_FILE, json.dumps(meta, indent=2, default=str))
        with writing(work / MANIFEST_FILE, f"the {stage} entry's manifest", self.setting):
            write_manifest(work, stage, config)
        if final.exists():  # cannot happen after _lookup, unless moved in by hand
            shutil.rmtree(final)
        os.replace(work, final)

    @staticmethod
    def meta(entry: Path) -> dict[str, Any]:
        """The metadata stored with a finished entry."""
        return json.loads((entry / META_FILE).read_text())
