"""Resume of a memorization estimate: one file per finished member in a work directory.

:func:`unlearning.memorization.estimator.estimate_memorization` saves each finished member's
margins and correctness on S as ``member_<k>.npz`` (written atomically: temp file +
``os.replace``), so
an interrupted estimate, or one extended to more members, trains only the missing members. The
directory is tied to the estimate's settings by ``memorization_meta.json``: a store opened with
other settings (another data set, model, training recipe or subset fraction) is refused rather
than mixed in.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

META_FILE = "memorization_meta.json"
ROW_PATTERN = "member_{:06d}.npz"


class MemberStore:
    """The finished members of one estimate in ``work_dir``.

    Opening a store creates the directory and writes ``meta`` (the settings that determine a
    member's predictions), or checks it against the one already there and raises
    ``ValueError`` naming the differing keys.
    """

    def __init__(self, work_dir: Path | str, meta: dict[str, Any]) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / META_FILE
        if path.is_file():
            old = json.loads(path.read_text())
            if old != meta:
                diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise ValueError(
                    f"{self.work_dir} holds members of a different estimate (differs in {diff}); "
                    "use an empty work_dir for these settings"
                )
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def save(self, member: int, margins: np.ndarray, correct: np.ndarray) -> None:
        """Store member ``member``'s margins (float32) and correctness (bool) on S (atomically,
        fsynced)."""
        path = self.work_dir / ROW_PATTERN.format(member)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                margins=np.asarray(margins, dtype=np.float32),
                correct=np.asarray(correct, dtype=bool),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, member: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Member ``member``'s ``(margins, correct)`` on the ``n`` samples, or ``None`` when it
        has not finished (no file, a damaged file, or rows of another length: it is
        retrained)."""
        path = self.work_dir / ROW_PATTERN.format(member)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                margins, correct = data["margins"], data["correct"]
        except (
            OSError,
            ValueError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
        ):  # damaged (not from us: writes are atomic)
            log.warning("memorization: unreadable %s, retraining member %d", path, member)
            return None
        if margins.shape != (n,) or correct.shape != (n,):
            return None
        return margins.astype(np.float32), correct.astype(bool)
