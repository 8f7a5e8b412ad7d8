"""File-system helpers shared by the stage cache, the results writer and the validation layer:
atomic text writes and the "can a directory be made here" probe. A leaf module: it imports
nothing from the framework, so every package may use it."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why no directory can be written at ``path``, or ``None`` if one can; creates nothing.

    The nearest existing ancestor decides: it must be a directory that this process may write
    (``os.access``), on a file system that is neither mounted read-only nor a virtual one
    without storage (``/proc``, ``/sys``: zero blocks, where even root's ``mkdir`` fails).
    """
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    stats = os.statvfs(probe)
    if stats.f_flag & os.ST_RDONLY:
        return f"{probe} is on a read-only file system"
    if stats.f_blocks == 0:
        return f"{probe} is on a virtual file system that stores no files"
    return None
