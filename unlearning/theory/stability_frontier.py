r"""Lab ``experiment=theory/stability_frontier``: 003 §4.1 / App. A.3, Fig. 1.

Synthetic per-sample Hessians (the **Q-construction**): for ``n`` samples,
``H_i = m e_1 e_1ᵀ`` for ``i ≤ Q`` and ``H_i = m e_{i−Q+1} e_{i−Q+1}ᵀ`` otherwise, ``m = 2n/Q``,
so ``λ_1(H̄) = 2`` for every Q while the coherence grows with Q. The forget set uses the *same*
matrices as the retain set (the only reading under which eq. 4's mean operator
``I − η(1−2α)H̄`` contracts, so that a convergent region exists for η ≤ 1).

For each cell (B, Q) of the grid: σ and λ_max(D) (Def. 3.2-3.4, :mod:`.coherence`); the
recursion of eq. 3 run ``steps`` times from ``repeats`` random starts, *diverged* when
``‖w_steps‖/‖w_0‖ ≥ divergence_factor`` in the majority of repeats (the paper's criterion);
the exact ``E‖w_steps‖²`` and its asymptotic growth (:func:`.recursion.second_moment`, what the
theorems speak of); and the two theorems' claims (Thm 3.6 diverges if λ_max(D) ≥ its
threshold, Thm 3.7 converges if λ_max(D) ≤ its threshold, both readings of Thm 3.7).
Each theorem is scored by precision (of the cells it claims, the fraction that behave so) and
recall (of the cells that behave so, the fraction it claims), against the sampled outcome and
against the exact mean-square outcome.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from unlearning.outputs.plots import pyplot, save_figure
from unlearning.theory import checks
from unlearning.theory.coherence import (
    THM37_READINGS,
    Coherence,
    convergence_threshold,
    divergence_threshold,
    noise_constants,
    unlearning_coherence,
)
from unlearning.theory.output import finish, fmt, output_dir, write_csv
from unlearning.theory.recursion import second_moment, simulate
from unlearning.theory.runtime import single_threaded


def q_construction(q: int, n: int) -> torch.Tensor:
    """Rank-one factors ``(n, 1, n−q+1)`` of the Q-construction (003 §4.1): ``√m e_1`` for the
    first ``q`` samples and ``√m e_{i−q+1}`` for the others, ``m = 2n/q``."""
    if not 1 <= q <= n:
        raise ValueError(f"Q={q} must lie in [1, n={n}]")
    d = n - q + 1
    factors = torch.zeros(n, 1, d, dtype=torch.float64)
    factors[torch.arange(n), 0, torch.clamp(torch.arange(n) - q + 1, min=0)] = math.sqrt(2 * n / q)
    return factors


def precision_recall(claimed: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """``(precision, recall)`` of boolean claims against boolean outcomes (NaN when undefined)."""
    tp = float(np.sum(claimed & actual))
    precision = tp / claimed.sum() if claimed.any() else math.nan
    recall = tp / actual.sum() if actual.any() else math.nan
    return precision, recall


def _validate(**kw: Any) -> None:
    checks.positive("n", kw["n"], "50", integer=True)
    checks.in_range("alpha", kw["alpha"], 0.0, 1.0, "0.1")
    checks.positive("eta", kw["eta"], "0.5")
    checks.positive("steps", kw["steps"], "1000", integer=True)
    checks.positive("repeats", kw["repeats"], "10", integer=True)
    checks.positive("divergence_factor", kw["divergence_factor"], "1000")
    checks.number_list("batch_sizes", kw["batch_sizes"], 1, kw["n"], "[1,5,25]", open_high=True)
    checks.number_list("q_values", kw["q_values"], 1, kw["n"], "[1,10,50]", integer=True)
    checks.choice("thm37_reading", kw["thm37_reading"], THM37_READINGS)


def run_grid(
    n: int,
    alpha: float,
    eta: float,
    batch_sizes: list[float],
    q_values: list[int],
    steps: int,
    repeats: int,
    divergence_factor: float,
    seed: int,
) -> list[dict[str, float]]:
    """One row per (B, Q) cell: coherence, thresholds, sampled and mean-square outcomes."""
    rows = []
    log_factor = math.log(divergence_factor)
    for q in q_values:
        factors = q_construction(q, n)
        by_weight: dict[float, Coherence] = {}  # σ depends on B only through C'_r
        for b in batch_sizes:
            kw = dict(eta=eta, alpha=alpha, batch_size=b)
            key = round(noise_constants(n_retain=n, n_forget=n, **kw)[2], 12)
            if key not in by_weight:
                by_weight[key] = unlearning_coherence(factors, factors, max_pairs=n * n, **kw)
            coh = by_weight[key]
            log_growth = simulate(factors, factors, steps=steps, repeats=repeats, seed=seed, **kw)
            log_ms, ms_rate = second_moment(factors, factors, steps=steps, **kw)
            sizes = dict(n_retain=n, n_forget=n)
            row = {
                "batch_size": b,
                "q": q,
                "sigma": coh.sigma,
                "sigma_normalized": coh.sigma_normalized,
                "lambda_max_d": coh.lambda_max_d,
                "c_r": coh.c_r,
                "thm36_threshold": divergence_threshold(coh.sigma, **kw, **sizes),
            }
            for reading in THM37_READINGS:
                row[f"thm37_{reading}_threshold"] = convergence_threshold(
                    coh.sigma, **kw, **sizes, reading=reading
                )
            diverged = (log_growth >= log_factor).double()
            row.update(
                {
                    "sampled_diverged_fraction": float(diverged.mean()),
                    "sampled_diverged": float(diverged.mean() > 0.5),
                    "sampled_log_growth_median": float(log_growth.median()),
                    "ms_log_growth": log_ms,
                    "ms_rate": ms_rate,
                    "ms_diverged": float(ms_rate > 0),
                    "ms_diverged_1000x": float(log_ms >= 2 * log_factor),
                }
            )
            rows.append(row)
    return rows


def score(rows: list[dict[str, float]], reading: str) -> dict[str, float]:
    """Precision/recall of Thm 3.6 (divergence) and Thm 3.7 (convergence, each reading) against
    the sampled and the mean-square outcomes; counts of cells between and inside both bounds."""
    lam = np.array([r["lambda_max_d"] for r in rows])
    claims = {"thm36": lam >= np.array([r["thm36_threshold"] for r in rows])}
    for rd in THM37_READINGS:
        claims[f"thm37_{rd}"] = lam <= np.array([r[f"thm37_{rd}_threshold"] for r in rows])
    metrics: dict[str, float] = {"n_cells": float(len(rows))}
    for outcome in ("sampled", "ms"):
        diverged = np.array([r[f"{outcome}_diverged"] for r in rows]) > 0.5
        for name, claim in claims.items():
            actual = diverged if name == "thm36" else ~diverged
            p, rc = precision_recall(claim, actual)
            metrics[f"{name}/precision_{outcome}"] = p
            metrics[f"{name}/recall_{outcome}"] = rc
        metrics[f"frac_diverged_{outcome}"] = float(diverged.mean())
    conv = claims[f"thm37_{reading}"]
    metrics["n_between_bounds"] = float(np.sum(~claims["thm36"] & ~conv))
    metrics["n_claimed_by_both"] = float(np.sum(claims["thm36"] & conv))
    for i, row in enumerate(rows):
        row["thm36_claims_divergence"] = float(claims["thm36"][i])
        for rd in THM37_READINGS:
            row[f"thm37_{rd}_claims_convergence"] = float(claims[f"thm37_{rd}"][i])
        row["between_bounds"] = float(not claims["thm36"][i] and not conv[i])
    return metrics


def _boundary_curves(
    bs: np.ndarray, n: int, alpha: float, eta: float, lam: float, c_r: float
) -> dict[str, np.ndarray]:
    """σ on each theorem's boundary at λ_max(D) = ``lam`` as a function of B (solved from eq. 9,
    eq. 10 and the last line of eq. 46; NaN where a reading claims nothing)."""
    k = (1 - alpha) * n * np.sqrt(n / bs - 1) + alpha * n * np.sqrt(n / bs - 1)
    m = n * (n / bs - 1)
    stmt_den = 2 - lam * eta * c_r
    proof_den = 2 * c_r - lam * eta * (1 - alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "thm36": lam * eta * k / math.sqrt(2),
            "thm37_statement": np.where(stmt_den > 0, lam * eta * c_r * m / stmt_den, np.nan),
            "thm37_proof": np.where(proof_den > 0, lam * eta * (1 - alpha) * m / proof_den, np.nan),
        }


def plot(rows: list[dict[str, float]], path: Path, n: int, alpha: float, eta: float, reading: str):
    """003 Fig. 1 analogue: cells in the (B, σ) plane, red = diverged (sampled majority), blue =
    converged; hollow markers where the exact E‖w‖² disagrees; the theorem boundaries."""
    plt = pyplot()

    b = np.array([r["batch_size"] for r in rows])
    s = np.array([r["sigma"] for r in rows])
    sampled = np.array([r["sampled_diverged"] for r in rows]) > 0.5
    ms = np.array([r["ms_diverged"] for r in rows]) > 0.5
    fig, ax = plt.subplots(figsize=(9.0, 4.4), dpi=100)
    for div, colour, label in ((True, "C3", "diverged"), (False, "C0", "converged")):
        sel = sampled == div
        agree, disagree = sel & (ms == sampled), sel & (ms != sampled)
        ax.scatter(b[agree], s[agree], c=colour, s=28, label=f"{label} (sampled = E‖w‖²)")
        if disagree.any():
            ax.scatter(
                b[disagree],
                s[disagree],
                facecolors="none",
                edgecolors=colour,
                s=28,
                label=f"{label} (sampled; E‖w‖² disagrees)",
            )
    grid = np.linspace(b.min(), b.max(), 200)
    lam = float(np.median([r["lambda_max_d"] for r in rows]))
    curves = _boundary_curves(grid, n, alpha, eta, lam, float(rows[0]["c_r"]))
    ax.plot(grid, curves["thm36"], "k-", label="Thm 3.6 (diverge below)")
    style = {"statement": "k--", "proof": "k:"}
    for rd in THM37_READINGS:
        shown = " [scored]" if rd == reading else ""
        ax.plot(
            grid, curves[f"thm37_{rd}"], style[rd], label=f"Thm 3.7 {rd} (converge above){shown}"
        )
    ax.set_xlabel("batch size B")
    ax.set_ylabel("unlearning coherence σ (Def. 3.4)")
    ax.set_yscale("log")
    ax.set_ylim(max(0.5, s.min() / 2), s.max() * 2)
    ax.set_title(f"003 §4.1: n_r = n_f = {n}, α = {alpha}, η = {eta}, λ_max(D) = {lam:.2f}")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def run(
    cfg: DictConfig,
    n: int = 50,
    alpha: float = 0.1,
    eta: float = 0.5,
    batch_sizes: list[float] | None = None,
    q_values: list[int] | None = None,
    steps: int = 1000,
    repeats: int = 10,
    divergence_factor: float = 1000.0,
    thm37_reading: str = "proof",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the grid, write ``stability_frontier.csv``/``.png`` and ``results.json``."""
    batch_sizes = list(batch_sizes or [1, 2, 3, 5, 8, 10, 15, 20, 30, 40])
    q_values = list(q_values or [1, 2, 3, 5, 10, 15, 25, 50])
    settings = dict(
        n=n,
        alpha=alpha,
        eta=eta,
        batch_sizes=batch_sizes,
        q_values=q_values,
        steps=steps,
        repeats=repeats,
        divergence_factor=divergence_factor,
        thm37_reading=thm37_reading,
    )
    _validate(**settings)
    with single_threaded():
        rows = run_grid(
            n,
            alpha,
            eta,
            [float(b) for b in batch_sizes],
            [int(q) for q in q_values],
            int(steps),
            int(repeats),
            divergence_factor,
            seed,
        )
    metrics = score(rows, thm37_reading)
    out = output_dir(cfg)
    write_csv(out / "stability_frontier.csv", rows)
    png = plot(rows, out / "stability_frontier.png", n, alpha, eta, thm37_reading)
    return finish(cfg, metrics, [png], _summary(rows, metrics, thm37_reading))


