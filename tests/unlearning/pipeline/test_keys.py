"""Stage keys leave out non-determining config keys by full dotted path, never by leaf name."""

import shutil
from typing import ClassVar

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from tests.conftest import CONF
from tests.datamodules.test_real_datasets import write_cifar10
from unlearning.methods import NegGrad
from unlearning.methods.masked import MaskedMethod
from unlearning.pipeline.cache import config_hash
from unlearning.pipeline.keys import NON_DETERMINING, determining, stage_configs, unlearn_key


class RootedNegGrad(NegGrad):
    """A method whose argument happens to be called ``root`` (a leaf name the keys once
    dropped everywhere)."""

    def __init__(self, *args, root: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = root


class SparseMasked(MaskedMethod):
    """A masked method whose mask share lives under another key."""

    mask_keys: ClassVar[dict[str, str]] = {"fraction": "sparsity", "batch_size": "batch_size"}

    def __init__(self, *args, sparsity: float = 0.2, **kwargs) -> None:
        super().__init__(*args, fraction=sparsity, **kwargs)


def _hashes(cfg):
    return {stage: config_hash(c) for stage, c in stage_configs(cfg).items()}


def test_a_method_argument_called_root_changes_the_unlearn_key_only(config):
    rooted = f"method._target_={__name__}.RootedNegGrad"
    a, b = config(rooted, "+method.root=0.1"), config(rooted, "+method.root=0.2")
    assert config_hash(unlearn_key(a)) != config_hash(unlearn_key(b))
    assert unlearn_key(a)["method"]["root"] == 0.1
    assert _hashes(a) == _hashes(b)  # pretraining, the split and the oracle are shared


def test_model_arguments_called_lag_or_root_change_the_pretrain_key(config):
    base = _hashes(config("+model.lag=1", "+model.root=1"))
    for override in ("+model.lag=2", "+model.root=2"):
        other = "+model.root=1" if "lag" in override else "+model.lag=1"
        changed = _hashes(config(override, other))
        assert changed["pretrain"] != base["pretrain"], override
        assert changed["split"] == base["split"], override


def test_dataset_root_and_display_settings_change_no_key(config, tmp_path):
    """The same data at another root (a copy) hits every key."""
    write_cifar10(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    base = config("dataset=cifar10", f"dataset.root={tmp_path / 'a'}")
    moved = config(
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'b'}",
        "trainer.enable_progress_bar=true",
        "trainer.log_every_n_steps=3",
        "divergence.lag=1",
        "num_workers=3",
    )
    assert _hashes(base) == _hashes(moved)
    assert config_hash(unlearn_key(base)) == config_hash(unlearn_key(moved))


def test_other_data_under_the_same_root_never_shares_an_entry(config, tmp_path):
    """Issue 19: the key is the data, not its path. Another dataset written where the first one
    was (same root, same file names) misses every entry of the first."""
    root = tmp_path / "data"
    cfg = config("dataset=cifar10", f"dataset.root={root}")
    write_cifar10(root)
    first, first_unlearn = _hashes(cfg), config_hash(unlearn_key(cfg))
    shutil.rmtree(root)
    write_cifar10(root, labels_up_to=9)  # other labels, the same layout and sizes
    second = _hashes(cfg)
    assert all(first[stage] != second[stage] for stage in first), (first, second)
    assert config_hash(unlearn_key(cfg)) != first_unlearn


def test_divergence_lag_is_dropped_only_at_its_own_path():
    node = {"divergence": {"lag": 1, "max_abs_loss": 2.0}, "method": {"lag": 3}, "lag": 4}
    assert determining(node) == {
        "divergence": {"max_abs_loss": 2.0},
        "method": {"lag": 3},
        "lag": 4,
    }
    # a sub-node is filtered by the path it sits at
    assert determining({"lag": 1, "x": 2}, "divergence") == {"x": 2}
    assert determining({"lag": 1, "x": 2}, "model") == {"lag": 1, "x": 2}


def test_every_non_determining_path_names_a_real_key():
    """Each path is a key of some composed preset (``trainer.default_root_dir`` is set by the
    stages, so a user can only add it): a typo would silently keep a key in every hash."""
    presets = [[], ["dataset=cifar10"], ["scheduler@method=cosine"]]
    seen = set()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for overrides in presets:
            cfg = compose("config", overrides=["paths.output_dir=/tmp/x", *overrides])
            with open_dict(cfg):
                cfg.pop("hydra", None)
            for path in NON_DETERMINING:
                if OmegaConf.select(cfg, path, default="<absent>") != "<absent>":
                    seen.add(path)
    assert NON_DETERMINING - seen == {"trainer.default_root_dir"}


def test_the_mask_key_follows_the_keys_the_method_declares(config):
    target = f"method._target_={__name__}.SparseMasked"
    base = stage_configs(config(target, "+method.sparsity=0.2"))["mask"]
    assert base["fraction"] == 0.2 and base["batch_size"] == 64
    other = stage_configs(config(target, "+method.sparsity=0.4"))["mask"]
    assert config_hash(other) != config_hash(base)


@pytest.mark.parametrize("method", ["neggrad", "ga", "retrain"])
def test_methods_without_a_mask_have_no_mask_settings_in_their_key(config, method):
    assert set(stage_configs(config(f"method={method}"))["mask"]) == {"pretrain", "split"}


def test_a_score_file_is_keyed_by_its_bytes_not_its_path(config, tmp_path):
    """Issue 19: the memorization and split keys read the scores, not where they lie."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, tr_mem=np.linspace(0, 1, 1438))
    shutil.copy(a, b)

    def keyed(path):
        cfg = config("split=mem_high", "memorization=file", f"memorization.path={path}")
        return _hashes(cfg), config_hash(unlearn_key(cfg))

    first = keyed(a)
    assert keyed(b) == first
    np.savez(a, tr_mem=np.linspace(1, 0, 1438))  # other scores at the same path
    other, other_unlearn = keyed(a)
    assert other["memorization"] != first[0]["memorization"]
    assert other["split"] != first[0]["split"] and other_unlearn != first[1]
    assert other["pretrain"] == first[0]["pretrain"], "pretraining reads no scores"


@pytest.mark.parametrize("source", ["estimate", "learning_speed"])
def test_the_memorization_key_holds_the_pretraining_recipe_but_not_its_seed(config, source):
    """Issue 15: the members (and the proxy's run) are the pretraining recipe, so optimizer A,
    its lr, epochs and scheduler, the model and the trainer numerics change the memorization
    entry; ``pretrain.seed`` (f_A's own) and ``memorization.threads`` (speed) do not."""
    base = ["split=mem_high", f"memorization={source}"]

    def key(*overrides):
        return _hashes(config(*base, *overrides))["memorization"]

    first = key()
    assert key("pretrain.seed=7") == first
    if source == "estimate":
        assert key("memorization.threads=2") == first
        assert key("memorization.members=64") != first
    for change in [
        "pretrain/optim=sam",
        "pretrain.lr=0.05",
        "pretrain.epochs=3",
        "pretrain.batch_size=32",
        "scheduler@pretrain=constant",
        "model.width=16",
        "trainer.precision=64-true",
        "memorization.seed=1",
    ]:
        assert key(change) != first, change


def test_a_score_file_key_holds_no_pretraining_recipe(config):
    cfg = config("split=mem_high", "memorization=file")
    key = stage_configs(cfg)["memorization"]
    assert "pretrain" not in key and "model" not in key and "trainer" not in key
