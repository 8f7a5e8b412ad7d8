"""Real on-disk dataset loaders (SPEC §7): tiny files in the real formats, read by the real code.

Every test writes a handful of images in the dataset's published format (CIFAR python pickles,
SVHN ``.mat``, Tiny-ImageNet and ImageFolder JPEG trees) into ``tmp_path`` and loads them through
:mod:`datamodules.real_datasets` and through the ``conf/dataset/*.yaml`` configs.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from datamodules import real_datasets as rd
from datamodules.errors import DataConfigError, DatasetNotFoundError
from datamodules.sources import build_source

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "dataset"

# --------------------------------------------------------------------------------------------
# Writers of tiny files in the real formats


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (``BINSTRING``), as the official CIFAR files do."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(obj: dict, path: Path, style: str) -> None:
    """``style``: ``py2`` (like the official files), ``bytes`` or ``str`` keys (Python 3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "str":
        obj = {k.decode(): v for k, v in obj.items()}
    if style == "py2":
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        # The official files name numpy's pre-2.0 module.
        raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        path.write_bytes(raw)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _rgb(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """N×32×32×3 → N×3072 rows (1024 R, 1024 G, 1024 B), the CIFAR storage order."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, style: str = "py2", labels_up_to: int = 10) -> dict[str, Any]:
    """5 train batches of 2 images and a test batch of 3; returns what was written."""
    folder = root / "cifar-10-batches-py"
    out: dict[str, Any] = {}
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = _rgb(2, seed=i), [(2 * i) % labels_up_to, (2 * i + 1) % labels_up_to]
        _dump(
            {b"batch_label": b"b", b"data": _cifar_rows(x), b"labels": y},
            folder / f"data_batch_{i}",
            style,
        )
        train_x.append(x)
        train_y += y
    test_x, test_y = _rgb(3, seed=9), [labels_up_to - 1, 0, 1]
    _dump({b"data": _cifar_rows(test_x), b"labels": test_y}, folder / "test_batch", style)
    out["train"] = (np.concatenate(train_x), np.array(train_y))
    out["test"] = (test_x, np.array(test_y))
    return out


def write_cifar100(root: Path, style: str = "py2") -> dict[str, Any]:
    """train: 6 images, test: 4; fine labels 0..99, coarse = a fixed super-class of the fine."""
    out = {}
    for part, fine, seed in (("train", [0, 99, 5, 42, 42, 7], 1), ("test", [99, 3, 64, 0], 2)):
        x = _rgb(len(fine), seed)
        coarse = [f % 20 for f in fine]
        record = {b"data": _cifar_rows(x), b"fine_labels": fine, b"coarse_labels": coarse}
        _dump(record, root / "cifar-100-python" / part, style)
        out[part] = (x, np.array(fine), np.array(coarse))
    return out


def write_svhn(root: Path) -> dict[str, Any]:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, digits, seed in (("train", [10, 1, 9, 10, 5], 3), ("test", [2, 10, 7], 4)):
        x = _rgb(len(digits), seed)
        y = np.array(digits, dtype=np.uint8).reshape(-1, 1)
        savemat(str(root / f"{part}_32x32.mat"), {"X": x.transpose(1, 2, 3, 0), "y": y})
        out[part] = (x, np.array([d % 10 for d in digits]))
    return out


def _jpeg(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path, "JPEG")


TINY_WNIDS = ["n09999999", "n01443537", "n02099601"]  # wnids.txt is not sorted


def write_tiny_imagenet(root: Path) -> None:
    """3 classes × 2 train images (one greyscale, as some real ones are) and 4 val images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for k, wnid in enumerate(TINY_WNIDS):
        for j in range(2):
            mode = "L" if (k, j) == (0, 1) else "RGB"
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", (64, 64), 10 * k + j, mode)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = [("val_0.JPEG", "n02099601"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537")]
    val.append(("val_3.JPEG", "n02099601"))
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in val]
    for i, (name, _) in enumerate(val):
        _jpeg(root / "val" / "images" / name, (64, 64), 100 + i)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(root / "test" / "images" / "test_0.JPEG", (64, 64), 200)  # unlabelled: ignored


IMAGENET_CLASSES = ["n01440764", "n01443537", "n01484850"]


def write_imagenet(root: Path, val_classes: list[str] | None = None) -> None:
    """ImageFolder tree: train 2 images per class, val 1 per class, odd sizes."""
    for k, c in enumerate(IMAGENET_CLASSES):
        for j in range(2):
            _jpeg(root / "train" / c / f"{c}_{j}.JPEG", (300 + 7 * j, 260), 10 * k + j)
    for k, c in enumerate(val_classes or IMAGENET_CLASSES):
        _jpeg(root / "val" / c / f"ILSVRC2012_val_{k}.JPEG", (280, 330), 50 + k)


