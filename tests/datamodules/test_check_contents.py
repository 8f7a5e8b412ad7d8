"""Issue 19: every data file a job reads is opened and checked at start-up
(:meth:`ImageSource.check_contents`), and each source names the files or arrays that the
pipeline hashes into the cache keys (:meth:`ImageSource.data_files`, ``data_arrays``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from datamodules import real_datasets as rd
from datamodules.embedded import Digits, SignalNoise
from datamodules.errors import DataConfigError
from datamodules.sources import NoisyLabels
from tests.datamodules.test_real_datasets import (
    write_cifar10,
    write_imagenet,
    write_svhn,
    write_tiny_imagenet,
)


def test_a_broken_test_batch_fails_check_contents_not_only_the_evaluation(tmp_path: Path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    source = rd.CIFAR10(str(tmp_path))
    source.check()  # existence only: what start-up checked before issue 19
    source.targets("train")  # the train part alone reads fine
    with pytest.raises(DataConfigError, match="test_batch") as info:
        source.check_contents()
    assert info.value.key == "dataset.root"


def test_test_labels_out_of_range_fail_check_contents(tmp_path: Path):
    write_cifar10(tmp_path, labels_up_to=12)  # test label 11 (and train labels 10, 11)
    with pytest.raises(DataConfigError) as info:
        rd.CIFAR10(str(tmp_path)).check_contents()
    assert info.value.key == "dataset.num_classes"


def test_a_corrupt_image_of_the_test_part_fails_check_contents(tmp_path: Path):
    write_tiny_imagenet(tmp_path)
    rd.TinyImageNet(str(tmp_path)).check_contents()  # the intact tree passes
    # val_1.JPEG is the first val image of its class (n09999999)
    (tmp_path / "val" / "images" / "val_1.JPEG").write_bytes(b"\x00" * 64)
    with pytest.raises(DataConfigError, match=r"val_1\.JPEG.*not a readable image"):
        rd.TinyImageNet(str(tmp_path)).check_contents()


def test_check_contents_of_the_tiny_real_formats_is_cheap(tmp_path: Path):
    """The cost reported in docs/datasets.md: milliseconds on the tiny files of each format."""
    roots = {name: tmp_path / name for name in ("cifar", "svhn", "tiny", "imagenet")}
    write_cifar10(roots["cifar"])
    write_svhn(roots["svhn"])
    write_tiny_imagenet(roots["tiny"])
    write_imagenet(roots["imagenet"])
    sources = [
        rd.CIFAR10(str(roots["cifar"])),
        rd.SVHN(str(roots["svhn"])),
        rd.TinyImageNet(str(roots["tiny"])),
        rd.ImageNet(str(roots["imagenet"])),
    ]
    start = time.perf_counter()
    for source in sources:
        source.check_contents()
    assert time.perf_counter() - start < 2.0


def test_real_sources_list_their_files_relative_to_the_root(tmp_path: Path):
    write_cifar10(tmp_path / "c")
    names = [name for name, _ in rd.CIFAR10(str(tmp_path / "c")).data_files()]
    assert names == [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + [
        "cifar-10-batches-py/test_batch"
    ]
    write_imagenet(tmp_path / "i")
    files = dict(rd.ImageNet(str(tmp_path / "i")).data_files())
    assert "train/n01440764/n01440764_0.JPEG" in files and len(files) == 9  # 6 train + 3 val
    write_tiny_imagenet(tmp_path / "t")
    files = dict(rd.TinyImageNet(str(tmp_path / "t")).data_files())
    assert {"wnids.txt", "val/val_annotations.txt", "val/images/val_3.JPEG"} <= set(files)
    assert not any(name.startswith("test/") for name in files), "the unlabelled part is unread"


def test_embedded_and_synthetic_sources_give_their_arrays():
    a, b = Digits().data_arrays(), Digits().data_arrays()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    other = Digits(split_seed=1).data_arrays()
    assert not np.array_equal(a[-1], other[-1]), "the test mask follows split_seed"
    assert Digits().data_files() == []
    noisy = NoisyLabels(SignalNoise(n_train=20, n_test=10), 0.2)
    arrays = noisy.data_arrays()
    assert len(arrays) == 5 and np.array_equal(arrays[-1], noisy.targets("train"))
