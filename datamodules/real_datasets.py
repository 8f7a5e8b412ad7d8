"""Real image datasets read from a local root; never downloaded (SPEC §7).

* :class:`CIFAR10`, :class:`CIFAR100` (fine labels), :class:`CIFAR20` (CIFAR-100's 20 coarse
  super-classes) — the python-version pickle batches, held in memory as uint8 arrays.
* :class:`SVHN` — the cropped-digits ``*_32x32.mat`` files, held in memory (label 10 → digit 0).
* :class:`TinyImageNet` — the standard ``tiny-imagenet-200/`` folder; the labelled val set is the
  test part. Images are decoded lazily, one per item.
* :class:`ImageNet` — an ImageFolder layout ``train/<class>/*`` and ``val/<class>/*``; decoded
  lazily, and :meth:`ImageNet.targets` reads only the file listing.

Transforms follow 000 App. C.1 (``RandomResizedCrop`` + ``RandomHorizontalFlip`` at train time,
SPEC §7) and normalise with the dataset's channel mean/std. Test transforms only resize to the
network input. CIFAR and SVHN serve whole batches from tensors: the test transform is applied
once, the train augmentation per batch by :class:`~datamodules.batch_augment.BatchAugment`
(``augment_impl="batched"``, the default; ``"per_sample"`` keeps torchvision's PIL transforms per
item). Every ``check()`` is cheap (file existence only) and raises
:class:`~datamodules.errors.DatasetNotFoundError` naming ``dataset.root``, the path and the
expected layout; ``docs/datasets.md`` describes each layout. ``check_contents()`` (at start-up,
before any training) reads the labels of both parts and what the format allows cheaply; and
``data_files()`` lists the files the pipeline hashes into the cache keys.
"""

from __future__ import annotations

import os
import pickle
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from datamodules.batch_augment import BatchAugment
from datamodules.errors import DataConfigError, DatasetNotFoundError
from datamodules.sources import ImageSource, Part

ROOT_KEY = "dataset.root"
#: values of ``dataset.augment_impl``: whole-batch ``grid_sample`` or torchvision per sample.
AUGMENT_IMPLS = ("batched", "per_sample")

# Channel statistics of each train set (RGB, pixels in [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Datasets


class ArrayImageDataset(Dataset):
    """In-memory uint8 images ``N×H×W×C`` with int64 labels; items ``(transform(PIL), int)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.transform = images, transform
        self.targets = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.targets[index])


class FileImageDataset(Dataset):
    """Images on disk, decoded (as RGB) only when an item is read; items ``(transform(img), int)``.

    ``samples`` is a list of ``(path, label)``, as torchvision's ``make_dataset`` returns.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable) -> None:
        self.samples, self.transform = list(samples), transform
        self.targets = np.fromiter((y for _, y in self.samples), dtype=np.int64, count=len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), int(label)


# --------------------------------------------------------------------------------------------
# Base class


