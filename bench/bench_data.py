"""Benchmark item 4: the in-memory tensor data path / a standard per-sample ``DataLoader``.

Usage::

    python bench/bench_data.py [--quick]

Setting: the embedded default's datamodule for NegGrad (``UnlearningDataModule`` with
``train_sets=("retain", "forget")``, B = 64, ``eval_batch_size`` = 1024). One measured pass is a
training epoch of joint retain/forget batches (``CombinedLoader``, ⌈|R|/B⌉ steps) and an
evaluation pass over R, F and D_test, data only (no model), with

* ``in_memory=True``:  :class:`datamodules.loaders.TensorBatches`, one ``x[idx]`` per batch;
* ``in_memory=False``: the per-sample path, ``__getitem__`` per sample and ``default_collate``.

Both give identical batches (tested in ``tests/datamodules``; training sets are iterated by
:class:`datamodules.loaders.DirectBatches`, the DataLoader's batches without its per-batch
machinery). The ratio is per-sample time / in-memory time, median over alternating repeats;
aim ≥ 3. The same epoch with the model's forward/backward (what a job sees) is in the note.

A second row covers in-memory data *with* a train augmentation (CIFAR-10/100/20, SVHN): one
shuffled pass over ``AUG_IMAGES[size]`` synthetic 32×32 RGB uint8 images at B = 128 through

* ``per_sample``: torchvision's ``RandomResizedCrop(32, (0.8, 1)) → RandomHorizontalFlip →
  ToTensor → Normalize`` on PIL images, item by item, and ``default_collate``
  (``dataset.augment_impl=per_sample``);
* ``batched``: :class:`datamodules.batch_augment.BatchAugment`, the same augmentation as one
  ``grid_sample`` per batch (``dataset.augment_impl=batched``, the default);

on the CPU (on a GPU the batched path runs on the device, where the per-sample one cannot).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Aim, Row
from bench.job import default_job

AIM = Aim(">=", 3.0)
PLAN = {"full": (7, 3), "quick": (5, 2), "smoke": (1, 1)}  # repeats, passes per repeat
AUG_IMAGES = {"full": 5000, "quick": 2000, "smoke": 256}
AUG_BATCH = 128


def one_pass(data, net=None, opt=None) -> int:
    """A training epoch of joint batches and an eval pass over R, F, D_test; returns batches."""
    n = 0
    for batch in data.train_dataloader():
        if isinstance(batch, tuple):  # CombinedLoader iterates (batch, batch_idx, loader_idx)
            batch = batch[0]
        n += 1
        if net is not None:
            xr, yr = batch["retain"][:2]
            xf, yf = batch["forget"][:2]
            loss = torch.nn.functional.cross_entropy(net(xr), yr) - 0.1 * (
                torch.nn.functional.cross_entropy(net(xf), yf)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for name in ("retain", "forget", "test"):
        for x, _ in data.eval_dataloader(name):
            n += 1
            if net is not None:
                with torch.no_grad():
                    net(x)
    return n


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    from datamodules.unlearning_datamodule import UnlearningDataModule
    from unlearning.pipeline.stages.training import load_model

    repeats, passes = PLAN[size]
    over = ["pretrain.epochs=1"] if size == "smoke" else []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        job = default_job(Path(work or tmp), over)
        net = load_model(job.cfg, job.pretrained)
    cfg = job.cfg

    def module(in_memory: bool) -> UnlearningDataModule:
        return UnlearningDataModule(
            job.source,
            job.forget,
            ("retain", "forget"),
            int(cfg.method.batch_size),
            int(cfg.eval_batch_size),
            in_memory=in_memory,
        )

    modules = {"in_memory": module(True), "per_sample": module(False)}
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the same work, weights unchanged
    for data in modules.values():  # warm-up: lazy tensors, first-call costs
        one_pass(data)
    seconds: dict[str, list[float]] = {k: [] for k in modules}
    with_model: dict[str, list[float]] = {k: [] for k in modules}
    for rep in range(repeats):
        for name in modules if rep % 2 == 0 else list(modules)[::-1]:
            t0 = time.perf_counter()
            for _ in range(passes):
                one_pass(modules[name])
            seconds[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one_pass(modules[name], net, opt)
            with_model[name].append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(seconds["per_sample"], seconds["in_memory"]))
    job_ratio = statistics.median(
        a / b for a, b in zip(with_model["per_sample"], with_model["in_memory"])
    )
    per_pass = {f"{k}_ms_per_pass": 1e3 * min(v) / passes for k, v in seconds.items()}
    note = (
        f"digits, train epoch (B = {cfg.method.batch_size}, R+F joint) + eval pass (batch "
        f"{cfg.eval_batch_size}); in-memory {per_pass['in_memory_ms_per_pass']:.0f} ms, "
        f"per-sample {per_pass['per_sample_ms_per_pass']:.0f} ms per pass; with the model's "
        f"steps the epoch is {job_ratio:.2f}× faster"
    )
    return [
        Row("4", "per-sample DataLoader / in-memory tensor batches", ratio, AIM, note, per_pass),
        augmentation_row(size),
    ]


def augmentation_row(size: str) -> Row:
    """Item 4 with a train augmentation: per-sample PIL transforms / :class:`BatchAugment`."""
    import numpy as np
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from datamodules.batch_augment import BatchAugment
    from datamodules.loaders import DirectBatches, TensorBatches
    from datamodules.real_datasets import CIFAR10_MEAN, CIFAR10_STD, ArrayImageDataset

    repeats = PLAN[size][0]
    images = np.random.default_rng(0).integers(0, 256, (AUG_IMAGES[size], 32, 32, 3), np.uint8)
    labels = np.zeros(len(images), dtype=np.int64)
    pil = T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.8, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    stored = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    augment = BatchAugment(32, (0.8, 1.0), CIFAR10_MEAN, CIFAR10_STD, flip_p=0.5)
    loaders = {
        "per_sample": DataLoader(
            ArrayImageDataset(images, labels, pil), batch_size=AUG_BATCH, shuffle=True
        ),
        "batched": DirectBatches(
            TensorBatches(stored, torch.from_numpy(labels), transform=augment),
            AUG_BATCH,
            shuffle=True,
        ),
    }
    seconds: dict[str, list[float]] = {k: [] for k in loaders}
    for rep in range(repeats):
        for name in loaders if rep % 2 == 0 else list(loaders)[::-1]:
            t0 = time.perf_counter()
            for _ in loaders[name]:
                pass
            seconds[name].append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(seconds["per_sample"], seconds["batched"]))
    per_pass = {f"{k}_ms_per_pass": 1e3 * min(v) for k, v in seconds.items()}
    note = (
        f"{len(images)} synthetic 32×32 RGB images, B = {AUG_BATCH}, RandomResizedCrop(0.8–1) + "
        f"flip + normalise: per-sample (PIL) {per_pass['per_sample_ms_per_pass']:.0f} ms, "
        f"batched (grid_sample) {per_pass['batched_ms_per_pass']:.0f} ms per pass, CPU"
    )
    name = "per-sample augmentation / batched augmentation (CIFAR-shaped)"
    return Row("4", name, ratio, AIM, note, per_pass)


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import script_main

    return script_main(rows, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
