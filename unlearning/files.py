"""File-system helpers shared by the stage cache, the results writer and the validation layer:
atomic text writes, the "can a directory be made here" probe and the conversion of a failed
write (full disk, read-only folder) into one user error. Near-leaf: it imports only
:mod:`unlearning.errors`, so every package may use it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from unlearning.errors import WriteError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):  # a full disk leaves no half-written temporary file behind
            tmp.unlink(missing_ok=True)
        raise


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


#: ``OSError`` numbers of a write the user can fix: a full disk or quota, a read-only file system,
#: no permission, a file too large for the file system
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
#: what PyTorch's zip writer (``torch.save``) puts in the ``RuntimeError`` it raises when the
#: disk fills: it loses the ``OSError`` (measured with ``torch.save(..., "/dev/full")``:
#: "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")


def write_failure(exc: BaseException) -> str | None:
    """Why ``exc`` is a failed write the user can fix (full disk, quota, read-only folder, no
    permission), or ``None`` if it is some other error (which stays a traceback: a bug)."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in TORCH_WRITE_FAILURES):
        return f"the file system refused the data, most likely a full disk or quota: {exc}"
    return None


@contextmanager
def writing(path: str | os.PathLike, what: str, key: str) -> Iterator[None]:
    """Turn a failed write of ``what`` at ``path`` (:func:`write_failure`) into one
    :class:`~unlearning.errors.WriteError` naming the path, what was written and ``key`` (the
    setting that chose the place): train.py prints it as one line and exits with status 2,
    instead of PyTorch's or the OS's traceback (issue 19). Other errors pass unchanged."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        raise WriteError(key, path, what, reason) from None
