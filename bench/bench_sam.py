"""Benchmark: cost of a sharpness-aware step (SPEC §1, issue 3), measured side by side.

Usage::

    python bench/bench_sam.py            # full run (a few minutes on a 2-core CPU)
    python bench/bench_sam.py --quick    # fewer repeats and steps
    python bench/bench_sam.py --models cnn --repeats 20

For each model, on one fixed batch, four variants are timed per optimizer step, interleaved in
every repeat (so drift of the machine hits all of them alike):

* ``sgd_inline``  plain PyTorch: forward, backward, ``SGD.step``;
* ``sam_inline``  the same with SAM hand-inlined (first pass, ê = ρ g/‖g‖, perturb, BN momentum 0,
  second pass, restore by copy, step), i.e. what one writes without the framework;
* ``sgd_lightning`` a ``lightning.Trainer`` step of the framework's training module (``ERM``);
* ``sam_lightning`` the same Trainer step with the ``callbacks.sharpness.SAM`` callback.

Lightning steps are timed from ``on_train_batch_start`` to ``on_train_batch_end``. Each repeat
gives a median per variant after warm-up steps; the reported ratio is the median over repeats of
the per-repeat ratio. Ratios and their aims:

* ``SAM/SGD``: two forward/backward passes make 2.0 the floor; aim ≤ 2.1, both inline and
  through Lightning + callback;
* ``callback/inline``: Lightning + callback SAM step divided by (inline SAM step + Lightning's own
  per-step overhead, ``sgd_lightning − sgd_inline``): what the callback adds over hand-written
  SAM code in the same framework; aim ≤ 1.05. The raw ratio (``sam_lightning / sam_inline``,
  which also contains Lightning's fixed per-step cost) is printed for information.

Models: the framework's default small CNN (``unlearning.models.SmallCNN``) on 1×8×8 digits-size
inputs at batch 64, and torchvision ResNet-18 with a CIFAR stem (3×3 stride-1 conv1, no max-pool)
at 3×32×32, batch 32. This is a benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Aim, Row
from callbacks.sharpness import SAM
from unlearning.models import ResNet, SmallCNN

RHO, LR, MOMENTUM, WD = 0.1, 0.01, 0.9, 5e-4
AIM_SAM_SGD, AIM_CALLBACK = 2.1, 1.05
#: per run size, per model: (repeats, warm-up steps, timed steps) per repeat
PLAN = {
    "full": {"cnn": (7, 3, 30), "resnet18": (3, 1, 2)},
    "quick": {"cnn": (7, 3, 20), "resnet18": (3, 1, 2)},
    "smoke": {"cnn": (1, 1, 2)},  # ResNet-18 steps take seconds on a CPU: not in the smoke run
}


def make_model(name: str) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    """The model and one fixed batch (inputs, labels)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "cnn":
        net: nn.Module = SmallCNN(num_classes=10, in_channels=1, width=32)
        x = torch.randn(64, 1, 8, 8, generator=gen)
    elif name == "resnet18":
        net = ResNet(18, num_classes=10, in_channels=3, cifar_stem=True)
        x = torch.randn(32, 3, 32, 32, generator=gen)
    else:
        raise ValueError(f"--models: unknown model {name!r}; choose cnn, resnet18")
    return net, (x, torch.randint(0, 10, (len(x),), generator=gen))


def sgd(net: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)


# ----------------------------------------------------------------------------- plain PyTorch


def sgd_step(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()


def sam_step(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """SAM written by hand (davda54/sam style with exact restore and BN momentum 0)."""
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    params = [p for p in net.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm(2) for p in params]))
        scale = RHO / (norm + 1e-12)
        saved = [p.clone() for p in params]
        for p in params:
            p.add_(p.grad * scale)
    opt.zero_grad(set_to_none=True)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    F.cross_entropy(net(x), y).backward()
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
    opt.step()


def time_inline(
    step: Callable[..., None], net0: nn.Module, batch: tuple[Tensor, Tensor], warm: int, n: int
) -> list[float]:
    net = copy.deepcopy(net0).train()
    opt = sgd(net)
    times = []
    for i in range(warm + n):
        t0 = time.perf_counter()
        step(net, opt, *batch)
        if i >= warm:
            times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------- Lightning


def classifier(net: nn.Module) -> pl.LightningModule:
    """The framework's own training module (``unlearning.methods.erm.ERM``, what pretraining
    and the oracle run): cross-entropy on the batch, SGD with momentum and weight decay."""
    from functools import partial

    from unlearning.methods.erm import ERM

    optimizer = partial(torch.optim.SGD, momentum=MOMENTUM, weight_decay=WD)
    return ERM(net, optimizer=optimizer, lr=LR, train_set="train")


class StepTimer(pl.Callback):
    """Wall time from on_train_batch_start to on_train_batch_end (fetching excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._t0)


class RepeatBatch:
    """An iterable yielding the same batch ``n`` times (a loader Lightning accepts as is), as
    the framework's datamodule shapes it: ``{"train": (x, y)}``."""

    def __init__(self, batch: tuple[Tensor, Tensor], n: int) -> None:
        self.batch, self.n = {"train": batch}, n

    def __iter__(self) -> Any:
        return iter([self.batch] * self.n)

    def __len__(self) -> int:
        return self.n


