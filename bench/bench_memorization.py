"""Benchmark: members trained per second by each memorization strategy (SPEC §4, issue 4).

Usage::

    python bench/bench_memorization.py            # ratios (3 repeats × 32 members), then K=128
    python bench/bench_memorization.py --quick    # 2 repeats × 16 members, 3 epochs, no K=128
    python bench/bench_memorization.py --repeats 5 --members 32 --chunks 8 16 32

Setting: the embedded digits train set S (1,438 images, 1×8×8), the default backbone
``SmallCNN(width=32)``, members trained as in a default estimate (|S_k| = 0.7·|S| = 1,007
samples, batch 64, SGD momentum 0.9, weight decay 5e-4, cosine lr from 0.1; ``--epochs``, default
10) and then evaluated on all of S — exactly what
:func:`unlearning.memorization.estimator.train_members`
does inside :func:`~unlearning.memorization.estimator.estimate_memorization`.

Variants, each training the same ``--members`` members (same seeds) once per repeat, in an order
rotated every repeat so that load drift of the (shared) machine hits all of them alike:

* ``loop_1t``   — ``strategy="sequential"`` with ``torch.set_num_threads(1)``: the baseline;
* ``loop_2t``   — the same loop with two intra-op threads;
* ``vmap_c<c>`` — ``strategy="vmap"``, chunks of c members as one ensemble, one thread;
* ``vmap_c<c>_2t`` — the largest chunk with two threads;
* ``proc_2w``   — ``strategy="processes"``, two spawned workers with one thread each, timed end to
  end (worker start-up included; it is also measured on its own and printed).

For each variant: members/s (median over repeats) and the ratio to ``loop_1t`` (median of the
per-repeat ratios, with min–max). Then (not with ``--quick``) the wall time of a full default
estimate, K = 128 members, with the fastest variant. Nothing here asserts: it reports.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Aim, Row
from datamodules.embedded import Digits
from unlearning.memorization.estimator import (
    TrainConfig,
    estimate_memorization,
    subset_masks,
    train_members,
)
from unlearning.models import SmallCNN

FRACTION = 0.7
BASELINE = "loop_1t"


def make_variants(chunks: list[int], workers: int) -> dict[str, dict]:
    """Name → (strategy, threads, chunk_size, workers) of every timed variant."""
    variants = {
        "loop_1t": dict(strategy="sequential", threads=1),
        "loop_2t": dict(strategy="sequential", threads=2),
    }
    for c in chunks:
        variants[f"vmap_c{c}"] = dict(strategy="vmap", threads=1, chunk_size=c)
    variants[f"vmap_c{max(chunks)}_2t"] = dict(strategy="vmap", threads=2, chunk_size=max(chunks))
    variants[f"proc_{workers}w"] = dict(strategy="processes", threads=1, workers=workers)
    return variants


def time_variant(
    make_model: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    masks: np.ndarray,
    cfg: TrainConfig,
    spec: dict,
) -> float:
    """Seconds to train and evaluate ``len(masks)`` members with one variant."""
    old = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        t0 = time.perf_counter()
        for _ in train_members(
            make_model,
            x,
            y,
            range(len(masks)),
            masks,
            cfg,
            strategy=spec["strategy"],
            chunk_size=spec.get("chunk_size", 32),
            workers=spec.get("workers", 2),
        ):
            pass
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)


#: per run size: (members, epochs, repeats) of the table's vmap-vs-loop comparison
PLAN = {"full": (16, 3, 2), "quick": (8, 2, 2), "smoke": (2, 1, 1)}
AIM = Aim(">=", 4.0)


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    """Item 3 (memorization) of the table: members/s of the vectorised ensemble
    (``strategy="vmap"``, all members in one chunk) over the sequential loop, both with one
    thread as a default estimate runs them, in alternating order per repeat."""
    members, epochs, repeats = PLAN[size]
    x, y = (lambda d: (d.x, d.y))(Digits().dataset("train", augment=False))
    make_model = functools.partial(SmallCNN, num_classes=10, in_channels=1, width=32)
    masks = subset_masks(len(y), members, FRACTION, seed=0)
    cfg = TrainConfig(epochs=epochs)
    specs = {
        "sequential": dict(strategy="sequential", threads=1),
        "vmap": dict(strategy="vmap", threads=1, chunk_size=members),
    }
    for spec in specs.values() if size != "smoke" else ():  # warm-up outside the timings
        time_variant(make_model, x, y, masks[:2], TrainConfig(epochs=1), spec)
    seconds: dict[str, list[float]] = {k: [] for k in specs}
    for r in range(repeats):
        for name in specs if r % 2 == 0 else list(specs)[::-1]:
            seconds[name].append(time_variant(make_model, x, y, masks, cfg, specs[name]))
    ratio = statistics.median(s / v for s, v in zip(seconds["sequential"], seconds["vmap"]))
    note = (
        f"digits SmallCNN, {members} members × {epochs} epochs, |S_k| = {int(masks[0].sum())}, "
        f"1 thread; sequential {members / min(seconds['sequential']):.2f} members/s"
    )
    details = {f"{k}_s": min(v) for k, v in seconds.items()}
    return [Row("3", "vmap ensemble / sequential members: memorization", ratio, AIM, note, details)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2×16 members, 3 epochs, no K=128")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--members", type=int, default=None, help="members per variant/repeat")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--chunks", type=int, nargs="+", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full-members", type=int, default=128, help="K of the full estimate")
    parser.add_argument("--skip-full", action="store_true", help="no full K=128 estimate")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    members = args.members or (16 if args.quick else 32)
    epochs = args.epochs or (3 if args.quick else 10)
    chunks = sorted(args.chunks or ([4, 8, 16] if args.quick else [8, 16, 32]))

    x, y = (lambda d: (d.x, d.y))(Digits().dataset("train", augment=False))
    make_model = functools.partial(SmallCNN, num_classes=10, in_channels=1, width=32)
    masks = subset_masks(len(y), members, FRACTION, seed=0)
    cfg = TrainConfig(epochs=epochs)
    variants = make_variants(chunks, args.workers)

    print(
        f"memorization bench: torch {torch.__version__}, os.cpu_count()={os.cpu_count()}, "
        f"load avg {os.getloadavg()[0]:.2f}; |S|={len(y)}, |S_k|={int(masks[0].sum())}, "
        f"SmallCNN(32), epochs={epochs}, batch=64; {members} members per variant × {repeats} "
        "repeats",
        flush=True,
    )
    # Warm-up (lazy init of kernels and allocators) outside the timings.
    time_variant(make_model, x, y, masks[:2], TrainConfig(epochs=1), variants["loop_1t"])
    time_variant(make_model, x, y, masks[:2], TrainConfig(epochs=1), variants[f"vmap_c{chunks[0]}"])
    t0 = time.perf_counter()
    time_variant(
        make_model, x, y, masks[:2], TrainConfig(epochs=0), variants[f"proc_{args.workers}w"]
    )
    startup = time.perf_counter() - t0
    print(f"process pool start-up (spawn, import torch, 2 evals): {startup:.1f} s", flush=True)

    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds[name].append(time_variant(make_model, x, y, masks, cfg, variants[name]))
        line = ", ".join(f"{n} {members / seconds[n][-1]:.2f}" for n in names)
        print(f"repeat {r + 1}/{repeats} (members/s): {line}", flush=True)

    print(f"\n{'variant':<14} {'members/s':>10} {'s/member':>9} {'× loop_1t':>10} {'min–max':>12}")
    ratios: dict[str, float] = {}
    for name in names:
        per_repeat = [seconds[BASELINE][i] / seconds[name][i] for i in range(repeats)]
        ratios[name] = statistics.median(per_repeat)
        rate = members / statistics.median(seconds[name])
        print(
            f"{name:<14} {rate:>10.2f} {1 / rate:>9.3f} {ratios[name]:>10.2f} "
            f"{min(per_repeat):>5.2f}–{max(per_repeat):<5.2f}"
        )
    best = max(ratios, key=ratios.get)
    print(f"\nfastest: {best} ({ratios[best]:.2f}× loop_1t); load avg {os.getloadavg()[0]:.2f}")

    if args.quick or args.skip_full:
        return
    spec = variants[best]
    print(
        f"\nfull default estimate: K={args.full_members}, epochs=10, strategy={spec['strategy']}, "
        f"threads={spec['threads']}, chunk={spec.get('chunk_size', '-')} ...",
        flush=True,
    )
    res = estimate_memorization(
        make_model,
        x,
        y,
        members=args.full_members,
        strategy=spec["strategy"],
        chunk_size=spec.get("chunk_size", 32),
        workers=spec.get("workers", 2),
        threads=spec["threads"],
        progress=False,
    )
    s = res.scores[~np.isnan(res.scores)]
    print(
        f"wall time {res.seconds:.1f} s ({res.seconds / res.members:.3f} s/member); "
        f"in-subset acc {res.correct[res.in_mask].mean():.3f}, "
        f"held-out acc {res.correct[~res.in_mask].mean():.3f}; scores: mean {s.mean():.3f}, "
        f"> 0.5: {(s > 0.5).sum()}, in [0.25, 0.75]: {((s >= 0.25) & (s <= 0.75)).sum()}, "
        f"median stderr {np.nanmedian(res.stderr):.3f}, max stderr {np.nanmax(res.stderr):.3f}, "
        f"undefined {res.undefined}; load avg {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
