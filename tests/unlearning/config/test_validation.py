"""Bad input fails at start-up with a message naming the key, the value and what is allowed."""

import pytest
import torch

from datamodules.errors import DataConfigError
from tests.conftest import run_cli
from unlearning.config.errors import ConfigError
from unlearning.pipeline.run import run


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("alpha=1.5", "alpha", "[0.0, 1.0]"),
        ("alpha=-0.1", "alpha", "[0.0, 1.0]"),
        ("method.lr=-0.01", "method.lr", "positive"),
        ("method.lr=0", "method.lr", "positive"),
        ("pretrain.lr=0", "pretrain.lr", "positive"),
        ("method.epochs=0", "method.epochs", "positive integer"),
        ("pretrain.epochs=2.5", "pretrain.epochs", "positive integer"),
        ("pretrain.batch_size=0", "pretrain.batch_size", "positive integer"),
        ("method.scheduler=linear", "method.scheduler", "constant"),
        ("rho=-1", "rho", "positive"),
        ("model.num_classes=5", "model.num_classes", "10 classes"),
        ("method._target_=unlearning.models.SmallCNN", "method._target_", "UnlearningMethod"),
        ("method._target_=nowhere.Method", "method._target_", "cannot import"),
        pytest.param(
            "trainer=gpu",
            "trainer.accelerator",
            "trainer=cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(config, tmp_path, override, key, hint):
    with pytest.raises(ConfigError) as info:
        run(config(override, cache=tmp_path / "cache"))
    assert info.value.key == key
    assert key in str(info.value) and hint in str(info.value)
    assert not (tmp_path / "cache").exists(), "nothing may be computed before validation"


@pytest.mark.parametrize(
    ("size", "shown"), [("0", "0"), ("1438", "1438"), ("2000", "2000"), ("-0.1", "-0.1")]
)
def test_forget_size_of_zero_or_at_least_s_is_refused(config, tmp_path, size, shown):
    with pytest.raises(DataConfigError) as info:
        run(config(f"split.size={size}", cache=tmp_path / "cache"))
    assert info.value.key == "split.size"
    assert shown in str(info.value) and "between 1 and 1437" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_missing_real_dataset_fails_before_training_with_path_and_layout(config, tmp_path):
    with pytest.raises(DataConfigError) as info:
        run(config("dataset=cifar10", "model=resnet18", cache=tmp_path / "cache"))
    message = str(info.value)
    assert "dataset.root" in message and "cifar-10-batches-py" in message
    assert str(tmp_path / "run" / "data" / "cifar10") in message
    assert not (tmp_path / "cache").exists()


def test_cli_user_error_prints_one_message_without_traceback(tmp_path):
    result = run_cli(
        ["alpha=2", f"paths.cache_dir={tmp_path}", f"paths.log_dir={tmp_path}"], tmp_path
    )
    assert result.returncode == 2
    assert "alpha=2" in result.stderr and "[0.0, 1.0]" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_unknown_group_option_lists_the_available_ones(tmp_path):
    result = run_cli(["method=nonexistent", f"paths.log_dir={tmp_path}"], tmp_path)
    assert result.returncode != 0
    assert "method/nonexistent" in result.stderr
    assert "neggrad" in result.stderr and "finetune" in result.stderr  # the options are listed
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["optim=sam", "optim.sharpness.rho=0"], "optim.sharpness", "> 0"),
        (["optim=asam", "optim.sharpness.eta=-1"], "optim.sharpness", "eta"),
        (
            ["pretrain/optim=sam", "pretrain.optim.sharpness.rho=-0.1"],
            "pretrain.optim.sharpness",
            "> 0",
        ),
        (["method=minmax", "method.fraction=1.2"], "method.fraction", "(0, 1)"),
        (["method=minmax", "method.fraction=0"], "method.fraction", "(0, 1)"),
        (["method=minmax", "method.forget_rho=-1"], "method.forget_rho", "positive"),
    ],
)
def test_bad_optimizer_and_mask_settings_fail_at_start_up(config, tmp_path, overrides, key, hint):
    with pytest.raises(ConfigError) as info:
        run(config(*overrides, cache=tmp_path / "cache"))
    assert info.value.key == key and hint in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_cli_unknown_optimizer_lists_the_options(tmp_path):
    result = run_cli(["optim=adamw_sam", f"paths.log_dir={tmp_path}"], tmp_path)
    assert result.returncode != 0 and "optim/adamw_sam" in result.stderr
    assert all(name in result.stderr for name in ("sgd", "sam", "asam", "sharpmax"))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["method=scrub", "method.kd_T=-1"], "method.kd_T"),
        (["method=ugradsl", "method.smoothing=1.5"], "method.smoothing"),
        (["method=boundary_shrink", "method.epsilon=-0.1"], "method.epsilon"),
        (["method=l1sparse", "method.gamma=-1"], "method.gamma"),
        (["method=minmax", "method.forget_objective=minimize"], "method.forget_objective"),
    ],
)
def test_method_constructor_checks_run_before_any_training(config, tmp_path, overrides, named):
    with pytest.raises(ConfigError) as info:
        run(config(*overrides, cache=tmp_path / "cache"))
    assert info.value.key == "method" and named in str(info.value)
    assert not (tmp_path / "cache").exists()
