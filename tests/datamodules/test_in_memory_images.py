"""CIFAR/SVHN served from in-memory tensors (issue #10): the test transform applied once equals the
per-sample PIL items, training batches go through the batched augmentation (or, with
``augment_impl=per_sample``, torchvision per sample), and the data-device rule."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Subset

from datamodules import real_datasets as rd
from datamodules.batch_augment import BatchAugment
from datamodules.errors import DataConfigError
from datamodules.loaders import TensorBatches
from datamodules.sources import NoisyLabels
from datamodules.unlearning_datamodule import UnlearningDataModule, resolve_data_device
from tests.datamodules.test_real_datasets import write_cifar10, write_cifar100, write_svhn


def _stacked(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


@pytest.mark.parametrize(
    ("cls", "write", "image_size"),
    [
        (rd.CIFAR10, write_cifar10, 32),
        (rd.CIFAR10, write_cifar10, 48),  # the test transform resizes (PIL) before ToTensor
        (rd.CIFAR20, write_cifar100, 32),
        (rd.SVHN, write_svhn, 24),
    ],
)
def test_test_transform_tensors_equal_the_per_sample_items(tmp_path: Path, cls, write, image_size):
    write(tmp_path)
    src = cls(root=str(tmp_path), image_size=image_size)
    for part in ("train", "test"):
        x, y = src.in_memory(part, augment=False)
        assert x.dtype == torch.float32 and x.shape == (len(y), 3, image_size, image_size)
        torch.testing.assert_close(x, _stacked(src.dataset(part, False)), atol=1e-6, rtol=0)
        assert y.dtype == torch.int64 and y.tolist() == src.targets(part).tolist()
    assert src.in_memory("test", False)[0] is x, "computed once, then cached"


def test_train_tensors_stay_uint8_and_batch_augment_matches_the_config(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    src = rd.CIFAR10(root=str(tmp_path), crop_scale=(0.5, 0.9))
    x, y = src.in_memory("train", augment=True)
    images, labels = written["train"]
    assert y.tolist() == labels.tolist()
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))
    aug = src.batch_augment()
    assert isinstance(aug, BatchAugment)
    assert (aug.size, aug.scale, aug.flip_p) == (32, (0.5, 0.9), 0.5)
    assert aug.mean.tolist() == pytest.approx(rd.CIFAR10_MEAN)
    assert rd.SVHN(root=str(tmp_path)).batch_augment().flip_p == 0.0  # SVHN: no flip
    # per_sample: no augmented tensors and no batch transform; test tensors are still served
    exact = rd.CIFAR10(root=str(tmp_path), augment_impl="per_sample")
    assert exact.in_memory("train", augment=True) is None and exact.batch_augment() is None
    assert exact.in_memory("test", augment=False) is not None


def test_noisy_labels_keep_the_batched_augmentation(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    src = NoisyLabels(rd.CIFAR10(root=str(tmp_path)), 0.3)
    assert isinstance(src.batch_augment(), BatchAugment)
    x, y = src.in_memory("train", augment=True)
    assert x.dtype == torch.uint8 and y.tolist() == src.targets("train").tolist()


def test_unknown_augment_impl_names_the_key_value_and_choices(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError) as info:
        rd.SVHN(root=str(tmp_path), augment_impl="fast")
    assert info.value.key == "dataset.augment_impl"
    assert "'fast'" in str(info.value) and "['batched', 'per_sample']" in str(info.value)


def test_oversized_test_tensors_fall_back_to_per_sample_fetches(tmp_path, monkeypatch) -> None:
    write_cifar10(tmp_path)
    monkeypatch.setattr(rd.CIFAR10, "max_in_memory_bytes", 3 * 32 * 32 * 4 * 5)
    src = rd.CIFAR10(root=str(tmp_path))
    assert src.in_memory("test", False) is not None  # 3 images fit, 10 do not
    assert src.in_memory("train", False) is None
    assert src.in_memory("train", True) is not None  # uint8 at the stored size


def _train_batches(data: UnlearningDataModule) -> list:
    loader = data.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    return [batch for batch, _, _ in iter(loader)]


@pytest.mark.parametrize("impl", ["batched", "per_sample"])
def test_datamodule_serves_augmented_batches_through_the_chosen_path(tmp_path: Path, impl: str):
    """``crop_scale=(1, 1)`` makes every box the whole image, so each augmented sample is its
    test-transformed image or that image's mirror; the sample ids tell which image it is."""
    write_cifar10(tmp_path)
    src = rd.CIFAR10(root=str(tmp_path), crop_scale=(1.0, 1.0), augment_impl=impl)
    plain = _stacked(src.dataset("train", False))
    data = UnlearningDataModule(src, np.array([0, 7]), ("train",), 4, with_ids=("train",))
    dataset = data.loader("train", 4, True, True).dataset
    if impl == "batched":
        assert isinstance(dataset, TensorBatches) and isinstance(dataset.transform, BatchAugment)
    else:
        assert isinstance(dataset, Subset) and isinstance(dataset.dataset, rd.ArrayImageDataset)
    torch.manual_seed(0)
    seen, ids_seen = set(), []
    for _ in range(3):
        for batch in _train_batches(data):
            x, y, ids = batch["train"]
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and len(x) <= 4
            assert y.tolist() == src.targets("train")[ids.numpy()].tolist()
            ids_seen += ids.tolist()
            for image, i in zip(x, ids.tolist(), strict=True):
                if torch.allclose(image, plain[i], atol=1e-5):
                    seen.add("same")
                elif torch.allclose(image, plain[i].flip(-1), atol=1e-5):
                    seen.add("flipped")
                else:
                    raise AssertionError("neither the image nor its mirror")
    assert seen == {"same", "flipped"} and sorted(ids_seen) == sorted(list(range(10)) * 3)
    # evaluation loaders: the test transform, equal to the per-sample items
    data = UnlearningDataModule(src, np.array([0, 7]))
    (x_f, y_f), (x_t, _) = (next(iter(data.eval_dataloader(n))) for n in ("forget", "test"))
    torch.testing.assert_close(x_f, plain[[0, 7]], atol=1e-6, rtol=0)
    assert y_f.tolist() == src.targets("train")[[0, 7]].tolist() and x_t.shape == (3, 3, 32, 32)


