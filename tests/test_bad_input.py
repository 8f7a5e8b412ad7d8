"""The bad-input catalogue (docs/errors.md): every user error the framework detects, one test
each. Config and data errors are raised by ``run()`` before any training (``train.py`` prints
them without a traceback and exits 2); Hydra's own errors (exit 1) are checked by composing.

Every row of the table in docs/errors.md has an id; a test keeps the table and the cases below
in step.
"""

from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from datamodules.errors import DataConfigError
from tests.conftest import ROOT, make_config, run_cli
from unlearning.config.errors import USER_ERRORS
from unlearning.pipeline import stages
from unlearning.pipeline.cache import CacheWriteError
from unlearning.pipeline.run import run

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")

# id: (overrides, key named in the message, excerpt of the message)
VALUE_ERRORS: dict[str, tuple[list[str], str, str]] = {
    "alpha-range": (["alpha=1.5"], "alpha", "[0.0, 1.0]"),
    "alpha-type": (["alpha=abc"], "alpha", "must be a number"),
    "rho-negative": (["rho=-1"], "rho", "positive"),
    "lr-zero": (["method.lr=0"], "method.lr", "positive"),
    "pretrain-lr-negative": (["pretrain.lr=-0.1"], "pretrain.lr", "positive"),
    "epochs-zero": (["method.epochs=0"], "method.epochs", "positive integer"),
    "epochs-fraction": (["pretrain.epochs=2.5"], "pretrain.epochs", "positive integer"),
    "batch-size-zero": (["method.batch_size=0"], "method.batch_size", "positive integer"),
    "scheduler-unknown": (["method.scheduler=linear"], "method.scheduler", "constant"),
    "sam-rho-zero": (["optim=sam", "optim.sharpness.rho=0"], "optim.sharpness", "> 0"),
    "mask-fraction-range": (
        ["method=minmax", "method.fraction=1.2"],
        "method.fraction",
        "(0, 1)",
    ),
    "method-argument": (["method=scrub", "method.kd_T=-1"], "method", "method.kd_T"),
    "method-target-import": (["method._target_=nowhere.Method"], "method._target_", "import"),
    "method-target-class": (
        ["method._target_=unlearning.models.SmallCNN"],
        "method._target_",
        "UnlearningMethod",
    ),
    "num-classes-mismatch": (["model.num_classes=5"], "model.num_classes", "10 classes"),
    "memorization-source": (["memorization.source=guess"], "memorization.source", "estimate"),
    "memorization-members": (["memorization.members=0"], "memorization.members", "positive"),
    "memorization-fraction": (["memorization.fraction=1.5"], "memorization.fraction", "(0, 1)"),
    "divergence-threshold": (
        ["divergence.max_abs_loss=-1"],
        "divergence.max_abs_loss",
        "positive",
    ),
    "divergence-lag": (["divergence.lag=-1"], "divergence.lag", "integer >= 0"),
    "forget-size-zero": (["split.size=0"], "split.size", "between 1 and 1437"),
    "forget-size-too-large": (["split.size=2000"], "split.size", "between 1 and 1437"),
    "test-fraction-range": (["dataset.test_fraction=1.5"], "dataset.test_fraction", "(0, 1)"),
    "label-noise-range": (["dataset.label_noise=1.5"], "dataset.label_noise", "[0, 1)"),
    "data-missing": (["dataset=cifar10", "model=resnet18"], "dataset.root", "cifar-10-batches-py"),
}
VALUE_PARAMS = [pytest.param(*v, id=k) for k, v in VALUE_ERRORS.items()]
VALUE_PARAMS.append(
    pytest.param(
        ["trainer=gpu"], "trainer.accelerator", "trainer=cpu", id="gpu-absent", marks=NO_GPU
    )
)

# id: (overrides, excerpt of Hydra's message); Hydra prints it and exits 1
HYDRA_ERRORS: dict[str, tuple[list[str], str]] = {
    "override-malformed": (["alpha=[0.9"], "no viable alternative"),
    "override-no-value": (["alpha"], "missing EQUAL"),
    "group-option-unknown": (["method=foo"], "method/foo"),
    "key-unknown": (["alpah=0.9"], "alpah"),
    "experiment-unknown": (["experiment=nope"], "experiment/nope"),
}

# the remaining cases need files on disk or a simulated failure: one test function each
SPECIAL = {
    "data-wrong-format",
    "score-file-missing",
    "score-file-wrong-length",
    "score-file-pickled",
    "cache-dir-not-writable",
    "disk-full",
}


def _expect(error: Exception, key: str, excerpt: str) -> None:
    assert isinstance(error, USER_ERRORS)
    assert error.key == key, error
    assert key in str(error) and excerpt in str(error), str(error)


