"""The data's fingerprint: a hash of what a job reads, joined to every stage key (issue 19).

``dataset.root`` is not part of any key (:data:`unlearning.pipeline.keys.NON_DETERMINING`): where
the data lives does not change a result. What the data *is* does, so each key carries this
fingerprint instead: the same files copied to another path hit the cache, other files under the
same path miss it.

* Sources with files (:meth:`datamodules.sources.ImageSource.data_files`): SHA-256 of each file's
  bytes, together with its name under the root (ImageNet's class folders are its labels).
  Hashing is memoised by ``(path, size, mtime_ns, inode)`` in :data:`MEMO_FILE` under the cache
  directory, written atomically, so a later job only ``stat``s the files.
* Embedded and synthetic sources (:meth:`~datamodules.sources.ImageSource.data_arrays`): dtype,
  shape and bytes of each array (milliseconds for digits and signal_noise).

docs/pipeline.md ("What the keys cover") gives the cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datamodules.sources import ImageSource
from unlearning.files import atomic_write_text
from unlearning.pipeline.cache import file_sha256

#: the memo of file digests, ``{path: [size, mtime_ns, inode, sha256]}``, under the cache directory
MEMO_FILE = "data_fingerprints.json"
#: bump when what the fingerprint covers changes
FINGERPRINT_VERSION = 1
#: a file modified less than this long ago is hashed but not memoised: a file system's mtime
#: ticks coarsely (a few ms), so a second write of the same size within one tick would keep the
#: size and mtime of the first and its stale digest ("racy git")
RACY_NS = 2_000_000_000

#: one fingerprint per source object: a job computes it once for all its keys
_by_source: weakref.WeakKeyDictionary[ImageSource, str] = weakref.WeakKeyDictionary()


def file_digest(path: Path) -> str:
    """SHA-256 of the bytes of ``path`` (the cache's own chunked reader; the manifests use it)."""
    return file_sha256(Path(path))


class DigestMemo:
    """File digests memoised by ``(path, size, mtime_ns, inode)``: a changed file (new size or
    mtime, or another file renamed onto the path) is hashed again; a file younger than
    :data:`RACY_NS` is never memoised. ``directory=None`` keeps no memo."""

    def __init__(self, directory: str | os.PathLike | None) -> None:
        self.path = Path(directory).expanduser() / MEMO_FILE if directory is not None else None
        self.entries: dict[str, list] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text()))
            except (OSError, ValueError, TypeError):
                self.entries = {}  # an unreadable memo only costs a rehash

    def digest(self, path: Path) -> str:
        """The SHA-256 of ``path``, from the memo when its size, mtime and inode are unchanged."""
        stat = path.stat()
        name = str(path.absolute())
        entry = self.entries.get(name)
        seen = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        if entry is not None and entry[:3] == seen:
            return entry[3]
        digest = file_digest(path)
        if time.time_ns() - stat.st_mtime_ns > RACY_NS:
            self.entries[name] = [*seen, digest]
            self.changed = True
        return digest

    def save(self) -> None:
        """Write the memo back (atomically) if a file was hashed; a failure to write only costs
        a rehash in the next job."""
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
        except OSError:
            return
        self.changed = False


def _update_arrays(h: hashlib._Hash, arrays: Iterable[np.ndarray]) -> None:
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))


def data_fingerprint(source: ImageSource, cache_dir: str | os.PathLike | None = None) -> str:
    """The SHA-256 over what ``source`` reads: its files (name under the root and bytes) or its
    arrays. ``cache_dir`` holds the digest memo (``None``: none kept). Computed once per source
    object."""
    known = _by_source.get(source)
    if known is not None:
        return known
    h = hashlib.sha256(f"data-fingerprint-v{FINGERPRINT_VERSION}".encode())
    files = sorted(source.data_files())
    if files:
        memo = DigestMemo(cache_dir)
        for name, path in files:
            h.update(f"\0{name}\0{memo.digest(path)}".encode())
        memo.save()
    _update_arrays(h, source.data_arrays())
    fingerprint = h.hexdigest()
    _by_source[source] = fingerprint
    return fingerprint