def time_lightning(
    net0: nn.Module, batch: tuple[Tensor, Tensor], warm: int, n: int, sam: bool
) -> list[float]:
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer, SAM(rho=RHO)] if sam else [timer]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warm + n,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(classifier(copy.deepcopy(net0)), train_dataloaders=RepeatBatch(batch, warm + n))
    return timer.times[warm:]


# ----------------------------------------------------------------------------- driver


def bench_model(name: str, repeats: int, warm: int, n: int) -> dict[str, Any]:
    net0, batch = make_model(name)
    runs: dict[str, Callable[[], list[float]]] = {
        "sgd_inline": lambda: time_inline(sgd_step, net0, batch, warm, n),
        "sam_inline": lambda: time_inline(sam_step, net0, batch, warm, n),
        "sgd_lightning": lambda: time_lightning(net0, batch, warm, n, sam=False),
        "sam_lightning": lambda: time_lightning(net0, batch, warm, n, sam=True),
    }
    per_repeat: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))  # interleave, alternate order
        for key in order:
            per_repeat[key].append(statistics.median(runs[key]()))
    med = {k: statistics.median(v) for k, v in per_repeat.items()}

    Formula = Callable[[dict[str, float]], float]
    formulas: dict[str, tuple[Formula, float | None]] = {
        "SAM/SGD inline": (lambda t: t["sam_inline"] / t["sgd_inline"], AIM_SAM_SGD),
        "SAM/SGD Lightning+callback": (
            lambda t: t["sam_lightning"] / t["sgd_lightning"],
            AIM_SAM_SGD,
        ),
        "callback/inline (framework overhead removed)": (
            lambda t: t["sam_lightning"] / (t["sam_inline"] + t["sgd_lightning"] - t["sgd_inline"]),
            AIM_CALLBACK,
        ),
        "callback/inline raw (info)": (lambda t: t["sam_lightning"] / t["sam_inline"], None),
    }
    best = {k: min(v) for k, v in per_repeat.items()}
    ratios = {}
    for label, (f, aim) in formulas.items():
        paired = [f({k: per_repeat[k][i] for k in runs}) for i in range(repeats)]
        ratios[label] = (statistics.median(paired), f(best), aim)
    return {"median_ms": {k: 1e3 * v for k, v in med.items()}, "ratios": ratios}


def rows(size: str = "full", models: tuple[str, ...] = ("cnn", "resnet18")) -> list[Row]:
    """Item 1 of the table: SAM/SGD inline and through Lightning + callback, per model, and what
    the callback adds over hand-written SAM (median over repeats of the per-repeat ratio)."""
    labels = {
        "SAM/SGD inline": "SAM step / SGD step, plain PyTorch",
        "SAM/SGD Lightning+callback": "SAM step / SGD step, Lightning + SAM callback",
        "callback/inline (framework overhead removed)": "SAM callback / hand-written SAM",
    }
    out = []
    for name in models:
        if name not in PLAN[size]:
            out.append(
                Row(
                    "1",
                    f"SAM step / SGD step ({name})",
                    None,
                    Aim("<=", AIM_SAM_SGD),
                    f"not run with --{size}",
                )
            )
            continue
        repeats, warm, n = PLAN[size][name]
        result = bench_model(name, repeats, warm, n)
        ms = result["median_ms"]
        for label, (value, fastest, aim) in result["ratios"].items():
            if label not in labels:
                continue
            note = (
                f"{name}, {repeats}×{n} steps; best-repeat ratio {fastest:.2f}; "
                f"SGD {ms['sgd_inline']:.1f} ms, SAM {ms['sam_inline']:.1f} ms (inline)"
            )
            out.append(Row("1", f"{labels[label]} ({name})", value, Aim("<=", aim), note, ms))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--models", default="cnn,resnet18", help="comma list: cnn,resnet18")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    plan = PLAN["quick" if args.quick else "full"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rho={RHO}")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in plan:
            parser.error(f"--models: unknown model {name!r}; choose from {', '.join(plan)}")
        repeats, warm, n = plan[name]
        repeats = args.repeats or repeats
        t0 = time.perf_counter()
        result = bench_model(name, repeats, warm, n)
        took = time.perf_counter() - t0
        times = ", ".join(f"{k} {v:.2f} ms" for k, v in result["median_ms"].items())
        print(f"\n{name}: {repeats} repeats x {n} steps ({took:.0f} s): {times}")
        for label, (value, fastest, aim) in result["ratios"].items():
            rows.append((name, label, value, fastest, aim))
    print(
        "\nmedian: median over repeats of the per-repeat ratio (judged against the aim);"
        "\nbest: the ratio of each variant's fastest repeat (robust to background load)."
    )
    print(f"\n{'model':<9} {'ratio':<46} {'median':>7} {'best':>7} {'aim':>7}  ok")
    for name, label, value, fastest, aim in rows:
        aim_s = f"<={aim:.2f}" if aim is not None else "-"
        ok = "-" if aim is None else ("yes" if value <= aim else "NO")
        print(f"{name:<9} {label:<46} {value:>7.3f} {fastest:>7.3f} {aim_s:>7}  {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
