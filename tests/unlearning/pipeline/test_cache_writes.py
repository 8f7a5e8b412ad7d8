"""Trust in the cache (issue 19): a diverged pretraining is never an entry, every kind of failed
write (checkpoint, model, mask, metadata, manifest, score file, ``results.json``) is one user
error naming the file and what was written, with no entry left behind and a rerun that finishes
with the metrics of an uninterrupted job, and an entry that matches its manifest but does not
load is quarantined and recomputed."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from tests.conftest import make_config, run_cli
from unlearning.errors import DivergedStageError, WriteError
from unlearning.files import write_failure
from unlearning.outputs import results as results_module
from unlearning.pipeline import cache as cache_module
from unlearning.pipeline.cache import MANIFEST_FILE, StageCache, file_sha256, verify_entry
from unlearning.pipeline.run import run

TINY = ["pretrain.epochs=2", "method.epochs=2", "trainer.limit_train_batches=3"]
REAL_SAVE = torch.save


def _metrics(results: dict) -> dict:
    """Metrics without wall times, which differ from run to run."""
    return {k: v for k, v in results["metrics"].items() if not k.endswith("_s")}


def _entries(cache: Path, stage: str) -> list[Path]:
    """The finished entries of ``stage`` (not ``.partial``, ``.lock`` or ``.corrupt-*``)."""
    where = cache / stage
    return (
        [p for p in where.iterdir() if p.is_dir() and "." not in p.name] if where.is_dir() else []
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Metrics of uninterrupted jobs (default method, and minmax, which uses the mask stage)."""
    root = tmp_path_factory.mktemp("reference")
    return {
        method: _metrics(run(make_config([*TINY, f"method={method}"], root / method, root / "c")))
        for method in ("neggrad", "minmax")
    }


# -- item 2: a diverged pretraining or oracle is never an entry --------------------------------


def test_a_diverged_pretraining_is_a_one_line_error_and_never_cached(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DivergedStageError) as info:
        run(make_config([*TINY, "pretrain.lr=1e30"], tmp_path / "bad", cache))
    error = info.value
    assert error.key == "pretrain.lr" and error.stage == "pretrain" and error.step >= 1
    message = str(error)
    assert message.startswith("pretrain.lr=1e+30: must") and "\n" not in message
    assert f"at step {error.step}" in message and "nothing was cached" in message
    assert _entries(cache, "pretrain") == [], "a broken model must not become an entry"
    (partial,) = (cache / "pretrain").glob("*.partial")
    assert not (partial / "checkpoints").exists(), "nothing to resume a broken fit from"
    assert not (partial / "model.pt").exists()
    # a sane value (another key) computes as usual
    ok = run(make_config(TINY, tmp_path / "good", cache))
    assert ok["status"] == "ok" and len(_entries(cache, "pretrain")) == 1


def test_the_unlearning_stage_still_reports_a_divergence_as_a_result(tmp_path):
    done = run(make_config([*TINY, "method=neggrad", "method.lr=1e30"], tmp_path / "r", tmp_path))
    assert done["status"] == "diverged"


@pytest.mark.slow  # CLI start-up; test_a_diverged_pretraining_is_a_one_line_error_… runs in-process
def test_the_command_line_exits_2_with_one_line_for_a_diverged_pretraining(tmp_path):
    """The one CLI case (~12 s, mostly start-up): exit status 2 and the one line, as a user sees
    them."""
    args = [
        *TINY,
        "pretrain.lr=1e30",
        "trainer.enable_progress_bar=false",
        "eval=none",
        "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = run_cli(args, tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: pretrain.lr=1e+30: must let the pretrain stage")
    assert "Traceback" not in done.stderr
    assert _entries(tmp_path / "cache", "pretrain") == []


# -- item 5: writes fail cleanly -----------------------------------------------------------------


def _torch_disk_full(obj, path, *args, **kwargs):
    """What ``torch.save`` raises when the disk fills: its zip writer's ``RuntimeError``
    (produced for real by writing to ``/dev/full``)."""
    REAL_SAVE(obj, "/dev/full")


