r"""Lab ``experiment=theory/signal_noise``: 000 §2-3 (signal/noise data, two-layer CNN, SGD vs
SAM pretraining, NegGrad unlearning; Lemma 3.1 and Fig. 2).

Data: :class:`datamodules.embedded.SignalNoise` (000 §2.1: P patches, one ``y·φ``, the others
``ξ_i ~ N(0, σ_p² I_d)``). Model: :class:`unlearning.models.TwoLayerCNN` (000 eq. 1, second layer
fixed at ±1/m). Training is a plain mini-batch loop on the filters (no Lightning: the analysis of
000 is per-batch SGD on this one tensor); SAM steps use
:func:`callbacks.sharpness.sharpness_aware_grad`, the same function Sharp MinMax uses.

1. Pretrain f_A on S with A ∈ {SGD, SAM}; retrain the oracle f_A(R) from the same init on R.
2. NegGrad (000 eq. 4: ``α·CE(R) − (1−α)·CE(F)``, α the *retain* weight, a batch of B from each
   set, |R|/B batches per epoch) with U = A, for every α in ``alphas``.
3. Per epoch (pretraining and unlearning at ``track_alpha``): signal coefficient κ (mean over
   filters) and own-class noise coefficients ζ_{y_i,r,i} averaged over R and over F, from the
   exact decomposition of 000 eq. 2 (:mod:`.decomposition`); test error.
4. Lemma 3.1 under SAM-NegGrad: among (filter r of class y_k, sample k) pairs with
   ``⟨w_{y_k,r}, ξ_k⟩ ≥ 0`` (active for SGD), the fraction still active at the SAM point,
   ``⟨w_{y_k,r} + ê_{y_k,r}, ξ_k⟩ > 0``, separately for k in the retain and the forget batch.
   Lemma 3.1 predicts ≈ 0 on R (SAM deactivates retain noise) and ≈ 1 on F.
5. ToW (000 eq. 10) of the unlearned model against the oracle as α decreases (Fig. 2 analogue).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.nn import functional as F

from callbacks.sharpness import perturbation, sharpness_aware_grad
from datamodules.embedded import SignalNoise
from unlearning.errors import ConfigError
from unlearning.evaluation.metrics.tow import tug_of_war
from unlearning.models import TwoLayerCNN
from unlearning.outputs.plots import pyplot, save_figure
from unlearning.theory import checks
from unlearning.theory.decomposition import decompose
from unlearning.theory.output import finish, fmt, output_dir, write_csv
from unlearning.theory.runtime import single_threaded

OPTIMIZERS: tuple[str, ...] = ("sgd", "sam")


def _step(model: TwoLayerCNN, loss_fn: Callable[[], Tensor], lr: float, optimizer: str, rho: float):
    """One plain step ``W ← W − lr·d`` with d the gradient (SGD) or the SAM gradient."""
    params = [model.filters]
    if optimizer == "sam":
        _, (direction,) = sharpness_aware_grad(loss_fn, params, rho)
    else:
        (direction,) = torch.autograd.grad(loss_fn(), params)
    with torch.no_grad():
        model.filters.sub_(lr * direction)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def error(model: TwoLayerCNN, x: Tensor, y: Tensor) -> float:
    """0-1 error of the model on ``(x, y)``."""
    with torch.no_grad():
        return float((model(x).argmax(-1) != y).float().mean())


def active_counts(
    model: TwoLayerCNN, e: Tensor, noise: Tensor, labels: Tensor
) -> tuple[float, float]:
    """Lemma 3.1 counts for samples with noise ``ξ_k`` and class ``y_k``: ``(#pairs (r, k) active
    for SGD, #of those still active at the SAM point w + ê)``, own-class filters only."""
    w = model.filters.detach()[labels]  # (b, m, d): filters of each sample's class
    sgd = torch.einsum("bmd,bd->bm", w, noise) >= 0
    sam = torch.einsum("bmd,bd->bm", w + e[labels], noise) > 0
    return float(sgd.sum()), float((sgd & sam).sum())


class Tracker:
    """Per-epoch κ, ζ (R/F), test error and Lemma 3.1 fractions (000 eq. 2, Lemma 3.1)."""

    def __init__(self, source: SignalNoise, data: tuple[Tensor, ...], forget: Tensor, init: Tensor):
        self.source, self.data, self.forget, self.init = source, data, forget, init
        self.rows: list[dict[str, float | str]] = []

    def record(self, model: TwoLayerCNN, optimizer: str, phase: str, epoch: int, active=None):
        _, y, x_test, y_test = self.data
        kappa, zeta, residual = decompose(
            model.filters.detach(), self.init, self.source.phi, self.source.noise,
            self.source.patches,
        )  # fmt: skip
        own = zeta[y, :, torch.arange(len(y))]  # (n, m): ζ_{y_i, r, i}
        retain = torch.ones(len(y), dtype=torch.bool)
        retain[self.forget] = False
        frac = (
            [math.nan, math.nan]
            if active is None
            else [b / a if a else math.nan for a, b in active]
        )
        self.rows.append(
            {
                "optimizer": optimizer,
                "phase": phase,
                "epoch": epoch,
                "kappa": float(kappa.mean()),
                "zeta_retain": float(own[retain].mean()),
                "zeta_forget": float(own[~retain].mean()),
                "decomposition_residual": float(residual),
                "test_error": error(model, x_test, y_test),
                "active_frac_retain": frac[0],
                "active_frac_forget": frac[1],
            }
        )


def train(model, x, y, *, epochs, lr, batch_size, optimizer, rho, generator, on_epoch=None):
    """Mini-batch cross-entropy training of the filters with SGD or SAM."""
    for epoch in range(epochs):
        for idx in _batches(len(y), batch_size, generator):
            _step(model, lambda idx=idx: F.cross_entropy(model(x[idx]), y[idx]), lr, optimizer, rho)
        if on_epoch:
            on_epoch(model, epoch + 1)


def neggrad(
    model, retain, forget, noise, *, alpha, epochs, lr, batch_size, optimizer, rho, generator,
    on_epoch=None,
):  # fmt: skip
    """NegGrad of 000 eq. 4 with U = ``optimizer``: |R|/B steps per epoch, each on a batch of R
    and a batch of F (F cycled). Under SAM, counts Lemma 3.1 activations per epoch."""
    (xr, yr, ir), (xf, yf, jf) = retain, forget
    for epoch in range(epochs):
        counts = np.zeros((2, 2))  # rows: retain, forget; cols: SGD-active, also SAM-active
        f_batches = _batches(len(yf), batch_size, generator)
        for b, idx in enumerate(_batches(len(yr), batch_size, generator)):
            fdx = f_batches[b % len(f_batches)]

            def loss(idx=idx, fdx=fdx) -> Tensor:
                return alpha * F.cross_entropy(model(xr[idx]), yr[idx]) - (1 - alpha) * (
                    F.cross_entropy(model(xf[fdx]), yf[fdx])
                )

            if optimizer == "sam":
                (g,) = torch.autograd.grad(loss(), [model.filters])
                (e,) = perturbation([model.filters], [g], rho)
                counts[0] += active_counts(model, e, noise[ir[idx]], yr[idx])
                counts[1] += active_counts(model, e, noise[jf[fdx]], yf[fdx])
            _step(model, loss, lr, optimizer, rho)
        if on_epoch:
            on_epoch(model, epoch + 1, counts if optimizer == "sam" else None)


def _accuracies(model, data, forget_mask) -> dict[str, float]:
    x, y, x_test, y_test = data
    return {
        "retain": 1 - error(model, x[~forget_mask], y[~forget_mask]),
        "forget": 1 - error(model, x[forget_mask], y[forget_mask]),
        "test": 1 - error(model, x_test, y_test),
    }


def run_seed(seed: int, s: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """All optimizers and α for one seed; returns (curve rows, ToW rows)."""
    source = SignalNoise(
        n_train=s["n_train"], n_test=s["n_test"], patches=s["patches"], dim=s["dim"],
        signal_strength=s["signal_strength"], noise_std=s["noise_std"], data_seed=seed,
    )  # fmt: skip
    data = source.load()
    x, y, _, _ = data
    g = torch.Generator().manual_seed(seed)
    forget = torch.randperm(len(y), generator=g)[: max(1, round(s["forget_fraction"] * len(y)))]
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[forget] = True
    retain_idx = torch.nonzero(~mask).squeeze(1)
    init = torch.randn(2, s["width"], s["dim"], generator=g) * s["init_std"]

    def fresh() -> TwoLayerCNN:
        model = TwoLayerCNN(num_classes=2, dim=s["dim"], width=s["width"])
        with torch.no_grad():
            model.filters.copy_(init)
        return model

    tracker = Tracker(source, data, forget, init)
    tow_rows = []
    common = dict(lr=s["lr"], batch_size=s["batch_size"], rho=s["rho"])
    for opt in s["optimizers"]:
        model = fresh()
        tracker.record(model, opt, "pretrain", 0)
        train(
            model, x, y, epochs=s["epochs"], optimizer=opt, generator=g,
            on_epoch=lambda m, e, opt=opt: tracker.record(m, opt, "pretrain", e), **common,
        )  # fmt: skip
        oracle = fresh()
        train(oracle, x[~mask], y[~mask], epochs=s["epochs"], optimizer=opt, generator=g, **common)
        acc_oracle = _accuracies(oracle, data, mask)
        for alpha in s["alphas"]:
            unlearned = fresh()
            with torch.no_grad():
                unlearned.filters.copy_(model.filters)
            track = math.isclose(alpha, s["track_alpha"])
            neggrad(
                unlearned, (x[~mask], y[~mask], retain_idx), (x[mask], y[mask], forget),
                source.noise, alpha=alpha, epochs=s["unlearn_epochs"], lr=s["unlearn_lr"],
                batch_size=s["batch_size"], optimizer=opt, rho=s["rho"], generator=g,
                on_epoch=(
                    (lambda m, e, c, opt=opt: tracker.record(m, opt, "unlearn", e, c))
                    if track else None
                ),
            )  # fmt: skip
            acc = _accuracies(unlearned, data, mask)
            tow_rows.append(
                {
                    "seed": seed, "optimizer": opt, "alpha": alpha,
                    "tow": tug_of_war(acc, acc_oracle),
                    "tow_abs": tug_of_war(acc, acc_oracle, absolute=True),
                    **{f"acc_{k}": v for k, v in acc.items()},
                    **{f"oracle_acc_{k}": v for k, v in acc_oracle.items()},
                }
            )  # fmt: skip
    for row in tracker.rows:
        row["seed"] = seed
    return tracker.rows, tow_rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _mean_by(rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [
        {**dict(zip(keys, key)), **{v: _nanmean([r[v] for r in g]) for v in values}}
        for key, g in groups.items()
    ]


def plot(curves: list[dict], tows: list[dict], path: Path, s: dict[str, Any]) -> Path:
    """κ, ζ (R vs F), test error, Lemma 3.1 fractions per epoch, and ToW vs α (000 Fig. 2)."""
    plt = pyplot()

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), dpi=80)
    ax = axes.ravel()
    colours = {"sgd": "C0", "sam": "C3"}
    for opt in s["optimizers"]:
        rows = [r for r in curves if r["optimizer"] == opt]
        t = np.arange(len(rows))
        c = colours[opt]
        ax[0].plot(t, [r["kappa"] for r in rows], c=c, label=opt.upper())
        ax[1].plot(t, [r["zeta_retain"] for r in rows], c=c, label=f"{opt.upper()} R")
        ax[1].plot(t, [r["zeta_forget"] for r in rows], c=c, ls="--", label=f"{opt.upper()} F")
        ax[2].plot(t, [r["test_error"] for r in rows], c=c, label=opt.upper())
        if opt == "sam":
            ax[3].plot(t, [r["active_frac_retain"] for r in rows], c=c, label="R")
            ax[3].plot(t, [r["active_frac_forget"] for r in rows], c=c, ls="--", label="F")
        tw = sorted((r for r in tows if r["optimizer"] == opt), key=lambda r: r["alpha"])
        al = [r["alpha"] for r in tw]
        ax[4].plot(al, [r["tow"] for r in tw], "o-", c=c, label=f"{opt.upper()} ToW")
        ax[4].plot(
            al, [r["tow_abs"] for r in tw], "s--", c=c, ms=3, label=f"{opt.upper()} ToW(abs)"
        )
    for a in ax[:4]:
        a.axvline(s["epochs"], c="0.6", lw=0.8)
        a.set_xlabel("epoch (pretraining | NegGrad)")
    n_r = s["n_train"] - round(s["forget_fraction"] * s["n_train"])
    ax[4].axvline(n_r / s["n_train"], c="0.6", lw=0.8, ls=":", label="|R|/|S|")
    titles = (
        "signal κ (000 eq. 2)",
        "own-class noise ζ: R (solid) vs F (dashed)",
        "test error",
        "Lemma 3.1: SGD-active noise neurons still active under SAM",
        f"ToW vs retain weight α (NegGrad, {s['unlearn_epochs']} epochs)",
    )
    for a, title in zip(ax, titles):
        a.set_title(title, fontsize=9)
        a.legend(fontsize=7, frameon=False)
    ax[4].set_xlabel("α (000 eq. 4)")
    ax[5].axis("off")
    ax[5].text(
        0, 0.5,
        "\n".join(f"{k} = {s[k]}" for k in (
            "n_train", "dim", "patches", "signal_strength", "noise_std", "width",
            "forget_fraction", "epochs", "lr", "rho", "unlearn_epochs", "unlearn_lr",
            "track_alpha", "seeds")),
        fontsize=8, va="center",
    )  # fmt: skip
    return save_figure(fig, path)


def _validate(s: dict[str, Any]) -> None:
    for key, example in (("n_train", "200"), ("n_test", "1000"), ("dim", "400"),
                         ("width", "10"), ("epochs", "30"), ("unlearn_epochs", "10"),
                         ("batch_size", "10")):  # fmt: skip
        checks.positive(key, s[key], example, integer=True)
    for key, example in (("signal_strength", "2.0"), ("noise_std", "1.0"), ("init_std", "0.01"),
                         ("lr", "0.1"), ("unlearn_lr", "0.5"), ("rho", "1.0")):  # fmt: skip
        checks.positive(key, s[key], example)
    if isinstance(s["patches"], bool) or not isinstance(s["patches"], int) or s["patches"] < 2:
        raise ConfigError(
            "lab.patches", s["patches"], "need an integer ≥ 2 (signal + noise), e.g. lab.patches=2"
        )
    checks.in_range("forget_fraction", s["forget_fraction"], 0.01, 0.5, "0.1")
    s["alphas"] = checks.number_list("alphas", s["alphas"], 0.0, 1.0, "[0.99,0.9,0.7]")
    checks.in_range("track_alpha", s["track_alpha"], 0.0, 1.0, "0.9")
    s["seeds"] = checks.number_list("seeds", s["seeds"], 0, 2**31, "[0,1,2]", integer=True)
    if not s["optimizers"] or any(o not in OPTIMIZERS for o in s["optimizers"]):
        raise ConfigError(
            "lab.optimizers", s["optimizers"], f"a non-empty list drawn from {list(OPTIMIZERS)}"
        )


def run(
    cfg: DictConfig,
    n_train: int = 200,
    n_test: int = 1000,
    patches: int = 2,
    dim: int = 400,
    signal_strength: float = 2.0,
    noise_std: float = 1.0,
    width: int = 10,
    init_std: float = 0.01,
    forget_fraction: float = 0.1,
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 10,
    rho: float = 1.0,
    unlearn_epochs: int = 10,
    unlearn_lr: float = 0.5,
    alphas: list[float] | None = None,
    track_alpha: float = 0.9,
    optimizers: list[str] | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """Run the lab; write ``signal_noise_{curves,tow}.csv``, ``signal_noise.png``,
    ``results.json``."""
    s = dict(locals())
    s.pop("cfg")
    s["alphas"] = list(alphas or [0.99, 0.9, 0.8, 0.7, 0.5, 0.3, 0.2, 0.1])
    s["optimizers"] = list(optimizers or OPTIMIZERS)
    s["seeds"] = list(seeds or [0, 1, 2])
    _validate(s)
    if not any(math.isclose(a, track_alpha) for a in s["alphas"]):
        s["alphas"].append(float(track_alpha))
    curves, tows = [], []
    with single_threaded():
        for seed in s["seeds"]:
            c, t = run_seed(seed, s)
            curves += c
            tows += t
    curve_values = ("kappa", "zeta_retain", "zeta_forget", "decomposition_residual",
                    "test_error", "active_frac_retain", "active_frac_forget")  # fmt: skip
    mean_curves = _mean_by(curves, ("optimizer", "phase", "epoch"), curve_values)
    mean_tows = _mean_by(tows, ("optimizer", "alpha"), ("tow", "tow_abs", "acc_forget", "acc_test"))
    out = output_dir(cfg)
    write_csv(out / "signal_noise_curves.csv", curves)
    write_csv(out / "signal_noise_tow.csv", tows)
    png = plot(mean_curves, mean_tows, out / "signal_noise.png", s)
    metrics = lab_metrics(curves, mean_curves, mean_tows, s["optimizers"])
    return finish(cfg, metrics, [png], _summary(metrics, s))


def lab_metrics(
    curves: list[dict], mean_curves: list[dict], mean_tows: list[dict], optimizers: list[str]
) -> dict[str, float]:
    """The headline numbers, per optimizer (mean over seeds): κ, ζ_R and the test error of the
    pretrained model, ζ_R and ζ_F after the tracked NegGrad run (000 eq. 2), ToW per α and its
    mean over α (000 Fig. 2); under SAM the Lemma 3.1 fractions of active noise neurons on R and
    F (over all seeds and unlearning epochs) and their ratio; the largest residual of the
    decomposition (000 eq. 2 is an identity, so only rounding)."""
    metrics: dict[str, float] = {}
    for opt in optimizers:
        pre = [r for r in mean_curves if r["optimizer"] == opt and r["phase"] == "pretrain"][-1]
        post = [r for r in mean_curves if r["optimizer"] == opt and r["phase"] == "unlearn"][-1]
        metrics[f"{opt}/kappa_pretrained"] = pre["kappa"]
        metrics[f"{opt}/zeta_retain_pretrained"] = pre["zeta_retain"]
        metrics[f"{opt}/test_error_pretrained"] = pre["test_error"]
        metrics[f"{opt}/zeta_retain_unlearned"] = post["zeta_retain"]
        metrics[f"{opt}/zeta_forget_unlearned"] = post["zeta_forget"]
        tw = [r for r in mean_tows if r["optimizer"] == opt]
        metrics[f"{opt}/tow_mean_over_alpha"] = float(np.mean([r["tow"] for r in tw]))
        metrics[f"{opt}/tow_abs_mean_over_alpha"] = float(np.mean([r["tow_abs"] for r in tw]))
        for r in tw:
            metrics[f"{opt}/tow_alpha_{r['alpha']:g}"] = r["tow"]
            metrics[f"{opt}/tow_abs_alpha_{r['alpha']:g}"] = r["tow_abs"]
    if "sam" in optimizers:
        sam_rows = [r for r in curves if r["optimizer"] == "sam" and r["phase"] == "unlearn"]
        fr = _nanmean([r["active_frac_retain"] for r in sam_rows])
        ff = _nanmean([r["active_frac_forget"] for r in sam_rows])
        metrics["lemma31/active_frac_retain"] = fr
        metrics["lemma31/active_frac_forget"] = ff
        metrics["lemma31/active_ratio"] = ff / fr if fr > 0 else math.inf
    metrics["max_decomposition_residual"] = max(r["decomposition_residual"] for r in curves)
    return metrics


def _summary(metrics: dict[str, float], s: dict[str, Any]) -> str:
    """The printed summary: one line per optimizer, one for Lemma 3.1 under SAM."""
    lines = [f"signal/noise lab (000 §2-3): seeds {s['seeds']}, α grid {s['alphas']}"]
    for opt in s["optimizers"]:
        lines.append(
            f"{opt.upper():<4} pretrained κ {fmt(metrics[f'{opt}/kappa_pretrained'])}  "
            f"ζ_R {fmt(metrics[f'{opt}/zeta_retain_pretrained'])}  test error "
            f"{fmt(metrics[f'{opt}/test_error_pretrained'])}  | after NegGrad "
            f"α={s['track_alpha']}: ζ_R {fmt(metrics[f'{opt}/zeta_retain_unlearned'])} "
            f"ζ_F {fmt(metrics[f'{opt}/zeta_forget_unlearned'])}  | mean over α: ToW "
            f"{fmt(metrics[f'{opt}/tow_mean_over_alpha'])} ToW(abs) "
            f"{fmt(metrics[f'{opt}/tow_abs_mean_over_alpha'])}"
        )
    if "sam" in s["optimizers"]:
        lines.append(
            "Lemma 3.1 (SAM-NegGrad): active noise neurons R "
            f"{fmt(metrics['lemma31/active_frac_retain'])} vs F "
            f"{fmt(metrics['lemma31/active_frac_forget'])} "
            f"(ratio F/R {fmt(metrics['lemma31/active_ratio'], 2)})"
        )
    return "\n".join(lines)
