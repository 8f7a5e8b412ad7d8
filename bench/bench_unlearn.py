"""Benchmark item 2: a framework unlearning epoch / the same NegGrad epoch written by hand.

Usage::

    python bench/bench_unlearn.py            # 8 epochs × 7 repeats
    python bench/bench_unlearn.py --quick    # 4 epochs × 3 repeats

Setting: the embedded default (``python train.py``: digits, ``SmallCNN``, NegGrad with the tuned
digits defaults α = 0.9, lr 0.02, B = 64, SGD momentum 0.9, weight decay 5e-4), from the cached
f_A. Per repeat, in alternating order:

* ``framework``      ``unlearning.pipeline.stages.unlearn`` as a job runs it: Lightning ``Trainer``,
  ``UnlearningDataModule`` joint batches (``CombinedLoader``), the CSV logger, per-epoch
  checkpoints with RNG states, the divergence guard, the timer; model load and save included;
* ``lightning_bare`` (diagnostic) the same module and datamodule in a bare ``Trainer`` (no
  logger, no checkpoints, no callbacks): what Lightning itself costs, to locate the overhead;
* ``hand``           a plain PyTorch loop over the same in-memory tensors: per step B shuffled
  retain samples and B forget samples (the forget order reshuffled when it runs out, as
  ``CombinedLoader(max_size_cycle)`` cycles it), loss α·CE(R) − (1−α)·CE(F) (000 eq. 4), SGD
  step; model load and save included.

The ratio is time per epoch framework / hand (median over repeats of the per-repeat ratio); aim
≤ 1.10. The steps are tiny (two forward/backward passes of a 30k-parameter CNN on 64 8×8
images), so per-step overhead is as visible here as it gets.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Aim, Row, interleaved, paired_ratio
from bench.job import DefaultJob, default_job

AIM = Aim("<=", 1.10)
PLAN = {"full": (8, 7), "quick": (4, 3), "smoke": (1, 1)}  # epochs, repeats


def framework(job: DefaultJob, epochs: int, run: int) -> float:
    """Seconds of ``stages.unlearn`` for ``epochs`` epochs, CSV logger as in a default job."""
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import open_dict

    from unlearning.pipeline import stages

    cfg = job.cfg.copy()
    with open_dict(cfg):
        cfg.method.epochs = epochs
    out = job.work / f"framework_{run}"
    loggers = [CSVLogger(str(out), name="csv", version="")]  # conf/logger/csv.yaml
    t0 = time.perf_counter()
    stages.unlearn(cfg, job.source, job.forget, job.pretrained, loggers, out)
    return time.perf_counter() - t0


def lightning_bare(job: DefaultJob, epochs: int) -> float:
    """Seconds of the same module and datamodule in a bare ``Trainer``."""
    import lightning as L
    from hydra.utils import instantiate

    from datamodules.unlearning_datamodule import UnlearningDataModule
    from unlearning.pipeline.stages.training import load_model

    cfg = job.cfg
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    module = instantiate(
        cfg.method, net=load_model(cfg, job.pretrained), optimizer=instantiate(cfg.optim.optimizer)
    )
    data = UnlearningDataModule(
        job.source, job.forget, module.train_sets, cfg.method.batch_size, cfg.eval_batch_size
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, data)
    torch.save(module.net.state_dict(), job.work / "bare.pt")
    return time.perf_counter() - t0


def hand(job: DefaultJob, epochs: int) -> float:
    """Seconds of the hand-written NegGrad loop (000 eq. 4) over the same data."""
    from hydra.utils import instantiate

    from unlearning.pipeline.stages.training import load_model

    cfg = job.cfg
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    net = load_model(cfg, job.pretrained).train()
    opt = instantiate(cfg.optim.optimizer)(net.parameters(), lr=cfg.method.lr)
    x, y = job.source.in_memory("train", augment=False)
    forget = torch.zeros(len(y), dtype=torch.bool)
    forget[torch.from_numpy(job.forget)] = True
    xr, yr, xf, yf = x[~forget], y[~forget], x[forget], y[forget]
    b, alpha = int(cfg.method.batch_size), float(cfg.alpha)
    for _ in range(epochs):
        order_r, order_f, j = torch.randperm(len(yr)), torch.randperm(len(yf)), 0
        for i in range(0, len(yr), b):
            if j >= len(yf):
                order_f, j = torch.randperm(len(yf)), 0
            ir, jf = order_r[i : i + b], order_f[j : j + b]
            j += b
            loss = alpha * F.cross_entropy(net(xr[ir]), yr[ir]) - (1 - alpha) * F.cross_entropy(
                net(xf[jf]), yf[jf]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    torch.save(net.state_dict(), job.work / "hand.pt")
    return time.perf_counter() - t0


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    """Item 2 of the table."""
    epochs, repeats = PLAN[size]
    with tempfile.TemporaryDirectory(prefix="bench_unlearn_") as tmp:
        job = default_job(Path(work or tmp), ["pretrain.epochs=1"] if size == "smoke" else [])
        hand(job, 1)  # warm-up: kernels, allocator, imports
        runs = itertools.count()
        variants = {
            "framework": lambda: framework(job, epochs, next(runs)),
            "lightning_bare": lambda: lightning_bare(job, epochs),
            "hand": lambda: hand(job, epochs),
        }
        if size == "smoke":  # the diagnostic variants are left out of the smoke run
            variants = {k: variants[k] for k in ("framework", "hand")}
        seconds = interleaved(variants, repeats)
    ratio = paired_ratio(seconds, "framework", "hand")
    per_epoch = {f"{k}_ms_per_epoch": 1e3 * min(v) / epochs for k, v in seconds.items()}
    best = min(seconds["framework"]) / min(seconds["hand"])
    note = (
        f"digits NegGrad, {_steps(job)} steps/epoch, {epochs} epochs × {repeats} repeats; "
        f"best-repeat ratio {best:.2f}"
    )
    if "lightning_bare" in seconds:
        note += (
            f"; the same module and data in a bare Trainer (no logger, checkpoints, callbacks) "
            f"{paired_ratio(seconds, 'lightning_bare', 'hand'):.2f}"
        )
    return [Row("2", "framework NegGrad epoch / hand-written loop", ratio, AIM, note, per_epoch)]


def _steps(job: DefaultJob) -> int:
    n_retain = len(job.source.targets("train")) - len(job.forget)
    return -(-n_retain // int(job.cfg.method.batch_size))


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import print_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print_table(rows("quick" if args.quick else "full"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