def _failing_torch_save(name: str):
    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).name == name:
            _torch_disk_full(obj, f)
        return REAL_SAVE(obj, f, *args, **kwargs)

    return save


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _second_checkpoint_fails(monkeypatch):
    """The second epoch's checkpoint hits a full disk: the first one stays for the resume."""
    real, calls = Trainer.save_checkpoint, []

    def save(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 2:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real(self, filepath, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("point", "method", "stage", "what", "key"),
    [
        ("checkpoint", "neggrad", "pretrain", "the pretrain stage's checkpoint", "paths.cache_dir"),
        ("model", "neggrad", "pretrain", "the pretrain stage's model", "paths.cache_dir"),
        ("mask", "minmax", "mask", "the forget mask", "paths.cache_dir"),
        ("meta", "neggrad", "split", "the split entry's metadata", "paths.cache_dir"),
        ("manifest", "neggrad", "pretrain", "the pretrain entry's manifest", "paths.cache_dir"),
        ("results", "neggrad", None, "the job's results", "hydra.run.dir"),
    ],
)
def test_a_failed_write_is_one_line_leaves_no_entry_and_a_rerun_finishes(
    tmp_path, monkeypatch, caplog, reference, point, method, stage, what, key
):
    if point == "checkpoint":
        _second_checkpoint_fails(monkeypatch)
    elif point == "model":
        monkeypatch.setattr(torch, "save", _failing_torch_save("model.pt"))
    elif point == "mask":
        monkeypatch.setattr(torch, "save", _failing_torch_save("forget_mask.pt"))
    elif point == "meta":
        real = cache_module.atomic_write_text

        def meta(path, text):
            if "/split/" in str(path):
                _no_space()
            real(path, text)

        monkeypatch.setattr(cache_module, "atomic_write_text", meta)
    elif point == "manifest":
        monkeypatch.setattr(cache_module, "write_manifest", _no_space)
    else:  # a read-only output folder

        def read_only(path, text):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(results_module, "atomic_write_text", read_only)
    cache, out = tmp_path / "cache", tmp_path / "run"
    cfg = make_config([*TINY, f"method={method}"], out, cache)
    with pytest.raises(WriteError) as info:
        run(cfg)
    error = info.value
    message = f"{error.key}={error.value!r}: {error.fix}"
    assert str(error) == message and "\n" not in message
    assert error.key == key and error.what == what
    assert what in message and error.path in message and "free space" in message
    if stage is not None:
        work = [p for p in Path(error.path).parents if p.name.endswith(".partial")]
        assert work and work[0].parent.name == stage, error.path
        assert _entries(cache, stage) == [], "nothing partial becomes an entry"
    assert not (out / "results.json").exists()
    assert not [p for p in out.rglob("*.tmp")] and not [p for p in cache.rglob("*.tmp")]
    monkeypatch.undo()  # space freed: the same job resumes and ends as an uninterrupted one
    with caplog.at_level(logging.INFO):
        assert _metrics(run(cfg)) == reference[method]
    if point == "checkpoint":  # the first epoch's checkpoint was written: the rerun resumes
        assert "[pretrain] resuming from" in caplog.text


def test_a_full_disk_while_saving_a_score_file_names_the_work_directory(tmp_path, monkeypatch):
    """A stage whose writer is not wrapped (numpy's ``savez`` of a score file) still ends as one
    error naming the entry's work directory, and the next run computes the entry."""

    def scores(work: Path) -> None:
        np.savez(work / "scores.npz", scores=np.zeros(3))

    monkeypatch.setattr(np, "savez", _no_space)
    cache = StageCache(tmp_path)
    with pytest.raises(WriteError) as info:
        cache.get_or_compute("memorization", {"a": 1}, scores)
    assert info.value.key == "paths.cache_dir" and info.value.what == "the memorization entry"
    assert info.value.path.endswith(".partial") and "No space left" in str(info.value)
    monkeypatch.undo()
    entry = cache.get_or_compute("memorization", {"a": 1}, scores)
    assert verify_entry(entry, entry.name) is None


def test_write_failures_are_told_from_other_errors():
    assert write_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert write_failure(OSError(errno.EROFS, "Read-only file system"))
    try:
        REAL_SAVE({"w": torch.ones(10_000)}, "/dev/full")
    except RuntimeError as exc:  # PyTorch's own message for a full disk
        assert write_failure(exc)
    assert write_failure(OSError(errno.EIO, "Input/output error")) is None
    assert write_failure(RuntimeError("PytorchStreamReader failed reading zip archive")) is None
    assert write_failure(ValueError("No space left")) is None


# -- item 7: an entry that does not load is quarantined ----------------------------------------


class _Payload:
    """Unpickling this would touch the marker: a code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite_manifest(entry: Path, name: str) -> None:
    """Make the manifest vouch for the tampered file (its checksum passes)."""
    manifest = json.loads((entry / MANIFEST_FILE).read_text())
    path = entry / name
    manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    (entry / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_an_entry_that_passes_its_checksum_but_does_not_load_is_quarantined(
    tmp_path, caplog, reference
):
    cache = tmp_path / "cache"
    run(make_config(TINY, tmp_path / "one", cache))
    (entry,) = _entries(cache, "pretrain")
    marker = tmp_path / "pwned"
    (entry / "model.pt").write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    _rewrite_manifest(entry, "model.pt")
    assert verify_entry(entry, entry.name) is None, "the checksum alone cannot tell"
    with caplog.at_level(logging.INFO, logger="unlearning.pipeline.cache"):
        again = run(make_config(TINY, tmp_path / "two", cache))
    assert not marker.exists(), "nothing in the cache may execute code"
    text = caplog.text
    assert "[pretrain] cache entry" in text and "model.pt does not load" in text
    assert "UnpicklingError" in text and "[pretrain] computing" in text
    assert len(list((cache / "pretrain").glob(f"{entry.name}.corrupt-*"))) == 1
    assert _metrics(again) == reference["neggrad"]


@pytest.mark.parametrize(
    ("name", "content"),
    [("forget.npy", b"\x93NUMPY not an array"), ("cache_meta.json", b"{half")],
    ids=["npy", "json"],
)
def test_unloadable_arrays_and_metadata_are_quarantined(tmp_path, caplog, name, content):
    def compute(work: Path) -> None:
        np.save(work / "forget.npy", np.arange(3))

    cache = StageCache(tmp_path)
    entry = cache.get_or_compute("split", {"a": 1}, compute)
    (entry / name).write_bytes(content)
    _rewrite_manifest(entry, name)
    with caplog.at_level(logging.WARNING, logger="unlearning.pipeline.cache"):
        again = cache.get_or_compute("split", {"a": 1}, compute)
    assert f"{name} does not load" in caplog.text and "\n" not in caplog.records[0].getMessage()
    assert np.load(again / "forget.npy").tolist() == [0, 1, 2]
    assert len(list(tmp_path.glob("split/*.corrupt-*"))) == 1


def test_a_diverged_oracle_names_its_stage_and_saves_no_model(tmp_path):
    from datamodules.sources import build_source
    from unlearning.pipeline import stages

    cfg = make_config([*TINY, "pretrain.lr=1e30"], tmp_path / "run", tmp_path / "cache")
    source = build_source(cfg.dataset)
    with pytest.raises(DivergedStageError) as info:
        stages.train_from_scratch(cfg, source, np.arange(10), "retain", tmp_path)
    assert info.value.stage == "oracle" and "the oracle stage" in str(info.value)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "checkpoints").exists()


def test_a_failed_text_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from unlearning.files import atomic_write_text, writing

    real = Path.write_text

    def half(self, text, *args, **kwargs):
        real(self, text[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)
    target = tmp_path / "results.json"
    with pytest.raises(WriteError) as info, writing(target, "the job's results", "hydra.run.dir"):
        atomic_write_text(target, '{"status": "ok"}')
    assert info.value.path == str(target) and info.value.key == "hydra.run.dir"
    assert list(tmp_path.iterdir()) == [], "neither the file nor a temporary one is left"
