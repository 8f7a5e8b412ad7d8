"""The fast training path (issue #15) trains the same model as the Lightning stage: the plain
PyTorch loop of ``fast_train_from_scratch`` and ``train_from_scratch`` (a real Lightning
``Trainer``) end with identical weights on the CPU for optimizer A = SGD, SAM, ASAM and sharpness
maximisation, with the batched train augmentation too, on S and
on R; ``fast_path_reason`` names the setting that rules the fast path out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.sources import build_source
from unlearning.pipeline.stages.fast_training import fast_path_reason, fast_train_from_scratch
from unlearning.pipeline.stages.training import MODEL_FILE, train_from_scratch

# two epochs (the cosine schedule moves), a momentum buffer and BatchNorm: every piece counts
TINY = ["pretrain.epochs=2", "pretrain.batch_size=128", "model.width=8"]


def _both(cfg, tmp_path, train_set: str, forget: np.ndarray | None):
    source = build_source(cfg.dataset)
    out = {}
    for name, trainer in (("lightning", train_from_scratch), ("fast", fast_train_from_scratch)):
        work = tmp_path / name
        work.mkdir()
        meta = trainer(cfg, source, forget, train_set, work)
        assert meta["epochs"] == 2
        out[name] = torch.load(work / MODEL_FILE, weights_only=True)
    return out["lightning"], out["fast"]


@pytest.mark.parametrize("optim", ["sgd", "sam", "asam", "sharpmax"])
def test_fast_path_trains_the_lightning_stages_model_bit_for_bit(config, tmp_path, optim):
    cfg = config(*TINY, f"pretrain/optim={optim}", "pretrain.seed=3")
    assert fast_path_reason(cfg) is None
    lightning, fast = _both(cfg, tmp_path, "train", None)
    assert lightning.keys() == fast.keys()
    for key in lightning:  # parameters and BatchNorm running statistics
        assert torch.equal(lightning[key], fast[key]), key


def test_fast_path_on_the_retain_set_matches_the_oracle_stage(config, tmp_path):
    cfg = config(*TINY, "pretrain/optim=sam")
    forget = np.arange(0, 1438, 7)  # R = S minus every 7th sample: another data order
    lightning, fast = _both(cfg, tmp_path, "retain", forget)
    assert all(torch.equal(lightning[k], fast[k]) for k in lightning)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer=gpu", "trainer.accelerator"),
        ("trainer=ddp_cpu", "trainer.devices"),
        ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
        ("trainer.limit_train_batches=4", "trainer.limit_train_batches"),
        ("num_workers=2", "num_workers"),
        ("compile=true", "compile"),
        ("pretrain.optim.optimizer._target_=torch.optim.LBFGS", "pretrain.optim.optimizer"),
    ],
)
def test_fast_path_reason_names_the_setting_it_cannot_follow(config, tmp_path, override, key):
    cfg = config(override)
    reason = fast_path_reason(cfg)
    assert reason is not None and reason.startswith(key), reason
    with pytest.raises(ValueError, match="does not apply"):
        fast_train_from_scratch(cfg, build_source(cfg.dataset), None, "train", tmp_path)


def test_fast_path_draws_the_same_augmentation_as_the_lightning_stage(config, tmp_path):
    """CIFAR-shaped data with the batched train augmentation (random crops and flips drawn from
    the global RNG between steps): still the same weights, so the draws come in the same order."""
    from tests.datamodules.test_real_datasets import write_cifar10

    write_cifar10(tmp_path / "data")
    cfg = config(
        "dataset=cifar10",
        f"dataset.root={tmp_path / 'data'}",
        "model=small_cnn",
        "model.width=4",
        "pretrain.epochs=2",
        "pretrain.batch_size=4",
        "pretrain/optim=sam",
    )
    assert fast_path_reason(cfg) is None
    assert build_source(cfg.dataset).batch_augment() is not None
    lightning, fast = _both(cfg, tmp_path, "train", None)
    assert all(torch.equal(lightning[k], fast[k]) for k in lightning)
