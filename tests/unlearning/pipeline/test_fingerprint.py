"""Issue 19: the data's fingerprint (unlearning/pipeline/fingerprint.py) — file bytes memoised
by (path, size, mtime, inode) under the cache dir; arrays for embedded and synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from datamodules import real_datasets as rd
from datamodules.embedded import Digits, SignalNoise
from datamodules.sources import NoisyLabels
from tests.datamodules.test_real_datasets import write_cifar10
from unlearning.pipeline import fingerprint as fp

DAY_NS = 86_400 * 10**9


def _age(root: Path) -> None:
    """Set every file's mtime a day back (a file this young is never memoised)."""
    old = time.time_ns() - DAY_NS
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(old, old))


@pytest.fixture
def digests(monkeypatch) -> list[Path]:
    """The files actually read and hashed."""
    hashed: list[Path] = []
    real = fp.file_digest

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(fp, "file_digest", counting)
    return hashed


def test_the_same_bytes_at_another_path_have_the_same_fingerprint(tmp_path):
    write_cifar10(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = fp.data_fingerprint(rd.CIFAR10(str(tmp_path / "a")))
    assert a == fp.data_fingerprint(rd.CIFAR10(str(tmp_path / "b")))
    write_cifar10(tmp_path / "c", labels_up_to=9)
    assert a != fp.data_fingerprint(rd.CIFAR10(str(tmp_path / "c")))


def test_digests_are_memoised_under_the_cache_dir_until_a_file_changes(tmp_path, digests):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_cifar10(root)
    _age(root)
    first = fp.data_fingerprint(rd.CIFAR10(str(root)), cache)
    assert len(digests) == 6
    memo = json.loads((cache / fp.MEMO_FILE).read_text())
    assert len(memo) == 6 and not list(cache.glob(".*.tmp")), "written whole, atomically"

    digests.clear()
    assert fp.data_fingerprint(rd.CIFAR10(str(root)), cache) == first
    assert digests == [], "a later job only stats the files"

    batch = root / "cifar-10-batches-py" / "data_batch_5"
    write_cifar10(tmp_path / "other", labels_up_to=9)
    shutil.copy(tmp_path / "other" / "cifar-10-batches-py" / "data_batch_5", batch)
    # an old mtime, but not the one the memo holds: hashed again
    os.utime(batch, ns=(time.time_ns() - 2 * DAY_NS,) * 2)
    assert fp.data_fingerprint(rd.CIFAR10(str(root)), cache) != first
    assert digests == [batch]


def test_a_file_written_just_now_is_hashed_but_not_memoised(tmp_path, digests):
    """Racy mtimes: a rewrite of the same size within one mtime tick must not hit the memo."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_cifar10(root)
    fp.data_fingerprint(rd.CIFAR10(str(root)), cache)
    assert len(digests) == 6 and not (cache / fp.MEMO_FILE).exists()


def test_arrays_identify_embedded_and_synthetic_data():
    assert fp.data_fingerprint(Digits()) == fp.data_fingerprint(Digits())
    assert fp.data_fingerprint(Digits()) != fp.data_fingerprint(Digits(split_seed=1))
    small = SignalNoise(n_train=20, n_test=10)
    assert fp.data_fingerprint(small) != fp.data_fingerprint(SignalNoise(n_train=20, n_test=11))
    noisy = NoisyLabels(SignalNoise(n_train=20, n_test=10), 0.2)
    assert fp.data_fingerprint(noisy) != fp.data_fingerprint(small)


def test_an_unreadable_memo_costs_only_a_rehash(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_cifar10(root)
    _age(root)
    cache.mkdir()
    (cache / fp.MEMO_FILE).write_text("{not json")
    first = fp.data_fingerprint(rd.CIFAR10(str(root)), cache)
    assert first == fp.data_fingerprint(rd.CIFAR10(str(root)))
    assert len(json.loads((cache / fp.MEMO_FILE).read_text())) == 6
