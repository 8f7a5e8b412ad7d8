"""The validation layer as a whole: every shipped preset passes it, a bad value fails it before
any work with one message naming the key, and constructors are built once to surface their own
checks (the catalogue of bad inputs is tests/test_bad_input.py)."""

from __future__ import annotations

import pytest

from tests.conftest import CONF
from unlearning.config.rules import check_keys
from unlearning.config.validation import LAB_RULES, PIPELINE_RULES, validate_config
from unlearning.errors import ConfigError
from unlearning.pipeline.run import run

#: presets that only compose next to another choice
CONTEXT = {
    ("model", "two_layer_cnn"): ["dataset=signal_noise"],
    ("split", "group"): ["dataset=cifar20", "model=resnet18"],
}


def _presets() -> list[tuple[str, str]]:
    groups = ("dataset", "model", "optim", "pretrain/optim", "method", "split", "memorization")
    groups += ("trainer", "logger", "eval", "debug", "experiment", "hparams_search")
    found = []
    for group in groups:
        for path in sorted((CONF / group).rglob("*.yaml")):
            found.append((group, str(path.relative_to(CONF / group).with_suffix(""))))
    return found


@pytest.mark.parametrize(("group", "option"), _presets(), ids=lambda v: str(v))
def test_every_shipped_preset_passes_the_rule_table(config, group, option):
    """The table declares every key a preset sets: no preset trips the unknown-key rule."""
    cfg = config(f"{group}={option}", *CONTEXT.get((group, option), []))
    check_keys(cfg)


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONF / "method").glob("*.yaml")))
def test_every_method_passes_the_whole_layer_on_the_default_data(config, method):
    validate_config(config(f"method={method}"))


def test_the_default_config_and_a_lab_pass(config):
    validate_config(config())
    validate_config(config("experiment=theory/stability_frontier"))


def test_a_lab_job_gets_the_table_and_the_metric_rule_only(config):
    """A lab never builds the pipeline's model or method, so their values are not its concern;
    its own ``lab.*`` settings are checked by the lab (unlearning/theory/checks.py)."""
    assert LAB_RULES == PIPELINE_RULES[:2]
    lab = config("experiment=theory/stability_frontier", "model.num_classes=5")
    validate_config(lab)  # the mismatch would fail a pipeline job
    with pytest.raises(ConfigError) as info:
        validate_config(config("model.num_classes=5"))
    assert info.value.key == "model.num_classes"


def test_the_first_broken_rule_is_reported(config):
    """Kinds first (cheap, local), then cross-key rules, then constructors."""
    with pytest.raises(ConfigError) as info:
        validate_config(config("seed=abc", "model.num_classes=5", "method.lr=0"))
    assert info.value.key == "seed"


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["optim=asam", "optim.sharpness.eta=-1"], "optim.sharpness.eta", "≥ 0"),
        (
            ["pretrain/optim=sam", "pretrain.optim.sharpness.rho=-0.1"],
            "pretrain.optim.sharpness.rho",
            "positive",
        ),
        (["optim=sharpmax", "optim.sharpness.variant=second"], "optim.sharpness.variant", "first"),
        (["optim=sam", "rho=0"], "rho", "positive"),
        (["method=minmax", "method.fraction=0"], "method.fraction", "(0, 1)"),
        (["method=minmax", "method.forget_rho=-1"], "method.forget_rho", "positive"),
    ],
)
def test_bad_optimizer_and_mask_settings_fail_at_start_up(config, tmp_path, overrides, key, hint):
    with pytest.raises(ConfigError) as info:
        run(config(*overrides, cache=tmp_path / "cache"))
    assert info.value.key == key and hint in str(info.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["method=scrub", "method.kd_T=-1"], "method.kd_T", "(0, inf)"),
        (["method=ugradsl", "method.smoothing=1.5"], "method.smoothing", "1.5"),
        (["method=boundary_shrink", "method.epsilon=-0.1"], "method.epsilon", "> 0"),
        (["method=l1sparse", "method.gamma=-1"], "method.gamma", "-1"),
        (["method=minmax", "method.forget_objective=minimize"], "method.forget_objective", "max"),
    ],
)
def test_method_constructor_checks_name_the_argument_before_any_training(
    config, tmp_path, overrides, key, hint
):
    """A method's own ValueError (``method.<arg>=<value>: ...``) becomes a ConfigError keyed
    by that argument, raised when the layer builds the method once on a fresh backbone."""
    with pytest.raises(ConfigError) as info:
        run(config(*overrides, cache=tmp_path / "cache"))
    assert info.value.key == key and hint in str(info.value)
    assert str(info.value).startswith(f"{key}=")
    assert not (tmp_path / "cache").exists()


def test_a_constructor_error_without_a_key_names_the_node(config, monkeypatch):
    def refuse(self, *args, alpha: float = 0.99, **kwargs):
        raise ValueError("the backbone is too small for this method")

    monkeypatch.setattr("unlearning.methods.ascent.NegGrad.__init__", refuse)
    with pytest.raises(ConfigError) as info:
        validate_config(config())
    assert info.value.key == "method" and "too small" in str(info.value)


def test_a_bug_in_a_constructor_keeps_its_traceback(config, monkeypatch):
    """Only ValueError/TypeError are the user's; anything else is a bug to see as it is."""

    def broken(self, *args, alpha: float = 0.99, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr("unlearning.methods.ascent.NegGrad.__init__", broken)
    with pytest.raises(Exception) as info:
        validate_config(config())
    assert not isinstance(info.value, ConfigError)


def test_the_model_is_tried_on_a_zero_batch_of_the_dataset_shape(config, monkeypatch):
    """A backbone that cannot take the dataset's inputs fails now, naming the shape tried."""
    seen = []

    def too_small(self, x):
        seen.append(tuple(x.shape))
        raise RuntimeError("Output size is too small")

    monkeypatch.setattr("unlearning.models.SmallCNN.embed", too_small)
    with pytest.raises(ConfigError) as info:
        validate_config(config())
    assert seen == [(1, 1, 8, 8)] and info.value.key == "model"
    assert "inputs of shape [1, 8, 8]" in str(info.value) and "too small" in str(info.value)