def _summary(rows: list[dict[str, float]], metrics: dict[str, float], reading: str) -> str:
    """The printed summary: each theorem's precision and recall against both outcomes, the
    diverged fractions and the cells between the two bounds."""
    between = [(r["batch_size"], r["q"], round(r["sigma"], 1)) for r in rows if r["between_bounds"]]
    lines = [
        f"stability frontier (003 §4.1): {len(rows)} cells, Thm 3.7 reading '{reading}'",
        f"{'claim':<22} {'prec(sampled)':>13} {'rec(sampled)':>12} {'prec(E|w|²)':>11} "
        f"{'rec(E|w|²)':>10}",
    ]
    for name in ("thm36", *(f"thm37_{rd}" for rd in THM37_READINGS)):
        lines.append(
            f"{name:<22} {fmt(metrics[f'{name}/precision_sampled']):>13} "
            f"{fmt(metrics[f'{name}/recall_sampled']):>12} "
            f"{fmt(metrics[f'{name}/precision_ms']):>11} {fmt(metrics[f'{name}/recall_ms']):>10}"
        )
    lines.append(
        f"diverged cells: sampled {fmt(metrics['frac_diverged_sampled'], 2)}, "
        f"E‖w‖² {fmt(metrics['frac_diverged_ms'], 2)}; claimed by both theorems: "
        f"{int(metrics['n_claimed_by_both'])}"
    )
    lines.append(f"cells between the bounds (B, Q, σ): {between}")
    return "\n".join(lines)
