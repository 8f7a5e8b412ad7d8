"""The work directory of a memorization estimate: finished members survive, damaged ones are
retrained, and a directory of other settings is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from unlearning.memorization.member_store import META_FILE, ROW_PATTERN, MemberStore

META = {"epochs": 2, "lr": 0.1, "n": 5, "fingerprint": "abc"}


def test_saved_rows_load_back_and_missing_ones_are_none(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / "work", META)
    margins = np.array([0.5, -1.0, 2.0, 0.0, 3.5], dtype=np.float32)
    correct = np.array([True, False, True, False, True])
    store.save(3, margins, correct)
    loaded = MemberStore(tmp_path / "work", META).load(3, 5)
    assert loaded is not None
    assert np.array_equal(loaded[0], margins) and loaded[0].dtype == np.float32
    assert np.array_equal(loaded[1], correct) and loaded[1].dtype == bool
    assert store.load(0, 5) is None
    assert json.loads((tmp_path / "work" / META_FILE).read_text()) == META
    assert not list((tmp_path / "work").glob(".*.tmp"))  # nothing left from the atomic writes


def test_damaged_or_wrong_length_rows_are_retrained(tmp_path: Path, caplog) -> None:
    store = MemberStore(tmp_path, META)
    (tmp_path / ROW_PATTERN.format(1)).write_bytes(b"not numpy")
    (tmp_path / ROW_PATTERN.format(3)).write_bytes(b"PK\x03\x04 cut")  # a truncated archive
    store.save(2, np.zeros(4, dtype=np.float32), np.zeros(4, dtype=bool))  # another n
    with caplog.at_level(logging.WARNING, logger="unlearning.memorization.member_store"):
        assert store.load(1, 5) is None
    assert "unreadable" in caplog.text and "retraining member 1" in caplog.text
    assert store.load(3, 5) is None
    assert store.load(2, 5) is None


def test_a_directory_of_other_settings_is_refused(tmp_path: Path) -> None:
    MemberStore(tmp_path, META)
    with pytest.raises(ValueError, match=r"differs in \['epochs', 'fingerprint'\]"):
        MemberStore(tmp_path, {**META, "epochs": 3, "fingerprint": "xyz"})
