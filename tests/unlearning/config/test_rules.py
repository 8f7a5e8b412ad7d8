"""The pieces of the validation layer: the kinds (written once), the rule table and its walk,
signatures of ``_target_`` s, the metric names, directories and score files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from unlearning.config import kinds
from unlearning.config.consistency import is_metric, score_file_problem
from unlearning.config.rules import (
    TABLE,
    TOP_LEVEL,
    accepted_keywords,
    check_keys,
    declared_children,
    locate,
    rule_for,
)
from unlearning.errors import ConfigError
from unlearning.files import unwritable_reason
from unlearning.theory import checks

# ---------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (kinds.SEED, [0, 7, 2**32 - 1], [-1, 2**32, 1.0, 1.5, "abc", "0", True, None]),
        (kinds.POSITIVE_INT, [1, 10**9], [0, -3, 2.0, 2.5, "3", True]),
        (kinds.COUNT, [0, 4], [-1, 0.5, False]),
        (kinds.POSITIVE, [1e-9, 3, 0.5], [0, -1, math.inf, math.nan, "0.1", True]),
        (kinds.UNIT, [0, 1, 0.99], [1.01, -0.1, math.nan]),
        (kinds.OPEN_UNIT, [0.5], [0, 1]),
        (kinds.BOOLEAN, [True, False], ["yes", "true", 1, 0, None]),
        (kinds.TEXT, ["a"], ["", "  ", None, 3]),
        (kinds.choice(["a", "b"]), ["a"], ["c", None]),
        (kinds.choice([16, "16"]), [16, "16"], [16.0, True]),
        (kinds.optional(kinds.POSITIVE), [None, 2], [0, "x"]),
        (kinds.list_of(kinds.SEED), [[0, 1]], [[], [0, "a"], "01", 0, {"a": 0}]),
        (kinds.list_of(kinds.POSITIVE, length=2), [[0.5, 1]], [[0.5], [1, 2, 3]]),
        (kinds.POSITIVE_INT | kinds.literal("auto"), [1, "auto"], ["max", 0]),
    ],
)
def test_kinds_accept_what_they_say_and_refuse_the_rest(kind, good, bad):
    for value in good:
        assert kind.test(value) is True, (kind.allowed, value)
    for value in bad:
        assert kind.test(value) is not True, (kind.allowed, value)


@pytest.mark.parametrize(
    ("kind", "allowed"),
    [
        (kinds.SEED, "an integer in [0, 4294967295]"),
        (kinds.POSITIVE_INT, "a positive integer"),
        (kinds.COUNT, "an integer ≥ 0"),
        (kinds.POSITIVE, "a positive finite number"),
        (kinds.number(0, 1, low_open=True), "a number in (0, 1]"),
        (kinds.number(1), "a finite number ≥ 1"),
        (kinds.list_of(kinds.integer(1, 49)), "a non-empty list of integers in [1, 49]"),
        (kinds.optional(kinds.BOOLEAN), "true or false or null"),
    ],
)
def test_kinds_say_what_is_allowed(kind, allowed):
    assert kind.allowed == allowed


def test_require_raises_the_one_message_shape():
    with pytest.raises(ConfigError) as info:
        kinds.require("pretrain.seed", "abc", kinds.SEED)
    assert str(info.value) == (
        "pretrain.seed='abc': must be an integer in [0, 4294967295], e.g. pretrain.seed=0"
    )
    assert info.value.key == "pretrain.seed" and info.value.value == "abc"
    kinds.require("pretrain.seed", 3, kinds.SEED)  # allowed: nothing raised


def test_a_reason_from_the_test_is_shown_in_brackets(tmp_path):
    (tmp_path / "f").write_text("")
    from unlearning.config.rules import WRITABLE_DIR

    with pytest.raises(ConfigError, match=r"^x='.*f/c': must be a directory .* \(.*f is not a"):
        kinds.require("x", str(tmp_path / "f" / "c"), WRITABLE_DIR)


# ---------------------------------------------------------------------- the table


def test_patterns_match_by_segment_and_literal_rules_win():
    assert rule_for("eval.klom.bins").pattern == "eval.klom.bins"
    assert rule_for("eval.mia.enabled").pattern == "eval.*.enabled"
    assert rule_for("eval.mia.enabled.x") is None
    assert rule_for("pretrain.optim.sharpness.rho").kind is kinds.POSITIVE
    assert rule_for("seed").kind is kinds.SEED and rule_for("lab.seed").kind is kinds.SEED
    assert "hydra" not in TOP_LEVEL and {"seed", "paths", "trainer", "callbacks"} <= TOP_LEVEL
    assert declared_children("divergence") == ["lag", "max_abs_loss"]


def test_every_seed_of_every_stage_is_a_seed():
    seeds = {r.pattern for r in TABLE if r.kind is kinds.SEED}
    assert seeds == {
        "seed",
        "pretrain.seed",
        "split.seed",
        "eval.seed",
        "memorization.seed",
        "lab.seed",
        "dataset.split_seed",
        "dataset.label_noise_seed",
        "dataset.data_seed",
        "validation.seed",
    }


def _walk(**cfg) -> None:
    check_keys(OmegaConf.create(cfg))


def test_the_walk_refuses_unknown_keys_of_plain_nodes_and_targets():
    _walk(divergence={"lag": 0})
    with pytest.raises(ConfigError) as info:
        _walk(divergence={"lagg": 0})
    assert info.value.key == "divergence.lagg" and "did you mean lag?" in str(info.value)
    # a node with a _target_: its signature says which keys it takes
    _walk(optim={"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "nesterov": 1}})
    with pytest.raises(ConfigError) as info:
        _walk(optim={"optimizer": {"_target_": "torch.optim.SGD", "nesterow": True}})
    assert info.value.key == "optim.optimizer.nesterow" and "nesterov" in str(info.value)


def test_the_walk_checks_hydra_keys_and_nested_targets():
    with pytest.raises(ConfigError) as info:
        _walk(trainer={"_target_": "lightning.pytorch.Trainer", "strategy": {"_target_": "no.X"}})
    assert info.value.key == "trainer.strategy._target_" and "cannot import" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _walk(model={"_target_": "unlearning.models.SmallCNN", "_partial_": "yes"})
    assert info.value.key == "model._partial_"


def test_the_walk_leaves_argument_values_alone():
    """Mappings handed to a target as values (the W&B run config) are data, not keys."""
    _walk(logger={"wandb": {"_target_": "unlearning.outputs.wandb_logger.wandb_logger",
                            "config": {"anything": {"goes": 1}}}})  # fmt: skip


def test_an_interpolation_that_does_not_resolve_names_its_key():
    with pytest.raises(ConfigError) as info:
        _walk(seed="${nowhere}")
    assert info.value.key == "seed" and info.value.value == "${nowhere}"
    assert "resolves" in str(info.value)


def test_accepted_keywords_follow_kwargs_up_the_mro():
    from lightning.pytorch import Trainer

    from unlearning.methods.ascent import NegGrad
    from unlearning.methods.base import UnlearningMethod

    base = accepted_keywords(UnlearningMethod)
    assert {"lr", "epochs", "scheduler", "batch_size", "name"} <= base
    assert accepted_keywords(NegGrad) == base | {"alpha"}
    assert "max_epochs" in accepted_keywords(Trainer)

    def anything(**kwargs):
        return kwargs

    assert accepted_keywords(anything) is None


def test_locate_imports_dotted_paths_with_one_line_reasons():
    from unlearning.models import SmallCNN

    assert locate("unlearning.models.SmallCNN") is SmallCNN
    for path, reason in (("nowhere.X", "nowhere"), ("unlearning.models.Nope", "'Nope'")):
        with pytest.raises(ImportError, match=reason) as info:
            locate(path)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- metrics


def test_every_documented_metric_is_a_metric_and_typos_are_not():
    text = (ROOT / "docs" / "results.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| (`.+?`) \|", text, flags=re.MULTILINE):
        documented |= set(re.findall(r"`([a-z_/<>]+)`", cell))
    documented = {k.replace("<family>", "mia") for k in documented}
    assert len(documented) > 30
    assert all(is_metric(k) for k in documented), [k for k in documented if not is_metric(k)]
    for typo in ("tow2", "acc_forget", "unlearned/acc", "klom/all", "TOW", "mia/forget"):
        assert not is_metric(typo)


# ---------------------------------------------------------------------- files


def test_unwritable_reason_creates_nothing(tmp_path):
    assert unwritable_reason(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    assert "is not a directory" in unwritable_reason(tmp_path / "file" / "x")
    assert "is not a directory" in unwritable_reason(tmp_path / "file")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc here")
def test_a_virtual_file_system_is_not_writable_even_for_root():
    assert "virtual file system" in unwritable_reason("/proc/x/cache")


def test_score_file_problems(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, tr_mem=np.zeros(5), tr_labels=np.arange(5))
    assert score_file_problem(good, "tr_mem") is None
    assert "no array 'mem'" in score_file_problem(good, "mem")
    assert "no score file" in score_file_problem(tmp_path / "absent.npz", "tr_mem")
    text = tmp_path / "text.npz"
    np.savez(text, tr_mem=np.array(["a", "b"]))
    assert "not numbers" in score_file_problem(text, "tr_mem")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive at all")
    assert score_file_problem(garbage, "tr_mem").startswith("unreadable")


# ---------------------------------------------------------------------- the labs' checks


def test_lab_checks_use_the_shared_kinds():
    with pytest.raises(ConfigError, match=r"^lab\.n=0: must be a positive integer, e\.g\. lab\.n"):
        checks.positive("n", 0, "50", integer=True)
    with pytest.raises(ConfigError, match=r"lab\.alpha=1\.5: must be a number in \[0, 1\]"):
        checks.in_range("alpha", 1.5, 0.0, 1.0, "0.1")
    with pytest.raises(ConfigError, match=r"lab\.fit_threshold=inf: must be a finite number ≥ 0"):
        checks.in_range("fit_threshold", math.inf, 0.0, math.inf, "0.1")
    with pytest.raises(ConfigError, match=r"lab\.loss='hinge': must be one of \['exp'"):
        checks.choice("loss", "hinge", ("exp", "logistic"))
    assert checks.number_list("q", [1, 2], 1, 50, "[1]", integer=True) == [1, 2]
    assert checks.number_list("b", [1, 2.5], 1, 50, "[1]", open_high=True) == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"integers in \[1, 49\]"):
        checks.number_list("q", [1, 50], 1, 50, "[1]", integer=True, open_high=True)
    with pytest.raises(ConfigError, match="non-empty list"):
        checks.number_list("q", [], 1, 50, "[1]")


# ---------------------------------------------------------------------- the docs


def test_docs_errors_lists_every_rule_of_the_table():
    text = (ROOT / "docs" / "errors.md").read_text()
    missing = [r.pattern for r in TABLE if f"`{r.pattern}`" not in text]
    assert not missing, missing
