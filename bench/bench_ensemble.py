"""Benchmark item 3: members per second of the ensemble engine's trainer (issue #15).

Usage::

    python bench/bench_ensemble.py            # 4 members (8 models) × 3 repeats, processes, K=128
    python bench/bench_ensemble.py --quick    # 2 members × 2 repeats, 5 epochs, no K=128

Setting: the embedded default (``python train.py``: digits, ``SmallCNN(32)``, the pretraining
recipe: SGD momentum 0.9, weight decay 5e-4, lr 0.1 cosine-annealed, batch 64, 15 epochs). A
*member* k is what ``python train.py pretrain.seed=k method=retrain eval=none`` trains: f_A^k on
S and the oracle f_A^k(R) on R = S minus the job's forget set (2 models). Per repeat, in
alternating order, the same members are trained by:

* ``engine``    — :func:`unlearning.pipeline.stages.fast_training.fast_train_from_scratch`, what
  the ensemble engine and the memorization estimate train members with on the CPU: each member's
  config, the stage's datamodule, seeding and optimizer, ``model.pt`` written;
* ``plain``     — the best plain-PyTorch loop for the same recipe: the same seeded model and
  batches (one ``randperm`` per epoch over in-memory tensors), ``loss.backward()`` and an SGD
  step, no framework at all; the weights are not saved. Like the engine (and the Trainer) it
  runs under ``torch.use_deterministic_algorithms`` when ``trainer.deterministic`` is true (the
  CPU preset's setting, part of the recipe's numerics; it costs the loop ~4 % here);
* ``lightning`` — the Lightning stage :func:`unlearning.pipeline.stages.training.
  train_from_scratch` (Trainer, checkpoint and RNG-state callbacks, divergence guard, CSV
  logger), which the fast path replaces and matches bit for bit;

and once (not with ``--smoke``) by N separate ``python train.py`` processes (each starts
Python, composes and validates its config, fingerprints the data, pretrains, splits and trains
the oracle). Rows: engine / plain (aim ≤ 1.10), lightning / engine and processes / engine
(reported), and, at full size, the wall time of the Feldman–Zhang estimate with K = 128 members
(``python train.py split=mem_high`` on an empty cache, its memorization stage) against 60 s.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPORT, Aim, Row, compose_config, interleaved, paired_ratio

AIM = Aim("<=", 1.10)
FZ_AIM = Aim("<=", 1.0)
FZ_SECONDS = 60.0
#: members per repeat, epochs (None: the recipe's 15), repeats, train.py processes
PLAN = {"full": (4, None, 3, 3), "quick": (2, 5, 2, 2), "smoke": (1, 1, 1, 0)}


def plain_fit(cfg, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray) -> None:
    """The recipe as a hand loop: seeded model, SGD(momentum, weight decay), cosine per epoch,
    shuffled batches of ``x[rows]``, the last smaller batch kept; deterministic algorithms as
    ``trainer.deterministic`` asks."""
    from hydra.utils import instantiate

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic")))
    try:
        _plain_loop(cfg, x, y, rows, instantiate)
    finally:
        torch.use_deterministic_algorithms(before)


def _plain_loop(cfg, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, instantiate) -> None:
    """:func:`plain_fit`'s loop (module doc)."""
    torch.manual_seed(int(cfg.pretrain.seed))
    net = instantiate(cfg.model)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.pretrain.lr, momentum=0.9, weight_decay=5e-4)
    epochs, batch = int(cfg.pretrain.epochs), int(cfg.pretrain.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xs, ys = x[rows], y[rows]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(ys))
        for start in range(0, len(ys), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    """Item 3 of the table (module doc)."""
    from omegaconf import OmegaConf, open_dict

    from bench.bench_sweep import train_py
    from datamodules.sources import build_source
    from datamodules.splits import select_split
    from unlearning.pipeline.stages.fast_training import fast_path_reason, fast_train_from_scratch
    from unlearning.pipeline.stages.training import train_from_scratch

    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    members, epochs, repeats, processes = PLAN[size]
    work = Path(work or tempfile.mkdtemp(prefix="bench-ensemble-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([], work / "out", work / "cache")
    if epochs is not None:
        with open_dict(cfg):
            cfg.pretrain.epochs = epochs
    assert fast_path_reason(cfg) is None, fast_path_reason(cfg)
    source = build_source(cfg.dataset)
    split = select_split(OmegaConf.to_container(cfg.split, resolve=True), source, None, None)
    forget = np.asarray(split.forget)
    x, y = source.in_memory("train", False)
    retain = np.setdiff1d(np.arange(len(y)), forget)
    configs = []
    for k in range(members):
        member = copy.deepcopy(cfg)
        member.pretrain.seed = k
        configs.append(member)
    runs = iter(range(10**6))

    def stage(trainer) -> float:
        t0 = time.perf_counter()
        for member in configs:
            for train_set, f in (("train", None), ("retain", forget)):
                out = work / f"fit-{next(runs)}"
                out.mkdir()
                trainer(member, source, f, train_set, out)
        return time.perf_counter() - t0

    def plain() -> float:
        t0 = time.perf_counter()
        for member in configs:
            plain_fit(member, x, y, np.arange(len(y)))
            plain_fit(member, x, y, retain)
        return time.perf_counter() - t0

    variants = {
        "engine": lambda: stage(fast_train_from_scratch),
        "plain": plain,
        "lightning": lambda: stage(train_from_scratch),
    }
    if size != "smoke":  # warm-up (kernels, allocator, imports) outside the timings
        for fn in variants.values():
            fn()
    seconds = interleaved(variants, repeats)
    models = 2 * members
    rate = {name: models / statistics.median(s) for name, s in seconds.items()}
    setting = (
        f"digits SmallCNN(32), {members} members (f_A^k and its oracle: {models} models) × "
        f"{cfg.pretrain.epochs} epochs, {torch.get_num_threads()} threads"
    )
    out = [
        Row(
            "3",
            "engine (fast path) / best plain PyTorch loop: ensemble members",
            paired_ratio(seconds, "engine", "plain"),
            AIM,
            f"{setting}; models/s: engine {rate['engine']:.2f}, plain {rate['plain']:.2f}",
            {f"{k}_s": min(v) for k, v in seconds.items()},
        ),
        Row(
            "3",
            "Lightning stage / engine: ensemble members",
            paired_ratio(seconds, "lightning", "engine"),
            REPORT,
            f"models/s: Lightning `train_from_scratch` {rate['lightning']:.2f} (same weights)",
        ),
    ]
    if processes:
        wall = []
        for k in range(processes):
            args = [f"pretrain.seed={k}", "method=retrain", "eval=none", "logger=none"]
            args += ["trainer.enable_progress_bar=false", f"hydra.run.dir={work / f'p{k}'}"]
            if epochs is not None:
                args.append(f"pretrain.epochs={epochs}")
            seconds_k, _ = train_py(args, work / f"pcache{k}", work / "plogs")
            wall.append(seconds_k)
        per_member = statistics.median(wall)
        engine_member = statistics.median(seconds["engine"]) / members
        out.append(
            Row(
                "3",
                "N separate `python train.py` processes / engine: ensemble members",
                per_member / engine_member,
                REPORT,
                f"{processes} processes `train.py pretrain.seed=k method=retrain eval=none` "
                f"(f_A^k + oracle each): {per_member:.1f} s per member against "
                f"{engine_member:.2f} s in the engine",
            )
        )
    if size == "full":
        out.append(fz_row(work))
    return out


def fz_row(work: Path) -> Row:
    """The Feldman–Zhang estimate at its default (K = 128, the pretraining recipe): the
    memorization stage's own wall time in ``python train.py split=mem_high`` on an empty cache,
    read from its log line, against :data:`FZ_SECONDS`."""
    import re
    import subprocess

    from bench.common import ROOT

    cache = work / "fz-cache"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "split=mem_high",
            "eval=none",
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={cache}",
            f"paths.log_dir={work / 'fz-logs'}",
            f"hydra.run.dir={work / 'fz-run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    log = proc.stdout + proc.stderr  # Hydra's job log goes to stdout
    found = re.search(r"memorization: 128 members \(128 trained\) in ([\d.]+) s", log)
    seconds = float(found.group(1)) if found else math.nan
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"train.py split=mem_high failed:\n{log[-2000:]}")
    return Row(
        "3",
        f"Feldman–Zhang estimate K = 128 / {FZ_SECONDS:g} s",
        seconds / FZ_SECONDS,
        FZ_AIM,
        f"`python train.py split=mem_high`, empty cache: memorization stage {seconds:.1f} s "
        "(memorization.workers=2 × threads=1, the fast path)",
    )


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import script_main

    return script_main(rows, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
