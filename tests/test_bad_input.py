"""The bad-input catalogue (docs/errors.md): user errors of every kind, each failing before any
work. Config and data errors are raised by ``run()`` before any stage (``train.py`` prints them
without a traceback and exits 2); Hydra's own errors (exit 1) are checked by composing. A few
cases run ``python train.py`` as a user would.

Every row of the catalogue in docs/errors.md has an id; a test keeps the table and the cases
below in step.
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

from datamodules.errors import DataConfigError, DatasetNotFoundError
from tests.conftest import ROOT, make_config, run_cli
from unlearning.errors import USER_ERRORS, ConfigError
from unlearning.pipeline import stages
from unlearning.pipeline.cache import CacheWriteError
from unlearning.pipeline.run import run

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
#: the one message shape: ``<key>=<value>: <what is allowed>``
SHAPE = re.compile(r"^[\w./]+=.+: .+")

# id: (overrides, key named in the message, excerpt of the message)
VALUE_ERRORS: dict[str, tuple[list[str], str, str]] = {
    # numbers: finite, in range
    "alpha-range": (["alpha=1.5"], "alpha", "a number in [0, 1]"),
    "alpha-type": (["alpha=abc"], "alpha", "a number in [0, 1]"),
    "rho-negative": (["rho=-1"], "rho", "positive finite number"),
    "rho-infinite": (["rho=inf", "optim=sgd"], "rho", "positive finite number"),
    "lr-zero": (["method.lr=0"], "method.lr", "positive finite number"),
    "lr-nan": (["method.lr=nan"], "method.lr", "positive finite number"),
    "pretrain-lr-negative": (["pretrain.lr=-0.1"], "pretrain.lr", "positive finite number"),
    "epochs-zero": (["method.epochs=0"], "method.epochs", "positive integer"),
    "epochs-fraction": (["pretrain.epochs=2.5"], "pretrain.epochs", "positive integer"),
    "batch-size-zero": (["method.batch_size=0"], "method.batch_size", "positive integer"),
    "sam-rho-zero": (
        ["optim=sam", "optim.sharpness.rho=0"],
        "optim.sharpness.rho",
        "positive finite number",
    ),
    "mask-fraction-range": (["method=minmax", "method.fraction=1.2"], "method.fraction", "(0, 1)"),
    "divergence-threshold": (["divergence.max_abs_loss=-1"], "divergence.max_abs_loss", "positive"),
    "divergence-lag": (["divergence.lag=-1"], "divergence.lag", "integer ≥ 0"),
    "num-workers": (["num_workers=-1"], "num_workers", "integer ≥ 0"),
    "test-fraction-range": (["dataset.test_fraction=1.5"], "dataset.test_fraction", "(0, 1)"),
    "label-noise-range": (["dataset.label_noise=1.5"], "dataset.label_noise", "[0, 1)"),
    "forget-size-zero": (["split.size=0"], "split.size", "positive finite number"),
    "forget-size-too-large": (["split.size=2000"], "split.size", "between 1 and 1437"),
    # seeds of every stage: integers in [0, 2**32 - 1]
    "seed-text": (["seed=abc"], "seed", "an integer in [0, 4294967295]"),
    "seed-float": (["seed=1.5"], "seed", "an integer in [0, 4294967295]"),
    "pretrain-seed-text": (["pretrain.seed=abc"], "pretrain.seed", "integer in [0, 4294967295]"),
    "split-seed-float": (["split.seed=0.5"], "split.seed", "integer in [0, 4294967295]"),
    "eval-seed-negative": (["eval.seed=-1"], "eval.seed", "integer in [0, 4294967295]"),
    "memorization-seed-text": (["memorization.seed=abc"], "memorization.seed", "integer in"),
    "dataset-seed-text": (["dataset.split_seed=abc"], "dataset.split_seed", "integer in"),
    "lab-seed-text": (
        ["experiment=theory/stability_frontier", "lab.seed=abc"],
        "lab.seed",
        "integer in",
    ),
    "lab-seeds-float": (
        ["experiment=theory/signal_noise", "lab.seeds=[0,1.5]"],
        "lab.seeds",
        "list of integers",
    ),
    # booleans: true or false, never a string
    "boolean-string": (["channels_last=yes"], "channels_last", "true or false"),
    "trainer-boolean": (
        ["trainer.enable_progress_bar=maybe"],
        "trainer.enable_progress_bar",
        "true or false",
    ),
    "eval-enabled-boolean": (["eval.features.enabled=maybe"], "eval.features.enabled", "true or"),
    "landscape-plots-boolean": (["eval.landscape.plots=1"], "eval.landscape.plots", "true or"),
    "split-boolean": (["split.stratified=yes"], "split.stratified", "true or false"),
    # choices
    "scheduler-unknown": (["method.scheduler=linear"], "method.scheduler", "constant"),
    "memorization-source": (["memorization.source=guess"], "memorization.source", "estimate"),
    "split-name-unknown": (["split.name=foo"], "split.name", "one of ['random'"),
    "trainer-precision": (["trainer.precision=8"], "trainer.precision", "bf16-mixed"),
    "trainer-accelerator": (["trainer.accelerator=tpu"], "trainer.accelerator", "one of"),
    "eval-sets": (["eval.landscape.sets=[test,validation]"], "eval.landscape.sets", "retain"),
    # integers of the memorization and trainer groups
    "memorization-members": (["memorization.members=0"], "memorization.members", "positive"),
    "memorization-members-float": (
        ["memorization.members=2.5"],
        "memorization.members",
        "positive integer",
    ),
    "memorization-threads": (["memorization.threads=two"], "memorization.threads", "or null"),
    "memorization-fraction": (["memorization.fraction=1.5"], "memorization.fraction", "(0, 1)"),
    "trainer-devices": (["trainer.devices=abc"], "trainer.devices", "positive integer, -1"),
    "trainer-devices-list-on-cpu": (["trainer.devices=[0]"], "trainer.devices", "processes"),
    "trainer-num-nodes": (["+trainer.num_nodes=0"], "trainer.num_nodes", "positive integer"),
    "batch-limit": (
        ["trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches",
        "an integer ≥ 0 (batches) or a number in [0, 1]",
    ),
    "fp16-on-cpu": (["trainer.precision=16-mixed"], "trainer.precision", "bf16-mixed"),
    # the evaluation suite's bounds
    "eval-max-samples": (["eval.mia.max_samples=0"], "eval.mia.max_samples", "positive integer"),
    "eval-klom-models": (["eval.klom.models=1"], "eval.klom.models", "integer ≥ 2"),
    "eval-landscape-steps": (["eval.landscape.steps_2d=2"], "eval.landscape.steps_2d", "≥ 3"),
    "eval-landscape-radius": (["eval.landscape.radius=0"], "eval.landscape.radius", "(0, 100]"),
    "eval-hessian-tol": (["eval.hessian.tol=-1"], "eval.hessian.tol", "(0, 1]"),
    "eval-entanglement-p": (["eval.entanglement.p=0.5"], "eval.entanglement.p", "[1, 10]"),
    "eval-klom-percentile": (["eval.klom.percentile=120"], "eval.klom.percentile", "[0, 100]"),
    "eval-batch-size": (["eval_batch_size=big"], "eval_batch_size", "positive integer or auto"),
    # model and dataset that cannot work together
    "num-classes-mismatch": (["model.num_classes=5"], "model.num_classes", "10 (the classes of"),
    "channels-mismatch": (["model.in_channels=3"], "model.in_channels", "1 (the channels of"),
    "model-width": (["model.width=0"], "model.width", "positive integer"),
    "model-input-shape": (
        ["dataset=signal_noise", "model=two_layer_cnn", "model.dim=100"],
        "model",
        "inputs of shape [1, 200, 200]",
    ),
    "interpolation-unresolved": (["model=two_layer_cnn"], "model.dim", "resolves"),
    "split-label-range": (["split=class", "split.label=10"], "split.label", "[0, 9]"),
    "group-split-dataset": (["split=group"], "split.name", "sub-classes"),
    # unknown keys and targets
    "key-added-top-level": (["+foo=1"], "foo", "keys the config knows"),
    "key-added-plain-node": (["+pretrain.foo=1"], "pretrain.foo", "keys pretrain knows"),
    "key-added-to-target": (["+method.foo=1"], "method.foo", "NegGrad knows"),
    "key-added-misspelt": (["+trainer.max_epoch=3"], "trainer.max_epoch", "did you mean"),
    "key-not-taken-by-target": (["+dataset.hflip=true"], "dataset.hflip", "Digits knows"),
    "method-argument": (["method=scrub", "method.kd_T=-1"], "method.kd_T", "(0, inf)"),
    "method-target-import": (["method._target_=nowhere.Method"], "method._target_", "import"),
    "method-target-class": (
        ["method._target_=unlearning.models.SmallCNN"],
        "method._target_",
        "UnlearningMethod",
    ),
    "callback-target-class": (
        ["+callbacks.lr._target_=torch.optim.SGD"],
        "callbacks.lr._target_",
        "Callback",
    ),
    "callback-needs-a-logger": (
        ["callbacks=lr_monitor", "logger=none"],
        "callbacks.lr_monitor",
        "logger=csv",
    ),
    # the optimized metric
    "optimized-metric-unknown": (["optimized_metric=nope"], "optimized_metric", "docs/results"),
    "optimized-metric-test": (["optimized_metric=tow"], "optimized_metric", "tow_val"),
    "validation-fraction": (["validation.fraction=1.5"], "validation.fraction", "(0, 1)"),
    "mia-variant": (["eval.mia.variant=loss"], "eval.mia.variant", "confidence"),
    "optimized-metric-disabled": (
        ["optimized_metric=klom/forget"],
        "optimized_metric",
        "eval.klom.enabled=true",
    ),
    # directories (checked without creating anything)
    "cache-dir-null": (["paths.cache_dir=null"], "paths.cache_dir", "can be written"),
    "cache-dir-empty": (["paths.cache_dir=''"], "paths.cache_dir", "can be written"),
    "log-dir-null": (["paths.log_dir=null"], "paths.log_dir", "can be written"),
    # data on disk
    "data-missing": (["dataset=cifar10", "model=resnet18"], "dataset.root", "cifar-10-batches-py"),
    # issue 19: data (empty sets, named by the key that emptied them)
    "test-set-empty": (["dataset.test_fraction=0.001"], "dataset.test_fraction", "test part"),
    "train-set-empty": (["dataset.test_fraction=0.999"], "dataset.test_fraction", "train part"),
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

# the remaining cases need files on disk, a simulated failure or the command line: one test each
SPECIAL = {
    "data-wrong-format",
    "score-file-missing",
    "score-file-truncated",
    "score-file-npy",
    "score-file-wrong-length",
    "score-file-pickled",
    "cache-dir-not-writable",
    "cache-dir-virtual-fs",
    "output-dir-file",
    "run-dir-not-writable",
    "disk-full",
    "augment-impl-unknown",
    # issue 19: data
    "data-test-part-broken",
    "score-file-infinite",
    "score-file-too-few-finite",
}


def _expect(error: Exception, key: str, excerpt: str) -> None:
    assert isinstance(error, USER_ERRORS)
    assert error.key == key, error
    assert key in str(error) and excerpt in str(error), str(error)
    assert SHAPE.match(str(error)), "key=value: what is allowed"
    if not isinstance(error, DatasetNotFoundError):  # that one shows the expected layout
        assert "\n" not in str(error), "one line"


@pytest.mark.parametrize(("overrides", "key", "excerpt"), VALUE_PARAMS)
def test_bad_values_fail_before_any_work_naming_key_and_value(tmp_path, overrides, key, excerpt):
    cfg = make_config(overrides, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(USER_ERRORS) as info:
        run(cfg)
    _expect(info.value, key, excerpt)
    assert str(info.value).startswith(f"{key}="), "names the key and its value"
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


# ---------------------------------------------------------------------- files on disk


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


def _score_error(tmp_path: Path, path: Path) -> Exception:
    with pytest.raises(USER_ERRORS) as info:
        run(_score_cfg(tmp_path, path))
    assert not (tmp_path / "cache").exists()
    return info.value


def test_score_file_missing(tmp_path):
    error = _score_error(tmp_path, tmp_path / "absent.npz")
    _expect(error, "memorization.path", "no score file there")


def test_score_file_truncated(tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.zeros(1438))
    path.write_bytes(path.read_bytes()[:200])
    _expect(_score_error(tmp_path, path), "memorization.path", "unreadable")


def test_score_file_npy(tmp_path):
    """A bare ``.npy`` array has no named arrays: refused, naming the key it should hold."""
    path = tmp_path / "scores.npy"
    np.save(path, np.zeros(1438))
    _expect(_score_error(tmp_path, path), "memorization.path", "not a .npz archive")


def test_score_file_wrong_length(tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.zeros(10))
    error = _score_error(tmp_path, path)
    assert isinstance(error, DataConfigError)
    _expect(error, "memorization.path", "has 10 scores but the training set has 1438")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_score_file_pickled(tmp_path):
    """A score file with pickled objects is refused, never unpickled (it could run code)."""
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.array([_Exploit(tmp_path / "pwned")] * 1438, dtype=object))
    _expect(_score_error(tmp_path, path), "memorization.path", "allow_pickle=False")
    assert not (tmp_path / "pwned").exists()


def test_cache_dir_not_writable(tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = make_config([], tmp_path / "run", tmp_path / "a_file" / "cache")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    _expect(info.value, "paths.cache_dir", "a_file is not a directory")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc here")
def test_cache_dir_virtual_fs(tmp_path):
    """/proc accepts no directories, not even root's: refused up front, not by mkdir."""
    cfg = make_config([], tmp_path / "run", Path("/proc/unlearning-cache"))
    with pytest.raises(ConfigError) as info:
        run(cfg)
    _expect(info.value, "paths.cache_dir", "virtual file system")