@pytest.mark.parametrize(("overrides", "key", "excerpt"), VALUE_PARAMS)
def test_bad_values_fail_before_any_work_naming_key_and_value(tmp_path, overrides, key, excerpt):
    cfg = make_config(overrides, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(USER_ERRORS) as info:
        run(cfg)
    _expect(info.value, key, excerpt)
    bad_value = overrides[-1].split("=", 1)[1]
    assert bad_value in str(info.value) or key in ("dataset.root", "method"), "names the value"
    assert not (tmp_path / "cache").exists(), "nothing may be computed before the check"


@pytest.mark.parametrize(
    ("overrides", "excerpt"), [pytest.param(*v, id=k) for k, v in HYDRA_ERRORS.items()]
)
def test_hydra_rejects_malformed_overrides_unknown_options_and_keys(tmp_path, overrides, excerpt):
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        make_config(overrides, tmp_path / "run", tmp_path / "cache")
    assert excerpt in str(info.value)


def test_cli_hydra_error_exits_1_with_the_message_and_no_traceback(tmp_path):
    result = run_cli(["experiment=nope", f"paths.log_dir={tmp_path}"], tmp_path)
    assert result.returncode == 1
    assert "experiment/nope" in result.stderr and "cifar10_resnet18" in result.stderr
    assert "Traceback" not in result.stderr


def _cifar_root(tmp_path: Path, payload: object) -> Path:
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(payload))
    return folder.parent


def test_data_wrong_format(tmp_path):
    root = _cifar_root(tmp_path, ["not", "a", "dict"])
    cfg = make_config(
        ["dataset=cifar10", "model=resnet18", f"dataset.root={root}"], tmp_path, tmp_path / "c"
    )
    with pytest.raises(DataConfigError) as info:
        run(cfg)
    _expect(info.value, "dataset.root", "not a CIFAR batch")
    assert not (tmp_path / "c").exists()


def _score_cfg(tmp_path: Path, path: Path):
    overrides = ["split=mem_high", "memorization=file", f"memorization.path={path}"]
    return make_config(overrides, tmp_path / "run", tmp_path / "cache")


def test_score_file_missing(tmp_path):
    with pytest.raises(DataConfigError) as info:
        run(_score_cfg(tmp_path, tmp_path / "absent.npz"))
    _expect(info.value, "memorization.path", "no score file there")


def test_score_file_wrong_length(tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.zeros(10))
    with pytest.raises(DataConfigError) as info:
        run(_score_cfg(tmp_path, path))
    _expect(info.value, "memorization.path", "has 10 scores but the training set has 1438")
    assert not (tmp_path / "cache").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_score_file_pickled(tmp_path):
    """A score file with pickled objects is refused, never unpickled (it could run code)."""
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.array([_Exploit(tmp_path / "pwned")] * 1438, dtype=object))
    with pytest.raises(DataConfigError) as info:
        run(_score_cfg(tmp_path, path))
    _expect(info.value, "memorization.path", "allow_pickle=False")
    assert not (tmp_path / "pwned").exists()


def test_cache_dir_not_writable(tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = make_config([], tmp_path / "run", tmp_path / "a_file" / "cache")
    with pytest.raises(CacheWriteError) as info:
        run(cfg)
    _expect(info.value, "paths.cache_dir", "not a directory")


def test_disk_full(tmp_path, monkeypatch):
    """A full disk while a stage writes its entry: a clean error naming paths.cache_dir; the
    entry is absent and the stage's work directory is kept for the next run to resume."""

    def no_space(cfg, source, forget, train_set, work_dir):
        (work_dir / "checkpoints").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stages, "train_from_scratch", no_space)
    with pytest.raises(CacheWriteError) as info:
        run(make_config([], tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "paths.cache_dir", "No space left on device")
    (partial,) = (tmp_path / "cache" / "pretrain").glob("*.partial")
    assert (partial / "checkpoints").is_dir()
    assert not [p for p in (tmp_path / "cache" / "pretrain").iterdir() if p.suffix == ""]


def _catalogue_ids() -> set[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE))


def test_the_catalogue_and_the_tests_list_the_same_cases():
    tested = {*VALUE_ERRORS, "gpu-absent", *HYDRA_ERRORS, *SPECIAL}
    documented = _catalogue_ids()
    assert documented == tested, (documented - tested, tested - documented)
    assert len(documented) >= 25
    special_tests = {name[len("test_") :].replace("_", "-") for name in globals()}
    assert SPECIAL <= special_tests, SPECIAL - special_tests


SPECIAL.add("augment-impl-unknown")


def test_augment_impl_unknown(tmp_path):
    """A misspelt ``dataset.augment_impl`` stops the run before any work (no data needed)."""
    overrides = ["dataset=cifar10", "model=resnet18", "dataset.augment_impl=fast"]
    with pytest.raises(DataConfigError) as info:
        run(make_config(overrides, tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "dataset.augment_impl", "choose one of ['batched', 'per_sample']")
    assert "'fast'" in str(info.value)
    assert not (tmp_path / "cache").exists()


# `eval_batch_size` (issue #10): a positive integer or auto; one test over several bad values
SPECIAL.add("eval-batch-size")


@pytest.mark.parametrize("bad", ["0", "-8", "2.5", "big", "true"])
def test_eval_batch_size(tmp_path, bad):
    cfg = make_config([f"eval_batch_size={bad}"], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(USER_ERRORS) as info:
        run(cfg)
    _expect(info.value, "eval_batch_size", "positive integer or auto")
    assert f"eval_batch_size={cfg.eval_batch_size!r}" in str(info.value), "names the value"
    assert "eval_batch_size=1024" in str(info.value), "shows the fix"
    assert not (tmp_path / "cache").exists(), "nothing may be computed before the check"