class RealImageSource(ImageSource):
    """A dataset read from ``root``: layout check, transforms and label validation.

    Args:
        root: the dataset folder (config key ``dataset.root``).
        name, num_classes, in_channels, image_size: see :class:`~datamodules.sources.ImageSource`;
            ``None`` takes the dataset's standard value (class attributes ``default_*``).
        crop_scale: ``scale`` of the train ``RandomResizedCrop`` (range of the area fraction).
        hflip: whether train images are flipped horizontally with probability 0.5.
        mean, std: per-channel normalisation; ``None`` uses the dataset's train-set statistics.

    Train transform (000 App. C.1, SPEC §7): ``RandomResizedCrop(image_size, scale=crop_scale)``
    → ``RandomHorizontalFlip`` → ``ToTensor`` → ``Normalize``. Test transform:
    :meth:`test_resize` → ``ToTensor`` → ``Normalize``.
    """

    #: Side of the stored images; the test transform resizes only if image_size differs.
    native_size: int = 32
    #: Expected layout under ``root``, shown when the data is missing.
    layout: str = ""
    default_name: str = ""
    default_num_classes: int = 0
    default_image_size: int | None = None  # None: native_size
    default_crop_scale: tuple[float, float] = (0.8, 1.0)
    default_hflip: bool = True
    default_mean: tuple[float, float, float] = IMAGENET_MEAN
    default_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self,
        root: str,
        name: str | None = None,
        num_classes: int | None = None,
        in_channels: int = 3,
        image_size: int | None = None,
        crop_scale: Sequence[float] | None = None,
        hflip: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            name if name is not None else self.default_name,
            num_classes if num_classes is not None else self.default_num_classes,
            in_channels,
            image_size if image_size is not None else self.default_image_size or self.native_size,
        )
        if self.in_channels != 3:
            raise DataConfigError(
                "dataset.in_channels", in_channels, f"{self.name} images are RGB: set it to 3"
            )
        scale = tuple(float(s) for s in (crop_scale or self.default_crop_scale))
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise DataConfigError(
                "dataset.crop_scale", list(scale), "must be [lo, hi] with 0 < lo <= hi <= 1"
            )
        self.root = Path(os.path.expanduser(str(root)))
        self.crop_scale: tuple[float, float] = (scale[0], scale[1])
        self.hflip = bool(self.default_hflip if hflip is None else hflip)
        self.mean = tuple(float(m) for m in (mean if mean is not None else self.default_mean))
        self.std = tuple(float(s) for s in (std if std is not None else self.default_std))

    # -- layout ------------------------------------------------------------------------------

    @abstractmethod
    def required_paths(self) -> list[Path]:
        """Files and folders that must exist under ``root`` (checked without reading them)."""

    def check(self) -> None:
        """Raise :class:`DatasetNotFoundError` unless every :meth:`required_paths` entry exists."""
        for path in self.required_paths():
            if not path.exists():
                self._not_found(path)

    def _named(self, path: Path) -> tuple[str, Path]:
        """``(path relative to the root, path)``: the name a data file has in the fingerprint, so
        that a copy of the dataset elsewhere has the same one."""
        return path.relative_to(self.root).as_posix(), path

    def _check_not_empty(self, part: Part, n: int) -> None:
        if n == 0:
            self._not_found(f"no samples in the {part} part")

    def _not_found(self, missing: Path | str) -> NoReturn:
        raise DatasetNotFoundError(
            ROOT_KEY, self.root, f"{self.layout.rstrip()}\n(missing: {missing})"
        )

    # -- transforms ----------------------------------------------------------------------------

    def test_resize(self) -> list[Callable]:
        """Resizing of the test transform: none at the native size, else ``Resize(image_size)``."""
        if self.image_size == self.native_size:
            return []
        return [T.Resize(self.image_size, antialias=True)]

    def train_transform(self) -> Callable:
        """``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``."""
        steps: list[Callable] = [
            T.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True)
        ]
        if self.hflip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def test_transform(self) -> Callable:
        """:meth:`test_resize` + ``ToTensor`` + ``Normalize``."""
        return T.Compose([*self.test_resize(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def transform(self, augment: bool) -> Callable:
        """The train transform if ``augment`` else the test transform."""
        return self.train_transform() if augment else self.test_transform()


class _InMemorySource(RealImageSource):
    """Sources whose whole split fits in memory as uint8 ``N×H×W×C`` arrays, loaded once.

    Their loaders fetch whole batches from tensors (:meth:`in_memory`, issue #10):

    * test transform: the images once through exactly the per-sample ops (``Resize`` by PIL if
      the test transform resizes, then ``ToTensor`` = ``/255`` and ``Normalize`` in float32), so
      the tensors equal the per-sample items; ``None`` (per-sample fetches) if they would exceed
      :attr:`max_in_memory_bytes`;
    * train transform with ``augment_impl="batched"``: the uint8 images ``N×C×H×W`` and
      :meth:`batch_augment`, a :class:`~datamodules.batch_augment.BatchAugment` with this
      source's crop scale, flip and normalisation, applied per fetched batch;
      ``augment_impl="per_sample"``: ``None``, i.e. torchvision's PIL transforms per sample.

    Args:
        augment_impl: ``batched`` (default) or ``per_sample`` (config key
            ``dataset.augment_impl``); the other arguments are :class:`RealImageSource`'s.
    """

    #: largest test-transformed float tensor of one part kept in memory; a bigger one (a large
    #: ``image_size``) is served per sample instead.
    max_in_memory_bytes: int = 4 << 30

    def __init__(self, *args: Any, augment_impl: str = "batched", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if augment_impl not in AUGMENT_IMPLS:
            raise DataConfigError(
                "dataset.augment_impl", augment_impl, f"choose one of {list(AUGMENT_IMPLS)}"
            )
        self.augment_impl = str(augment_impl)
        self._parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tensors: dict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    @abstractmethod
    def load_part(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        """Read ``part`` from disk: uint8 images ``N×H×W×3`` and int64 labels ``(N,)``."""

    def arrays(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        """The cached ``(images, labels)`` of ``part``; reads the files on first use."""
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        if part not in self._parts:
            self.check()
            images, labels = self.load_part(part)
            labels = np.asarray(labels, dtype=np.int64)
            if len(images) != len(labels):
                raise DataConfigError(
                    ROOT_KEY,
                    str(self.root),
                    f"the {part} files hold {len(images)} images but {len(labels)} labels",
                )
            self._check_labels(labels)
            self._parts[part] = (images, labels)
        return self._parts[part]

    def check_contents(self) -> None:
        """Read both parts (train and test): every file is unpickled or loaded and its images and
        labels checked. The job holds them in memory anyway, so this only moves the reading of
        the test files from the evaluation to start-up."""
        self.check()
        for part in ("train", "test"):
            self._check_not_empty(part, len(self.arrays(part)[1]))

    def data_files(self) -> list[tuple[str, Path]]:
        """The data files (:meth:`required_paths` are exactly the files of both parts)."""
        return [self._named(path) for path in self.required_paths()]

    def dataset(self, part: Part, augment: bool) -> Dataset:
        images, labels = self.arrays(part)
        return ArrayImageDataset(images, labels, self.transform(augment))

    def targets(self, part: Part) -> np.ndarray:
        return self.arrays(part)[1].copy()

    def in_memory(self, part: Part, augment: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Test transform: the items of ``dataset(part, False)`` stacked, float32 ``N×3×S×S``.
        Train transform: the stored uint8 images ``N×3×H×W``, to go through
        :meth:`batch_augment` per batch (``None`` with ``augment_impl="per_sample"``)."""
        if augment and self.augment_impl != "batched":
            return None
        key = (part, bool(augment))
        if key not in self._tensors:
            images, labels = self.arrays(part)
            if augment:
                x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            else:
                n_bytes = len(images) * self.in_channels * self.image_size**2 * 4
                if n_bytes > self.max_in_memory_bytes:
                    return None
                x = self.test_tensors(images)
            self._tensors[key] = (x, torch.from_numpy(labels))
        return self._tensors[key]

    def batch_augment(self) -> BatchAugment | None:
        """``RandomResizedCrop(image_size, crop_scale)`` + flip (p = 0.5 if ``hflip``) +
        ``Normalize(mean, std)`` on whole batches; ``None`` with ``augment_impl="per_sample"``."""
        if self.augment_impl != "batched":
            return None
        flip_p = 0.5 if self.hflip else 0.0
        return BatchAugment(self.image_size, self.crop_scale, self.mean, self.std, flip_p=flip_p)

    def test_tensors(self, images: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        """uint8 ``N×H×W×C`` images through the test transform, stacked: float32 ``N×C×S×S``.

        The same operations as the per-sample ``test_transform()`` in the same order and dtype —
        PIL ``Resize`` when :meth:`test_resize` has one, ``ToTensor`` (``x.float() / 255``) and
        ``Normalize`` (``(x − mean) / std``, float32) — so the result equals the stacked items.
        """
        resize = T.Compose(self.test_resize()) if self.test_resize() else None
        mean = torch.as_tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.as_tensor(self.std, dtype=torch.float32)[:, None, None]
        n, size = len(images), self.image_size
        out = torch.empty(n, images.shape[-1], size, size, dtype=torch.float32)
        for start in range(0, n, chunk):
            block = images[start : start + chunk]
            if resize is not None:
                block = np.stack([np.asarray(resize(Image.fromarray(im))) for im in block])
            pixels = torch.from_numpy(block).permute(0, 3, 1, 2).float().div(255)
            out[start : start + len(block)] = pixels.sub_(mean).div_(std)
        return out


# --------------------------------------------------------------------------------------------
# CIFAR


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, lists, dicts and strings and nothing else: a
    pickle in a data directory naming any other callable (``os.system``...) is refused instead of
    executed."""

    ALLOWED = frozenset(
        (module, name)
        for core in ("numpy.core", "numpy._core")
        for module, name in (
            (f"{core}.multiarray", "_reconstruct"),
            (f"{core}.multiarray", "scalar"),
            (f"{core}.numeric", "_frombuffer"),
        )
    ) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """Read one python-version CIFAR batch as a dict with ``str`` keys.

    The official files are Python 2 pickles: loaded with ``encoding="latin1"`` (what numpy
    recommends for Python 2 arrays) their keys are ``str``, with ``encoding="bytes"`` they are
    ``bytes`` (``b"data"``, ``b"labels"``...). Files rewritten under Python 3 may have either, so
    both are accepted and normalised to ``str``. Only numpy arrays and plain containers are
    rebuilt (:class:`_ArraysOnlyUnpickler`): loading a data file never executes code.
    """
    try:
        with open(path, "rb") as f:
            raw = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataConfigError(
            ROOT_KEY, str(path), f"not a readable CIFAR batch ({exc}); re-extract the archive"
        ) from None
    if not isinstance(raw, dict):
        raise DataConfigError(ROOT_KEY, str(path), "not a CIFAR batch (expected a pickled dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def cifar_images(batch: dict[str, Any], path: Path) -> np.ndarray:
    """``batch["data"]`` (rows of 3072 bytes: 1024 R, 1024 G, 1024 B) as uint8 ``N×32×32×3``."""
    if "data" not in batch:
        raise DataConfigError(ROOT_KEY, str(path), "CIFAR batch has no 'data' entry")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataConfigError(
            ROOT_KEY, str(path), f"CIFAR 'data' must be N×3072 uint8, got shape {data.shape}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def cifar_labels(batch: dict[str, Any], key: str, path: Path) -> np.ndarray:
    """The label list ``batch[key]`` as int64."""
    if key not in batch:
        raise DataConfigError(
            ROOT_KEY, str(path), f"CIFAR batch has no {key!r} entry (keys: {sorted(batch)})"
        )
    return np.asarray(batch[key], dtype=np.int64).reshape(-1)


class CIFAR10(_InMemorySource):
    """CIFAR-10 from the python-version batches (50,000 train / 10,000 test, 10 classes).

    A small reader of our own instead of ``torchvision.datasets.CIFAR10``: torchvision verifies
    the md5 checksum of every batch file, which the tiny stand-in files used in tests (and any
    re-packed copy) cannot pass. Nothing is ever downloaded.
    """

    default_name, default_num_classes = "cifar10", 10
    layout = (
        "<dataset.root>/cifar-10-batches-py/\n"
        "    data_batch_1 ... data_batch_5   (python pickles: 'data' N×3072 uint8, 'labels')\n"
        "    test_batch"
    )
    default_mean, default_std = CIFAR10_MEAN, CIFAR10_STD
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"

    def _files(self, part: Part) -> list[Path]:
        names = self.train_files if part == "train" else self.test_files
        return [self.root / self.folder / n for n in names]

    def required_paths(self) -> list[Path]:
        return self._files("train") + self._files("test")

    def load_part(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for path in self._files(part):
            batch = read_cifar_pickle(path)
            images.append(cifar_images(batch, path))
            labels.append(cifar_labels(batch, self.label_key, path))
        return np.concatenate(images), np.concatenate(labels)


class CIFAR100(CIFAR10):
    """CIFAR-100 with its 100 fine labels (``fine_labels``), from ``cifar-100-python/``.

    Same own-reader rationale as :class:`CIFAR10` (torchvision checks md5 sums).
    """

    default_name, default_num_classes = "cifar100", 100
    layout = (
        "<dataset.root>/cifar-100-python/\n"
        "    train   (python pickle: 'data' N×3072 uint8, 'fine_labels', 'coarse_labels')\n"
        "    test"
    )
    default_mean, default_std = CIFAR100_MEAN, CIFAR100_STD
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"


class CIFAR20(CIFAR100):
    """CIFAR-100 labelled with its 20 coarse super-classes (``coarse_labels``).

    The 100 fine labels stay available through :meth:`fine_targets`, e.g. for a split that
    forgets one sub-class of a super-class. Same files and reader as :class:`CIFAR100`.
    """

    default_name, default_num_classes = "cifar20", 20
    label_key = "coarse_labels"

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._fine: dict[str, np.ndarray] = {}

    def load_part(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        images, fine, coarse = [], [], []
        for path in self._files(part):
            batch = read_cifar_pickle(path)
            images.append(cifar_images(batch, path))
            fine.append(cifar_labels(batch, "fine_labels", path))
            coarse.append(cifar_labels(batch, self.label_key, path))
        self._fine[part] = np.concatenate(fine)
        return np.concatenate(images), np.concatenate(coarse)

    def fine_targets(self, part: Part) -> np.ndarray:
        """The CIFAR-100 fine labels (0..99) of ``part``, int64, aligned with :meth:`targets`."""
        self.arrays(part)
        return self._fine[part].copy()


# --------------------------------------------------------------------------------------------
# SVHN


class SVHN(_InMemorySource):
    """SVHN cropped digits (73,257 train / 26,032 test) from the ``*_32x32.mat`` files.

    ``X`` is stored ``32×32×3×N`` and ``y`` uses label 10 for the digit 0; both are converted
    (``N×32×32×3``, 10 → 0). ``hflip`` defaults to ``False`` here: a mirrored digit is not the
    same digit, so the train transform is ``RandomResizedCrop`` only unless asked otherwise.
    """

    default_name, default_num_classes = "svhn", 10
    layout = (
        "<dataset.root>/\n"
        "    train_32x32.mat   (MATLAB: 'X' 32×32×3×N uint8, 'y' N×1 with 10 for digit 0)\n"
        "    test_32x32.mat"
    )
    default_mean, default_std = SVHN_MEAN, SVHN_STD
    default_hflip = False

    def _file(self, part: Part) -> Path:
        return self.root / f"{part}_32x32.mat"

    def required_paths(self) -> list[Path]:
        return [self._file("train"), self._file("test")]

    def load_part(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        path = self._file(part)
        mat = loadmat(str(path))
        if "X" not in mat or "y" not in mat:
            raise DataConfigError(ROOT_KEY, str(path), "SVHN .mat file must hold 'X' and 'y'")
        x = np.asarray(mat["X"])
        if x.ndim != 4 or x.shape[2] != 3:
            raise DataConfigError(
                ROOT_KEY, str(path), f"SVHN 'X' must be 32×32×3×N, got shape {x.shape}"
            )
        images = np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8, copy=False))
        labels = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        labels[labels == 10] = 0
        return images, labels


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet and ImageNet (lazily decoded files)


class _FileSource(RealImageSource):
    """Sources whose images stay on disk: the ``(path, label)`` listing is built once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._samples: dict[str, list[tuple[str, int]]] = {}

    @abstractmethod
    def list_part(self, part: Part) -> list[tuple[str, int]]:
        """``(path, label)`` of every image of ``part`` in a fixed (sorted) order."""

    def samples(self, part: Part) -> list[tuple[str, int]]:
        """The cached file listing of ``part``; scans the folders on first use."""
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        if part not in self._samples:
            self.check()
            samples = self.list_part(part)
            if not samples:
                self._not_found(f"no images for the {part} part")
            self._check_labels(np.fromiter((y for _, y in samples), dtype=np.int64))
            self._samples[part] = samples
        return self._samples[part]

    #: metadata files (beside the images) that determine the labels, relative to the root
    label_files: tuple[str, ...] = ()

    def check_contents(self) -> None:
        """List both parts (every label checked, :meth:`samples`) and open the header of the
        first image of each class in each part, without decoding: one open per class and part,
        not one per image (1.3 M for ImageNet)."""
        self.check()
        for part in ("train", "test"):
            first: dict[int, str] = {}
            for path, label in self.samples(part):
                first.setdefault(label, path)
            for path in first.values():
                try:
                    with Image.open(path) as img:
                        img.size  # noqa: B018 - the header is parsed on open; size proves it
                except (OSError, ValueError) as exc:
                    raise DataConfigError(
                        ROOT_KEY, str(self.root), f"{path} is not a readable image ({exc})"
                    ) from None

    def data_files(self) -> list[tuple[str, Path]]:
        """The label files and every image of both parts (their folders name the classes)."""
        files = [self._named(self.root / name) for name in self.label_files]
        for part in ("train", "test"):
            files.extend(self._named(Path(path)) for path, _ in self.samples(part))
        return files

    def dataset(self, part: Part, augment: bool) -> Dataset:
        return FileImageDataset(self.samples(part), self.transform(augment))

    def targets(self, part: Part) -> np.ndarray:
        samples = self.samples(part)
        return np.fromiter((y for _, y in samples), dtype=np.int64, count=len(samples))


class TinyImageNet(_FileSource):
    """Tiny-ImageNet-200 (100,000 train / 10,000 labelled val images, 64×64, 200 classes).

    ``root`` is the ``tiny-imagenet-200`` folder itself. The val set (labels from
    ``val/val_annotations.txt``) is the test part; the unlabelled ``test/`` folder is ignored.
    Class index ``i`` is the i-th wnid of ``wnids.txt`` in sorted order, i.e. what
    ``ImageFolder`` on ``train/`` gives.
    """

    default_name, default_num_classes = "tiny_imagenet", 200
    native_size = 64
    layout = (
        "<dataset.root>/            (the tiny-imagenet-200 folder)\n"
        "    wnids.txt             (one wnid per line)\n"
        "    train/<wnid>/images/*.JPEG\n"
        "    val/images/*.JPEG\n"
        "    val/val_annotations.txt   (tab-separated: filename, wnid, x0, y0, x1, y1)"
    )
    default_mean, default_std = TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
    label_files = ("wnids.txt", "val/val_annotations.txt")

    def required_paths(self) -> list[Path]:
        return [
            self.root / "wnids.txt",
            self.root / "train",
            self.root / "val" / "images",
            self.root / "val" / "val_annotations.txt",
        ]

    def class_to_idx(self) -> dict[str, int]:
        """``wnid → class index`` from ``wnids.txt`` (sorted)."""
        text = (self.root / "wnids.txt").read_text()
        wnids = sorted({line.strip() for line in text.splitlines() if line.strip()})
        return {wnid: i for i, wnid in enumerate(wnids)}

    def list_part(self, part: Part) -> list[tuple[str, int]]:
        classes = self.class_to_idx()
        samples: list[tuple[str, int]] = []
        if part == "train":
            for wnid, idx in classes.items():
                folder = self.root / "train" / wnid / "images"
                if not folder.is_dir():
                    self._not_found(folder)
                names = sorted(e.name for e in os.scandir(folder) if _is_image(e.name))
                samples.extend((str(folder / n), idx) for n in names)
            return samples
        annotations = self.root / "val" / "val_annotations.txt"
        for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in classes:
                raise DataConfigError(
                    ROOT_KEY,
                    str(self.root),
                    f"{annotations}:{lineno}: expected 'filename<TAB>wnid<TAB>...' with a wnid "
                    f"from wnids.txt, got {line!r}",
                )
            samples.append((str(self.root / "val" / "images" / fields[0]), classes[fields[1]]))
        return sorted(samples)


class ImageNet(_FileSource):
    """ImageNet-1K (or any RGB image-folder dataset): ``train/<class>/*`` and ``val/<class>/*``.

    Class index = position of the folder name in the sorted list of ``train/`` folders; ``val/``
    must have the same class folders. Files are listed with torchvision's ``make_dataset``
    (no decoding), so :meth:`targets` is cheap. Test transform: ``Resize(test_resize_size)`` +
    ``CenterCrop(image_size)`` (256/224 by default, the usual ImageNet evaluation).
    """

    default_name, default_num_classes = "imagenet", 1000
    default_image_size = 224
    default_crop_scale = (0.08, 1.0)
    layout = (
        "<dataset.root>/\n"
        "    train/<class>/*.JPEG   (one folder per class, e.g. n01440764)\n"
        "    val/<class>/*.JPEG     (the same class folders as train/)"
    )
    default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, root: str, test_resize_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.test_resize_size = (
            int(test_resize_size)
            if test_resize_size is not None
            else round(self.image_size * 256 / 224)
        )
        if self.test_resize_size < self.image_size:
            raise DataConfigError(
                "dataset.test_resize_size",
                test_resize_size,
                f"must be at least dataset.image_size={self.image_size}",
            )

    def required_paths(self) -> list[Path]:
        return [self.root / "train", self.root / "val"]

    def test_resize(self) -> list[Callable]:
        return [T.Resize(self.test_resize_size, antialias=True), T.CenterCrop(self.image_size)]

    def class_to_idx(self) -> dict[str, int]:
        """``class folder → index`` (sorted ``train/`` folders); checks ``val/`` has the same."""
        train = _class_folders(self.root / "train")
        val = _class_folders(self.root / "val")
        if train != val:
            only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
            raise DataConfigError(
                ROOT_KEY,
                str(self.root),
                "train/ and val/ must have the same class folders; only in train/: "
                f"{only_train[:5]}{'...' if len(only_train) > 5 else ''}, only in val/: "
                f"{only_val[:5]}{'...' if len(only_val) > 5 else ''}",
            )
        if not train:
            self._not_found(self.root / "train" / "<class>")
        return {c: i for i, c in enumerate(train)}

    def list_part(self, part: Part) -> list[tuple[str, int]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        folder = self.root / ("train" if part == "train" else "val")
        return make_dataset(
            str(folder), self.class_to_idx(), extensions=IMG_EXTENSIONS, allow_empty=True
        )


def _is_image(filename: str) -> bool:
    return filename.lower().endswith((".jpeg", ".jpg", ".png"))


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
