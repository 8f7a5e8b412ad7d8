"""Cache integrity (issue #8): manifests, detection of damaged entries, safe loading, a full disk
and four processes racing on a cold cache."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_config
from unlearning.pipeline import cache as cache_module
from unlearning.pipeline.cache import (
    MANIFEST_FILE,
    META_FILE,
    CacheWriteError,
    StageCache,
    verify_entry,
)
from unlearning.pipeline.resume import resume_from
from unlearning.pipeline.run import run


def _writer(payload: bytes = b"weights" * 100):
    calls: list[Path] = []

    def compute(work: Path) -> dict:
        calls.append(work)
        (work / "model.pt").write_bytes(payload)
        (work / "sub").mkdir(exist_ok=True)
        (work / "sub" / "indices.npy").write_bytes(b"\x01\x02")
        return {"n": 1}

    return compute, calls


def test_manifest_records_sizes_checksums_key_and_versions(tmp_path):
    compute, _ = _writer()
    entry = StageCache(tmp_path).get_or_compute("stage", {"a": 1}, compute)
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    assert manifest["key"] == entry.name and manifest["stage"] == "stage"
    assert set(manifest["files"]) == {"model.pt", "sub/indices.npy", META_FILE}
    assert manifest["files"]["model.pt"]["bytes"] == 700
    assert len(manifest["files"]["model.pt"]["sha256"]) == 64
    assert {"python", "torch", "lightning", "numpy"} <= set(manifest["versions"])
    assert verify_entry(entry, entry.name) is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda e: (e / "model.pt").write_bytes(b"weights" * 50), "truncated"),
        (lambda e: (e / "model.pt").write_bytes(b"WEIGHTS" * 100), "SHA-256"),
        (lambda e: (e / "sub" / "indices.npy").unlink(), "missing"),
        (lambda e: (e / MANIFEST_FILE).unlink(), "no manifest.json"),
        (lambda e: (e / MANIFEST_FILE).write_text("{not json"), "unreadable"),
    ],
    ids=["truncated", "altered", "file-missing", "no-manifest", "bad-manifest"],
)
def test_a_damaged_entry_is_reported_moved_aside_and_recomputed(tmp_path, caplog, damage, problem):
    cache, (compute, calls) = StageCache(tmp_path), _writer()
    entry = cache.get_or_compute("stage", {"a": 1}, compute)
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="unlearning.pipeline.cache"):
        again = cache.get_or_compute("stage", {"a": 1}, compute)
    assert again == entry and len(calls) == 2, "a damaged entry must be computed again"
    assert verify_entry(again, again.name) is None
    warning = caplog.text
    assert str(entry) in warning and "corrupt" in warning and problem in warning
    aside = list(tmp_path.glob("stage/*.corrupt-*"))
    assert len(aside) == 1, "the damaged entry is kept for inspection"


def test_truncated_pretrained_checkpoint_is_detected_and_recomputed_by_the_pipeline(
    tmp_path, caplog
):
    overrides = ["pretrain.epochs=1", "method.epochs=1", "trainer.limit_train_batches=3"]
    overrides += ["eval=none"]
    first = run(make_config(overrides, tmp_path / "one", tmp_path / "cache"))
    (model,) = (tmp_path / "cache" / "pretrain").glob("*/model.pt")
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with caplog.at_level(logging.INFO, logger="unlearning.pipeline.cache"):
        second = run(make_config(overrides, tmp_path / "two", tmp_path / "cache"))
    assert "[pretrain] cache entry" in caplog.text and "truncated" in caplog.text
    assert "[pretrain] computing" in caplog.text and "[oracle] cache hit" in caplog.text
    same = {k: v for k, v in first["metrics"].items() if not k.endswith("_s")}
    assert same == {k: v for k, v in second["metrics"].items() if not k.endswith("_s")}


def _race(root: str, out: str, barrier) -> None:
    def compute(work: Path) -> None:
        with open(out, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for every other process to queue on the lock
        (work / "artefact.bin").write_bytes(os.urandom(1000))

    barrier.wait()
    entry = StageCache(root).get_or_compute("stage", {"k": "v"}, compute)
    with open(out + ".entries", "a") as f:
        f.write(f"{entry}:{(entry / 'artefact.bin').read_bytes().hex()[:16]}\n")


def test_four_processes_on_a_cold_cache_compute_once_and_share_the_entry(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    out = str(tmp_path / "calls")
    jobs = [ctx.Process(target=_race, args=(str(tmp_path), out, barrier)) for _ in range(4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0, 0, 0]
    assert len(Path(out).read_text().split()) == 1, "exactly one process computes"
    entries = Path(out + ".entries").read_text().split()
    assert len(entries) == 4 and len(set(entries)) == 1, "all get the same entry"
    assert not list(tmp_path.glob("stage/*.partial")), "no partial directory is left"


def test_full_disk_while_computing_is_a_clean_error_and_the_next_run_resumes(tmp_path):
    cache = StageCache(tmp_path)

    def full(work: Path) -> None:
        (work / "checkpoint").write_text("epoch 3")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheWriteError) as info:
        cache.get_or_compute("stage", {"a": 1}, full)
    assert info.value.key == "paths.cache_dir" and "No space left" in str(info.value)
    assert ".partial" in str(info.value) and not cache.has("stage", {"a": 1})
    seen = {}

    def resume(work: Path) -> None:
        seen["checkpoint"] = (work / "checkpoint").read_text()

    entry = cache.get_or_compute("stage", {"a": 1}, resume)
    assert seen == {"checkpoint": "epoch 3"} and verify_entry(entry, entry.name) is None


def test_full_disk_while_writing_the_manifest_leaves_no_entry(tmp_path, monkeypatch):
    compute, calls = _writer()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "write_manifest", no_space)
    with pytest.raises(CacheWriteError):
        StageCache(tmp_path).get_or_compute("stage", {"a": 1}, compute)
    assert not StageCache(tmp_path).path("stage", {"a": 1}).exists()
    monkeypatch.undo()
    entry = StageCache(tmp_path).get_or_compute("stage", {"a": 1}, compute)
    assert verify_entry(entry, entry.name) is None and len(calls) == 2


def test_other_os_errors_are_not_disguised_as_user_errors(tmp_path):
    def broken(work: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as info:
        StageCache(tmp_path).get_or_compute("stage", {"a": 1}, broken)
    assert not isinstance(info.value, CacheWriteError)


class _Exploit:
    """Unpickling this would run ``Path.touch`` on the marker: a code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_deleted(tmp_path, caplog):
    marker, ckpt = tmp_path / "pwned", tmp_path / "latest.ckpt"
    ckpt.write_bytes(pickle.dumps({"epoch": 0, "payload": _Exploit(marker)}))
    with caplog.at_level(logging.WARNING, logger="unlearning.pipeline.resume"):
        assert resume_from(ckpt, "pretrain", max_epochs=3) is None
    assert not marker.exists(), "nothing in a cache directory may execute code"
    assert not ckpt.exists() and "unreadable" in caplog.text


def test_a_truncated_checkpoint_restarts_the_stage(tmp_path):
    ckpt = tmp_path / "latest.ckpt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(100)}}, ckpt)
    assert resume_from(ckpt, "oracle", max_epochs=3) == str(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    assert resume_from(ckpt, "oracle", max_epochs=3) is None and not ckpt.exists()


def test_a_checkpoint_of_the_last_epoch_is_not_resumed_when_not_allowed(tmp_path):
    ckpt = tmp_path / "latest.ckpt"
    torch.save({"epoch": 2}, ckpt)
    assert resume_from(ckpt, "unlearn", max_epochs=3, allow_last=False) is None


def test_score_arrays_are_loaded_without_pickle(tmp_path):
    from unlearning.memorization.estimator import load_score_file

    path = tmp_path / "scores.npz"
    np.savez(path, scores=np.array([_Exploit(tmp_path / "pwned")] * 3, dtype=object))
    with pytest.raises(ValueError):
        load_score_file(path, 3, key="scores")
    assert not (tmp_path / "pwned").exists()