def test_output_dir_file(tmp_path):
    (tmp_path / "taken").write_text("")
    cfg = make_config([], tmp_path / "taken", tmp_path / "cache")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    _expect(info.value, "paths.output_dir", "taken is not a directory")
    assert not (tmp_path / "cache").exists()


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


def test_augment_impl_unknown(tmp_path):
    """A misspelt ``dataset.augment_impl`` stops the run before any work (no data needed)."""
    overrides = ["dataset=cifar10", "model=resnet18", "dataset.augment_impl=fast"]
    with pytest.raises(ConfigError) as info:
        run(make_config(overrides, tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "dataset.augment_impl", "one of ['batched', 'per_sample']")
    assert "'fast'" in str(info.value)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------- as a user would


def _cli_error(tmp_path: Path, *overrides: str) -> str:
    """Run ``train.py`` with ``overrides``; assert exit 2, one ``error:`` line on stderr, no
    traceback and no cache entry; return the message."""
    cache = tmp_path / "cache"
    args = [f"paths.cache_dir={cache}", f"paths.log_dir={tmp_path / 'logs'}", *overrides]
    result = run_cli([*args, "trainer.enable_progress_bar=false"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert not cache.exists(), "no stage may run before the check"
    return lines[0].removeprefix("error: ")


def test_cli_seed_as_text_fails_at_start_up(tmp_path):
    assert _cli_error(tmp_path, "seed=abc").startswith("seed='abc': must be an integer")


@pytest.mark.slow  # a whole sweep or CLI start-up; the default suite keeps one of its kind
def test_cli_key_added_with_plus_fails_at_start_up(tmp_path):
    assert _cli_error(tmp_path, "+foo=1").startswith("foo=1: must be one of the keys")


def test_run_dir_not_writable(tmp_path):
    """``hydra.run.dir`` below a regular file: refused before Hydra's mkdir fails."""
    (tmp_path / "a_file").write_text("")
    message = _cli_error(tmp_path, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}")
    assert message.startswith("hydra.run.dir=") and "a_file is not a directory" in message


# issue 19: writes -------------------------------------------------------------------------
# a failed write of any kind is one line naming the file; a diverged pretraining is never cached

SPECIAL |= {"write-model-disk-full", "write-results-read-only", "pretrain-diverged"}
TINY_JOB = ["pretrain.epochs=1", "method.epochs=1", "trainer.limit_train_batches=2"]


def test_write_model_disk_full(tmp_path, monkeypatch):
    """PyTorch's zip writer reports a full disk as a ``RuntimeError`` (real, via /dev/full): one
    line naming the model file, not a traceback; no pretrain entry."""
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        if str(f).endswith("model.pt"):
            return real_save(obj, "/dev/full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ConfigError) as info:
        run(make_config(TINY_JOB, tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "paths.cache_dir", "writing the pretrain stage's model failed")
    assert "model.pt" in str(info.value) and "full disk" in str(info.value)
    assert not list((tmp_path / "cache" / "pretrain").glob("*/manifest.json"))


def test_write_results_read_only(tmp_path, monkeypatch):
    """``results.json`` in a folder that turned read-only: one line naming it."""

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("unlearning.outputs.results.atomic_write_text", read_only)
    with pytest.raises(ConfigError) as info:
        run(make_config(TINY_JOB, tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "hydra.run.dir", "writing the job's results failed: Read-only")
    assert str(tmp_path / "run" / "results.json") in str(info.value)


def test_pretrain_diverged(tmp_path):
    """``pretrain.lr=1e30``: the loss turns non-finite; the stage stops, nothing is cached."""
    with pytest.raises(ConfigError) as info:
        run(make_config([*TINY_JOB, "pretrain.lr=1e30"], tmp_path / "run", tmp_path / "cache"))
    _expect(info.value, "pretrain.lr", "must let the pretrain stage train to finite weights")
    assert not list((tmp_path / "cache" / "pretrain").glob("*/manifest.json"))


# ---------------------------------------------------------------------- the catalogue


def _catalogue_ids() -> set[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE))


def test_the_catalogue_and_the_tests_list_the_same_cases():
    tested = {*VALUE_ERRORS, "gpu-absent", *HYDRA_ERRORS, *SPECIAL}
    documented = _catalogue_ids()
    assert documented == tested, (documented - tested, tested - documented)
    assert len(documented) >= 90
    special_tests = {name[len("test_") :].replace("_", "-") for name in globals()}
    assert SPECIAL <= special_tests, SPECIAL - special_tests


# ---------------------------------------------------------------------- issue 19: paths
# issue 19: paths. An empty path is refused at start-up, never read as "the working directory"
# (Path("") is "."): the rule table's WRITABLE_DIR and TEXT kinds, the launcher check for the
# directories Hydra makes. Written as users type them (`key=`, which Hydra reads as '').
EMPTY_PATHS: dict[str, tuple[list[str], str, str]] = {
    "log-dir-empty": (["paths.log_dir="], "paths.log_dir", "can be written"),
    "output-dir-empty": (["paths.output_dir="], "paths.output_dir", "can be written"),
    "data-dir-empty": (["paths.data_dir="], "paths.data_dir", "non-empty string"),
    "dataset-root-empty": (
        ["dataset=cifar10", "model=resnet18", "dataset.root="],
        "dataset.root",
        "non-empty string",
    ),
    "score-file-path-empty": (
        ["split=mem_high", "memorization=file", "memorization.path="],
        "memorization.path",
        "non-empty string",
    ),
}
VALUE_ERRORS.update(EMPTY_PATHS)
SPECIAL |= {"run-dir-empty", "sweep-subdir-empty"}


@pytest.mark.parametrize(
    ("overrides", "key", "excerpt"), [pytest.param(*v, id=k) for k, v in EMPTY_PATHS.items()]
)
def test_empty_paths_fail_before_any_work(tmp_path, overrides, key, excerpt):
    test_bad_values_fail_before_any_work_naming_key_and_value(tmp_path, overrides, key, excerpt)


@pytest.mark.slow  # a CLI start-up; test_run_dir_not_writable keeps one of its kind by default
def test_run_dir_empty(tmp_path):
    """``hydra.run.dir=`` (reachable only from the CLI): refused before Hydra writes anything
    into the working directory."""
    message = _cli_error(tmp_path, "hydra.run.dir=")
    assert message.startswith("hydra.run.dir='': must be a directory that can be written")
    assert not (tmp_path / ".hydra").exists() and not list(tmp_path.iterdir())


def test_sweep_subdir_empty(tmp_path, capsys):
    """``-m hydra.sweep.subdir=``: every job would write into the sweep directory itself, each
    overwriting the last one's results.json; refused when the sweep starts (in-process: the
    launcher check that Hydra calls before the first job)."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from unlearning.config.sweep import LauncherCheck

    def start(*overrides: str) -> None:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(
                "config",
                overrides=[f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                return_hydra_config=True,
            )
        LauncherCheck().on_multirun_start(cfg)

    start()  # the default subdir passes
    for blank in ("hydra.sweep.subdir=", "hydra.sweep.subdir=' '"):
        with pytest.raises(SystemExit) as info:
            start(blank)
        assert info.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: hydra.sweep.subdir=") and "overwriting" in line, line
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------- issue 19: data


def test_data_test_part_broken(tmp_path):
    """A broken ``test_batch`` (the train batches intact) fails at start-up, not at the
    evaluation after pretraining and the oracle."""
    root = _cifar_root(tmp_path, {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"truncated")
    cfg = make_config(
        ["dataset=cifar10", "model=resnet18", f"dataset.root={root}"], tmp_path, tmp_path / "c"
    )
    with pytest.raises(DataConfigError) as info:
        run(cfg)
    _expect(info.value, "dataset.root", "not a readable CIFAR batch")
    assert "test_batch" in str(info.value)
    assert not (tmp_path / "c").exists(), "nothing trained or cached"


def test_score_file_infinite(tmp_path):
    path = tmp_path / "scores.npz"
    scores = np.linspace(0, 1, 1438)
    scores[7] = np.inf
    np.savez(path, tr_mem=scores)
    _expect(_score_error(tmp_path, path), "memorization.path", "1 of its 1438 scores are infinite")


def test_score_file_too_few_finite(tmp_path):
    """NaN marks an undefined score (never chosen): too few defined ones for |F| fail at
    start-up instead of in the split stage, after pretraining."""
    path = tmp_path / "scores.npz"
    scores = np.full(1438, np.nan)
    scores[:5] = 0.5
    np.savez(path, tr_mem=scores)
    _expect(_score_error(tmp_path, path), "memorization.path", "finite scores for split.size")