def _normalised(images: np.ndarray, source: rd.RealImageSource) -> torch.Tensor:
    """What the test transform must give at native size: ToTensor + Normalize."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(source.mean).view(3, 1, 1), torch.tensor(source.std).view(3, 1, 1)
    return (x - mean) / std


def _items(ds) -> tuple[torch.Tensor, list[int]]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(xs), list(ys)


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("style", ["py2", "bytes", "str"])
def test_cifar10_reads_pickle_batches_pixel_exact(tmp_path: Path, style: str) -> None:
    written = write_cifar10(tmp_path, style)
    src = rd.CIFAR10(root=str(tmp_path))
    src.check()
    for part, n in (("train", 10), ("test", 3)):
        images, labels = written[part]
        ds = src.dataset(part, augment=False)
        assert len(ds) == n
        x, y = _items(ds)
        assert x.dtype == torch.float32 and x.shape == (n, 3, 32, 32)
        assert all(type(v) is int for v in y)
        assert y == labels.tolist()
        # R/G/B planes of the 3072-byte rows land in the right channels and pixels.
        torch.testing.assert_close(x, _normalised(images, src))
        t = src.targets(part)
        assert t.dtype == np.int64 and t.tolist() == labels.tolist()
        assert np.array_equal(ds.targets, t)


def test_cifar_train_transform_is_random_resized_crop_and_flip(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    # scale=(1, 1): the crop is the whole image, so an augmented image is x or its mirror.
    src = rd.CIFAR10(root=str(tmp_path), crop_scale=(1.0, 1.0))
    plain = _normalised(written["train"][0][:1], src)[0]
    ds = src.dataset("train", augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 2
        if torch.allclose(x, plain, atol=1e-5):
            seen.add("same")
        elif torch.allclose(x, plain.flip(-1), atol=1e-5):
            seen.add("flipped")
        else:
            raise AssertionError("augmented image is neither the image nor its mirror")
    assert seen == {"same", "flipped"}
    # The default scale (0.8, 1.0) crops: draws differ from the plain image.
    ds = rd.CIFAR10(root=str(tmp_path), hflip=False).dataset("train", augment=True)
    torch.manual_seed(0)
    assert not all(torch.allclose(ds[0][0], plain, atol=1e-3) for _ in range(5))
    names = [type(t).__name__ for t in src.train_transform().transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_cifar_upsampled_input_resizes_test_images(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    src = rd.CIFAR10(root=str(tmp_path), image_size=48)
    assert src.dataset("test", augment=False)[0][0].shape == (3, 48, 48)
    assert src.dataset("train", augment=True)[0][0].shape == (3, 48, 48)


def test_cifar_loader_collates_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    x, y = next(iter(DataLoader(rd.CIFAR10(str(tmp_path)).dataset("train", True), batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and y.tolist() == [2, 3, 4, 5]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, style="bytes")
    src = rd.CIFAR100(root=str(tmp_path))
    for part in ("train", "test"):
        images, fine, _ = written[part]
        assert src.targets(part).tolist() == fine.tolist()
        x, y = _items(src.dataset(part, augment=False))
        assert y == fine.tolist()
        torch.testing.assert_close(x, _normalised(images, src))
    assert src.mean == rd.CIFAR100_MEAN


def test_cifar20_uses_coarse_labels_and_keeps_fine(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    src = rd.CIFAR20(root=str(tmp_path))
    assert src.num_classes == 20
    for part in ("train", "test"):
        _, fine, coarse = written[part]
        assert src.targets(part).tolist() == coarse.tolist()
        assert [y for _, y in (src.dataset(part, True)[i] for i in range(len(coarse)))] == (
            coarse.tolist()
        )
        f = src.fine_targets(part)
        assert f.dtype == np.int64 and f.tolist() == fine.tolist()
    # fine_targets works before anything else was loaded.
    assert rd.CIFAR20(root=str(tmp_path)).fine_targets("test").tolist() == [99, 3, 64, 0]


def test_labels_beyond_num_classes_fail_with_the_key(tmp_path: Path) -> None:
    write_cifar10(tmp_path, labels_up_to=13)
    with pytest.raises(DataConfigError, match=r"dataset.num_classes") as err:
        rd.CIFAR10(root=str(tmp_path)).targets("test")
    assert "12" in str(err.value)
    assert rd.CIFAR10(root=str(tmp_path), num_classes=13).targets("test").max() == 12


def test_bad_constructor_values_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError, match=r"dataset.in_channels"):
        rd.CIFAR10(root=str(tmp_path), in_channels=1)
    with pytest.raises(DataConfigError, match=r"dataset.crop_scale"):
        rd.CIFAR10(root=str(tmp_path), crop_scale=(0.9, 0.5))
    with pytest.raises(DataConfigError, match=r"dataset.test_resize_size"):
        rd.ImageNet(root=str(tmp_path), image_size=224, test_resize_size=200)


# --------------------------------------------------------------------------------------------
# SVHN


def test_svhn_reads_mat_and_maps_label_10_to_0(tmp_path: Path) -> None:
    written = write_svhn(tmp_path)
    src = rd.SVHN(root=str(tmp_path))
    assert src.hflip is False
    assert src.targets("train").tolist() == [0, 1, 9, 0, 5]
    assert src.targets("test").tolist() == [2, 0, 7]
    for part in ("train", "test"):
        images, labels = written[part]
        x, y = _items(src.dataset(part, augment=False))
        assert y == labels.tolist()
        torch.testing.assert_close(x, _normalised(images, src))
        xa, ya = src.dataset(part, augment=True)[1]
        assert xa.shape == (3, 32, 32) and xa.dtype == torch.float32 and type(ya) is int
    names = [type(t).__name__ for t in src.train_transform().transforms]
    assert names == ["RandomResizedCrop", "ToTensor", "Normalize"]


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet


def test_tiny_imagenet_reads_train_folders_and_val_annotations(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    src = rd.TinyImageNet(root=str(root), num_classes=3)
    src.check()
    # Class index = position in sorted wnids: n01443537 → 0, n02099601 → 1, n09999999 → 2.
    assert src.class_to_idx() == {"n01443537": 0, "n02099601": 1, "n09999999": 2}
    assert src.targets("train").tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(src.targets("test").tolist()) == [0, 1, 1, 2]
    for part, n in (("train", 6), ("test", 4)):
        for augment in (False, True):
            ds = src.dataset(part, augment)
            assert len(ds) == n
            x, y = _items(ds)
            assert x.shape == (n, 3, 64, 64) and x.dtype == torch.float32  # greyscale → RGB
            assert y == src.targets(part).tolist()
    test = src.dataset("test", augment=False)
    by_file = {Path(p).name: y for p, y in test.samples}
    assert by_file == {"val_0.JPEG": 1, "val_1.JPEG": 2, "val_2.JPEG": 0, "val_3.JPEG": 1}
    assert rd.TinyImageNet(root=str(root), num_classes=3, image_size=32).dataset("test", False)[0][
        0
    ].shape == (3, 32, 32)


def test_tiny_imagenet_unknown_val_wnid_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataConfigError, match="n00000000"):
        rd.TinyImageNet(root=str(root), num_classes=3).targets("test")


# --------------------------------------------------------------------------------------------
# ImageNet


def test_imagenet_image_folder_layout_and_transforms(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    src = rd.ImageNet(root=str(tmp_path))
    assert (src.image_size, src.test_resize_size, src.crop_scale) == (224, 256, (0.08, 1.0))
    assert src.targets("train").tolist() == [0, 0, 1, 1, 2, 2]
    assert src.targets("test").tolist() == [0, 1, 2]
    for part, n in (("train", 6), ("test", 3)):
        for augment in (False, True):
            ds = src.dataset(part, augment)
            x, y = ds[n - 1]
            assert len(ds) == n and x.shape == (3, 224, 224) and x.dtype == torch.float32
            assert y == 2 and ds.targets.tolist() == src.targets(part).tolist()
    names = [type(t).__name__ for t in src.test_transform().transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]


def test_imagenet_targets_do_not_decode_images(tmp_path: Path, monkeypatch) -> None:
    write_imagenet(tmp_path)

    def no_decoding(*args, **kwargs):
        raise AssertionError("targets() decoded an image")

    monkeypatch.setattr(Image, "open", no_decoding)
    src = rd.ImageNet(root=str(tmp_path))
    assert len(src.targets("train")) == 6 and len(src.dataset("test", False)) == 3
    with pytest.raises(AssertionError, match="decoded"):
        src.dataset("test", False)[0]


def test_imagenet_train_and_val_classes_must_match(tmp_path: Path) -> None:
    write_imagenet(tmp_path, val_classes=["n01440764", "n01443537", "n99999999"])
    with pytest.raises(DataConfigError, match="same class folders") as err:
        rd.ImageNet(root=str(tmp_path)).targets("train")
    assert "n01484850" in str(err.value) and "n99999999" in str(err.value)


# --------------------------------------------------------------------------------------------
# Missing data


MISSING = [
    (rd.CIFAR10, "cifar-10-batches-py"),
    (rd.CIFAR100, "cifar-100-python"),
    (rd.CIFAR20, "coarse_labels"),
    (rd.SVHN, "train_32x32.mat"),
    (rd.TinyImageNet, "val_annotations.txt"),
    (rd.ImageNet, "val/<class>"),
]


@pytest.mark.parametrize(("cls", "layout_word"), MISSING, ids=lambda v: getattr(v, "__name__", v))
def test_missing_root_names_key_path_and_layout(tmp_path: Path, cls, layout_word: str) -> None:
    root = tmp_path / "nowhere"
    src = cls(root=str(root))
    for call in (src.check, lambda: src.targets("train"), lambda: src.dataset("test", False)):
        with pytest.raises(DatasetNotFoundError) as err:
            call()
        message = str(err.value)
        assert err.value.key == "dataset.root"
        assert str(root) in message and layout_word in message
        assert "never downloaded" in message


def test_one_missing_cifar_batch_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        rd.CIFAR10(root=str(tmp_path)).dataset("test", False)


def test_empty_tiny_imagenet_class_folder_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    (root / "wnids.txt").write_text("\n".join([*TINY_WNIDS, "n00000001"]))
    with pytest.raises(DatasetNotFoundError, match="n00000001"):
        rd.TinyImageNet(root=str(root)).targets("train")


# --------------------------------------------------------------------------------------------
# Hydra configs


CONFIGS = {
    "cifar10": (rd.CIFAR10, lambda d: write_cifar10(d / "cifar10"), 10),
    "cifar100": (rd.CIFAR100, lambda d: write_cifar100(d / "cifar100"), 100),
    "cifar20": (rd.CIFAR20, lambda d: write_cifar100(d / "cifar100"), 20),
    "svhn": (rd.SVHN, lambda d: write_svhn(d / "svhn"), 10),
    "tiny_imagenet": (rd.TinyImageNet, lambda d: write_tiny_imagenet(d / "tiny-imagenet-200"), 200),
    "imagenet": (rd.ImageNet, lambda d: write_imagenet(d / "imagenet"), 1000),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dataset_config_instantiates_and_loads(tmp_path: Path, name: str) -> None:
    cls, write, num_classes = CONFIGS[name]
    write(tmp_path)
    path = CONF_DIR / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_")
    raw = OmegaConf.load(path)
    assert set(raw) == {"dataset"}
    cfg = OmegaConf.merge(raw, {"paths": {"data_dir": str(tmp_path)}})
    OmegaConf.resolve(cfg)
    src = build_source(cfg.dataset)
    assert type(src) is cls
    assert (src.name, src.num_classes, src.in_channels) == (name, num_classes, 3)
    assert src.root.is_relative_to(tmp_path)
    src.check()
    t = src.targets("train")
    x, y = src.dataset("train", augment=True)[len(t) - 1]
    assert x.shape == (3, src.image_size, src.image_size) and y == t[-1]
    x, y = src.dataset("test", augment=False)[0]
    assert x.shape == (3, src.image_size, src.image_size) and y == src.targets("test")[0]


def test_every_dataset_config_is_tested() -> None:
    real = {p.stem for p in CONF_DIR.glob("*.yaml") if "real_datasets" in p.read_text()}
    assert real == set(CONFIGS)


def test_dataset_presets_compose_in_the_primary_config(tmp_path: Path) -> None:
    """``dataset=<name>`` on the real config tree selects the loader with the data_dir root."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR.parent), version_base="1.3"):
        for name, (cls, _, num_classes) in CONFIGS.items():
            cfg = compose("config", overrides=[f"dataset={name}", f"paths.data_dir={tmp_path}"])
            assert cfg.dataset.num_classes == num_classes
            src = build_source(cfg.dataset)
            assert type(src) is cls and src.root.parent == tmp_path
            with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
                src.check()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


@pytest.mark.parametrize("content", ["exploit", "garbage"])
def test_cifar_batch_files_never_execute_code(tmp_path, monkeypatch, content):
    """A pickle naming another callable (os.system) is refused, not run; garbage is a clean
    error naming the data root."""
    from datamodules.real_datasets import read_cifar_pickle

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data_batch_1"
    if content == "exploit":
        path.write_bytes(pickle.dumps({"data": _Exploit()}))
    else:
        path.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(DataConfigError, match=r"dataset\.root"):
        read_cifar_pickle(path)
    assert not (tmp_path / "exploited").exists()
