r"""Lab ``experiment=theory/memorization_forgetting``: 003 §4.2, Fig. 2 ("the more you memorize,
the easier you forget").

Data of 003 Def. 3.8: ``x = [x⁽¹⁾; x⁽²⁾]``, one half ``y μ`` with ``μ = ‖μ‖ e_1``, the other
``ξ ~ N(0, σ² I_d)`` — :class:`datamodules.embedded.SignalNoise` with ``patches=2``. Model: the
two-layer ReLU CNN of 003 eq. 11 — :class:`unlearning.models.TwoLayerCNN` (its two logits
``[f_{−1}, f_{+1}]`` under cross-entropy give the logistic loss of ``f = f_{+1} − f_{−1}``).

Per cell (signal strength ‖μ‖, dimension d) and repeat: full-batch GD on n samples, then
NegGrad (003 eq. 3 on the real loss: descend ``(1−α)·CE(retain batch)``, ascend
``α·CE(forget batch)``, α the forget weight) with a random half as F, mini-batches of
``batch_size`` from each set, for ``unlearn_steps`` steps. Recorded: training loss and test
error after training, forget loss (mean CE on F) after unlearning. Repeats run in parallel
with ``torch.func.vmap`` over stacked weights and data sets.

The *memorization region* is where the training loss is ≤ ``fit_threshold`` but the test error
≥ ``memorization_error`` (003 §4.2: "training loss is low but test error high"). The headline
number is the Pearson correlation, over cells, between membership of that region and the
forget loss (point-biserial), beside the Spearman correlation of test error and forget loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from scipy import stats
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from datamodules.embedded import SignalNoise
from unlearning.models import TwoLayerCNN
from unlearning.outputs.plots import pyplot, save_figure
from unlearning.theory import checks
from unlearning.theory.output import finish, fmt, output_dir, write_csv
from unlearning.theory.runtime import single_threaded


def make_data(
    n_train: int, n_test: int, dim: int, signal: float, noise_std: float, seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked Def. 3.8 data sets, one per seed: ``x`` (R, n, 1, 2, d), ``y`` (R, n)."""
    parts = [
        SignalNoise(
            n_train=n_train,
            n_test=n_test,
            patches=2,
            dim=dim,
            signal_strength=signal,
            noise_std=noise_std,
            data_seed=s,
        ).load()
        for s in seeds
    ]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def train_and_unlearn(
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    width: int,
    init_std: float,
    epochs: int,
    lr: float,
    unlearn_lr: float,
    unlearn_steps: int,
    batch_size: int,
    forget_weight: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Full-batch GD then NegGrad for each of the R stacked data sets; per-repeat metrics."""
    repeats, n, dim = x.shape[0], x.shape[1], x.shape[-1]
    model = TwoLayerCNN(num_classes=2, dim=dim, width=width, init_std=init_std)
    g = torch.Generator().manual_seed(seed)
    params = {"filters": torch.randn(repeats, 2, width, dim, generator=g) * init_std}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    def error(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return (functional_call(model, p, (xb,)).argmax(-1) != yb).float().mean()

    grads, losses, errors = vmap(grad(loss)), vmap(loss), vmap(error)
    for _ in range(epochs):  # full-batch GD on S
        params = {k: v - lr * grads(params, x, y)[k] for k, v in params.items()}
    out = {
        "train_loss": losses(params, x, y).numpy(),
        "train_error": errors(params, x, y).numpy(),
        "test_error": errors(params, x_test, y_test).numpy(),
    }
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(repeats)])
    take = torch.arange(repeats)[:, None]
    n_forget = n // 2
    f_idx, r_idx = perm[:, :n_forget], perm[:, n_forget:]
    xf, yf, xr, yr = x[take, f_idx], y[take, f_idx], x[take, r_idx], y[take, r_idx]
    out["forget_loss_before"] = losses(params, xf, yf).numpy()
    nb_f, nb_r = max(1, n_forget // batch_size), max(1, (n - n_forget) // batch_size)
    for step in range(unlearn_steps):  # NegGrad, 003 eq. 3 with forget weight α
        bf = slice((step % nb_f) * batch_size, (step % nb_f + 1) * batch_size)
        br = slice((step % nb_r) * batch_size, (step % nb_r + 1) * batch_size)
        g_r, g_f = grads(params, xr[:, br], yr[:, br]), grads(params, xf[:, bf], yf[:, bf])
        params = {
            k: v - unlearn_lr * ((1 - forget_weight) * g_r[k] - forget_weight * g_f[k])
            for k, v in params.items()
        }
    out["forget_loss"] = losses(params, xf, yf).numpy()
    out["retain_loss"] = losses(params, xr, yr).numpy()
    return out


def _corr(a: np.ndarray, b: np.ndarray, rank: bool = False) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float((stats.spearmanr if rank else stats.pearsonr)(a, b)[0])


def correlations(rows: list[dict[str, float]]) -> dict[str, float]:
    """Correlations over cells (NaN when one side is constant):

    * ``memorization_forget_corr``: Pearson(memorization-region indicator, forget loss), the
      point-biserial correlation of the region of 003 Fig. 2 with the forget loss;
    * ``gap_forget_corr``: Pearson(test error − train error, forget loss), a continuous
      memorization score that does not depend on the thresholds;
    * ``gap_forget_increase_corr``: the same against the forget-loss *increase* during NegGrad
      (discounts cells whose training never fit F in the first place);
    * ``test_error_forget_spearman``: Spearman(test error, forget loss).
    """
    mem = np.array([r["memorization"] for r in rows])
    forget = np.array([r["forget_loss"] for r in rows])
    increase = forget - np.array([r["forget_loss_before"] for r in rows])
    test = np.array([r["test_error"] for r in rows])
    gap = test - np.array([r["train_error"] for r in rows])
    return {
        "memorization_forget_corr": _corr(mem, forget),
        "gap_forget_corr": _corr(gap, forget),
        "gap_forget_increase_corr": _corr(gap, increase),
        "test_error_forget_spearman": _corr(test, forget, rank=True),
        "frac_memorization_cells": float(mem.mean()),
        "forget_loss_in_memorization": float(forget[mem > 0].mean()) if mem.any() else math.nan,
        "forget_loss_elsewhere": float(forget[mem == 0].mean()) if (mem == 0).any() else math.nan,
    }


def plot(rows: list[dict[str, float]], signals: list[float], dims: list[int], path: Path) -> Path:
    """003 Fig. 2 analogue: heatmaps of training loss, test error, forget loss over (‖μ‖, d),
    memorization cells outlined."""
    plt = pyplot()

    def grid(key: str) -> np.ndarray:
        table = {(r["signal_strength"], r["dim"]): r[key] for r in rows}
        return np.array([[table[(s, d)] for s in signals] for d in dims])

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=90)
    mem = grid("memorization")
    for ax, key, title in zip(
        axes,
        ("train_loss", "test_error", "forget_loss"),
        ("training loss", "test error", "forget loss after NegGrad"),
    ):
        im = ax.imshow(grid(key), origin="lower", aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046)
        for i, j in zip(*np.nonzero(mem)):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="w", lw=1.5))
        ax.set_xticks(range(len(signals)), [f"{s:g}" for s in signals], fontsize=7)
        ax.set_yticks(range(len(dims)), [str(d) for d in dims], fontsize=7)
        ax.set_xlabel("signal strength ‖μ‖")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("dimension d")
    fig.suptitle("003 §4.2: memorization region (white boxes) vs forget loss", fontsize=10)
    return save_figure(fig, path)


def _validate(
    signal_strengths: list[float] | None, dims: list[int] | None, settings: dict[str, Any]
) -> tuple[list[float], list[int]]:
    """Check every ``lab.*`` setting (before any work); return the ‖μ‖ and d grids, with the
    defaults filled in."""
    signals = checks.number_list(
        "signal_strengths", list(signal_strengths or [0.5, 1, 2, 4, 8]), 0, 1e6, "[1,2,4]"
    )
    dims = checks.number_list(
        "dims", list(dims or [100, 300, 500, 700, 900, 1100]), 1, 1e6, "[100,600]", integer=True
    )
    for key, example in (
        ("n_train", "50"),
        ("n_test", "1000"),
        ("width", "10"),
        ("epochs", "100"),
        ("unlearn_steps", "90"),
        ("batch_size", "5"),
        ("repeats", "20"),
    ):
        checks.positive(key, settings[key], example, integer=True)
    for key, example in (
        ("noise_std", "1.0"),
        ("init_std", "0.01"),
        ("lr", "0.1"),
        ("unlearn_lr", "0.1"),
    ):
        checks.positive(key, settings[key], example)
    checks.in_range("forget_weight", settings["forget_weight"], 0.0, 1.0, "0.3")
    checks.in_range("fit_threshold", settings["fit_threshold"], 0.0, math.inf, "0.1")
    checks.in_range("memorization_error", settings["memorization_error"], 0.0, 1.0, "0.1")
    n_train, batch_size = settings["n_train"], settings["batch_size"]
    if n_train < 2 * batch_size:
        checks.in_range("batch_size", batch_size, 1, n_train // 2, str(max(1, n_train // 10)))
    return signals, dims


def grid(
    signals: list[float],
    dims: list[int],
    *,
    n_train: int,
    n_test: int,
    noise_std: float,
    repeats: int,
    fit_threshold: float,
    memorization_error: float,
    seed: int,
    **training: Any,
) -> list[dict[str, float]]:
    """One row per cell (‖μ‖, d): the repeats' mean metrics of :func:`train_and_unlearn`
    (``training`` are its keyword arguments), the forget loss's spread, the SNR
    ``‖μ‖/(σ√d)`` and whether the cell lies in the memorization region (training loss ≤
    ``fit_threshold``, test error ≥ ``memorization_error``, 003 §4.2)."""
    rows = []
    for d in dims:
        for s in signals:
            seeds = [seed * 100_003 + r for r in range(repeats)]
            data = make_data(n_train, n_test, d, s, noise_std, seeds)
            res = train_and_unlearn(*data, seed=seed, **training)
            row = {"signal_strength": s, "dim": d, "snr": s / (noise_std * math.sqrt(d))}
            row.update({k: float(v.mean()) for k, v in res.items()})
            row["forget_loss_std"] = float(res["forget_loss"].std())
            row["memorization"] = float(
                row["train_loss"] <= fit_threshold and row["test_error"] >= memorization_error
            )
            rows.append(row)
    return rows


def _summary(metrics: dict[str, float], n_cells: int, repeats: int) -> str:
    """The printed summary: the correlations and the forget loss in and out of the region."""
    return "\n".join(
        [
            f"memorization vs forgetting (003 §4.2): {n_cells} cells × {repeats} repeats",
            f"corr(memorization region, forget loss) = {fmt(metrics['memorization_forget_corr'])}"
            f"   Spearman(test error, forget loss) = "
            f"{fmt(metrics['test_error_forget_spearman'])}",
            f"corr(test − train error, forget loss) = {fmt(metrics['gap_forget_corr'])}   "
            f"corr(test − train error, forget-loss increase) = "
            f"{fmt(metrics['gap_forget_increase_corr'])}",
            f"memorization cells {fmt(metrics['frac_memorization_cells'], 2)}; mean forget loss "
            f"there {fmt(metrics['forget_loss_in_memorization'])} vs elsewhere "
            f"{fmt(metrics['forget_loss_elsewhere'])}; mean train loss "
            f"{fmt(metrics['mean_train_loss'])}",
        ]
    )


def run(
    cfg: DictConfig,
    signal_strengths: list[float] | None = None,
    dims: list[int] | None = None,
    n_train: int = 50,
    n_test: int = 1000,
    noise_std: float = 1.0,
    width: int = 10,
    init_std: float = 0.01,
    epochs: int = 100,
    lr: float = 0.1,
    unlearn_lr: float = 0.1,
    unlearn_steps: int = 90,
    batch_size: int = 5,
    forget_weight: float = 0.3,
    repeats: int = 20,
    fit_threshold: float = 0.1,
    memorization_error: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the (‖μ‖, d) grid; write ``memorization_forgetting.csv``/``.png``, ``results.json``."""
    settings = dict(locals())
    for name in ("cfg", "signal_strengths", "dims"):
        settings.pop(name)
    signals, dims = _validate(signal_strengths, dims, settings)
    with single_threaded():
        rows = grid(signals, dims, **settings)
    metrics = correlations(rows)
    metrics["mean_train_loss"] = float(np.mean([r["train_loss"] for r in rows]))
    out = output_dir(cfg)
    write_csv(out / "memorization_forgetting.csv", rows)
    png = plot(rows, signals, dims, out / "memorization_forgetting.png")
    return finish(cfg, metrics, [png], _summary(metrics, len(rows), repeats))
