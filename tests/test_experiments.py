"""Paper presets (``experiment=``) set the papers' values and run end to end on tiny stand-in
data (SPEC §7): 000 App. C.1 / F (CIFAR-100 ResNet-50, ImageNet ResNet-50, CIFAR-10 ResNet-18,
Tiny-ImageNet ResNet-34) and 004 App. E.1 (ResNet-18 on CIFAR-10/100, SVHN, ImageNet; CIFAR-20
group forgetting)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.datamodules.test_real_datasets import (
    write_cifar10,
    write_cifar100,
    write_imagenet,
    write_svhn,
    write_tiny_imagenet,
)
from unlearning.pipeline.run import run

#: preset → (dataset, depth, cifar stem, pretrain (epochs, batch, lr, weight decay),
#: unlearning (epochs, lr or None = the method's own), alpha, split (name, size))
PAPER = {
    "cifar100_resnet50": (
        "cifar100",
        50,
        True,
        (200, 256, 0.1, 5e-4),
        (10, None),
        0.99,
        ("random", 3000),
    ),
    "imagenet_resnet50": (
        "imagenet",
        50,
        False,
        (150, 512, 0.25, 2e-5),
        (10, None),
        0.989,
        ("random", 60000),
    ),
    "cifar10_resnet18": (
        "cifar10",
        18,
        True,
        (50, 256, 0.1, 5e-4),
        (10, None),
        0.99,
        ("random", 0.05),
    ),
    "tiny_imagenet_resnet34": (
        "tiny_imagenet",
        34,
        False,
        (200, 256, 0.003, 1e-3),
        (10, 0.005),
        0.99,
        ("random", 6000),
    ),
    "ugradsl_cifar10_resnet18": (
        "cifar10",
        18,
        True,
        (160, 256, 0.01, 5e-4),
        (10, 0.01),
        None,
        ("random", 0.1),
    ),
    "ugradsl_cifar100_resnet18": (
        "cifar100",
        18,
        True,
        (160, 256, 0.01, 5e-4),
        (10, 0.01),
        None,
        ("random", 0.1),
    ),
    "ugradsl_svhn_resnet18": (
        "svhn",
        18,
        True,
        (160, 256, 0.01, 5e-4),
        (10, 0.01),
        None,
        ("random", 0.1),
    ),
    "ugradsl_cifar20_resnet18": (
        "cifar20",
        18,
        True,
        (160, 256, 0.01, 5e-4),
        (10, 0.01),
        None,
        ("group", None),
    ),
    "ugradsl_imagenet_resnet18": (
        "imagenet",
        18,
        False,
        (90, 1024, 0.01, 5e-4),
        (5, 0.01),
        None,
        ("random", 0.1),
    ),
}

#: dataset → (stand-in writer, folder under paths.data_dir)
STAND_INS: dict[str, tuple[Callable[[Path], object], str]] = {
    "cifar10": (write_cifar10, "cifar10"),
    "cifar100": (write_cifar100, "cifar100"),
    "cifar20": (write_cifar100, "cifar100"),
    "svhn": (write_svhn, "svhn"),
    "tiny_imagenet": (write_tiny_imagenet, "tiny-imagenet-200"),
    "imagenet": (write_imagenet, "imagenet"),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_preset_sets_the_papers_values(config, experiment):
    dataset, depth, stem, pretrain, unlearn, alpha, (split, size) = PAPER[experiment]
    cfg = config(f"experiment={experiment}")
    assert (cfg.dataset.name, cfg.model.depth, cfg.model.cifar_stem) == (dataset, depth, stem)
    epochs, batch, lr, weight_decay = pretrain
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.lr) == (epochs, batch, lr)
    # optimizer A and the unlearning optimizer share the weight decay (000 App. C.1)
    assert cfg.pretrain.optim.optimizer.weight_decay == weight_decay
    assert cfg.optim.optimizer.weight_decay == weight_decay
    assert cfg.method.epochs == unlearn[0]
    if unlearn[1] is not None:
        assert cfg.method.lr == unlearn[1]
    if experiment.startswith("ugradsl_"):  # 004's method; its GA ratio p is our alpha
        assert cfg.method.name == "ugradsl"
    else:
        assert cfg.alpha == alpha
    assert cfg.split.name == split and cfg.split.get("size") == size


# the runs that fit the default suite's budget; the rest are slow (bigger nets or inputs)
FAST = {"cifar10_resnet18"}


@pytest.mark.parametrize(
    "experiment",
    [e if e in FAST else pytest.param(e, marks=pytest.mark.slow) for e in sorted(PAPER)],
)
def test_paper_preset_runs_on_tiny_stand_in_data(config, tmp_path, experiment):
    dataset, split = PAPER[experiment][0], PAPER[experiment][6][0]
    writer, folder = STAND_INS[dataset]
    writer(tmp_path / "run" / "data" / folder)
    shrink = ["pretrain.epochs=1", "method.epochs=1", "num_workers=0", "eval=none"]
    if split == "random":
        shrink.append("split.size=2")
    cfg = config(f"experiment={experiment}", *shrink, cache=tmp_path / "cache")
    result = run(cfg)
    assert result["status"] == "ok"
    assert result["config"]["dataset"]["name"] == dataset
    n_forget = result["metrics"]["split/n_forget"]
    assert n_forget == 2 if split == "random" else n_forget >= 1
    assert 0.0 <= result["metrics"]["unlearned/acc_test"] <= 1.0