def test_batched_training_batches_are_reproducible_under_the_seed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = UnlearningDataModule(rd.CIFAR10(root=str(tmp_path)), np.array([1, 2]), ("retain",), 4)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(torch.cat([b["retain"][0] for b in _train_batches(data)]))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    assert runs[0].shape == (8, 3, 32, 32)


def test_data_device_rule() -> None:
    cuda, cpu = torch.device("cuda:1"), torch.device("cpu")
    assert resolve_data_device("auto", cuda, in_memory=True) == cuda
    assert resolve_data_device("auto", cuda, in_memory=False) == cpu  # DataLoader workers
    assert resolve_data_device("auto", cpu, in_memory=True) == cpu
    assert resolve_data_device("auto", None, in_memory=True) == cpu  # no trainer attached
    assert resolve_data_device("cpu", cuda, in_memory=True) == cpu
    assert resolve_data_device("cuda:0", cpu, in_memory=True) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="data_device='gpu0'"):
        UnlearningDataModule(_digits(), None, data_device="gpu0")


def _digits():
    from datamodules.embedded import Digits

    return Digits()


def test_a_cpu_trainer_leaves_the_loaders_unchanged(tmp_path: Path) -> None:
    """On a CPU trainer ``data_device="auto"`` keeps the tensors where they are and the
    requested workers (the GPU path, tensors moved once and 0 workers, needs a GPU)."""
    write_cifar10(tmp_path)
    src = rd.CIFAR10(root=str(tmp_path))
    data = UnlearningDataModule(src, None, num_workers=1)
    data.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert data.device_for(in_memory=True) == torch.device("cpu")
    loader = data.loader("train", 4, False, True)
    assert loader.num_workers == 1 and not loader.pin_memory
    assert loader.dataset.tensors[0] is src.in_memory("train", True)[0], "not copied"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_trainer_tensors_move_once_and_batches_are_made_there(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    src = rd.CIFAR10(root=str(tmp_path))
    data = UnlearningDataModule(src, np.array([0]), ("retain", "forget"), 4, num_workers=2)
    data.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    loader = data.loader("retain", 4, True, True)
    assert loader.num_workers == 0 and not loader.pin_memory
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    first = data._on_device[("train", True, torch.device("cuda", 0))][0]
    data.loader("forget", 4, True, True)
    assert data._on_device[("train", True, torch.device("cuda", 0))][0] is first


def test_pipeline_trains_on_cifar_through_either_augmentation(tmp_path: Path) -> None:
    """``dataset.augment_impl`` reaches the source from the config, both paths run the real
    pipeline end to end, and they are cached as different pretraining runs (results differ)."""
    from tests.conftest import make_config
    from unlearning.pipeline.run import run

    write_cifar10(tmp_path / "run" / "data" / "cifar10")
    shrink = ["dataset=cifar10", "model=small_cnn", "pretrain.epochs=1", "method.epochs=1"]
    shrink += ["num_workers=0", "split.size=2"]
    for impl in ("batched", "per_sample"):
        cfg = make_config(
            [*shrink, f"dataset.augment_impl={impl}"], tmp_path / "run", tmp_path / "c"
        )
        result = run(cfg)
        assert result["status"] == "ok"
        assert result["config"]["dataset"]["augment_impl"] == impl
        assert 0.0 <= result["metrics"]["unlearned/acc_test"] <= 1.0
    entries = [p for p in (tmp_path / "c" / "pretrain").iterdir() if p.is_dir()]
    assert len(entries) == 2
