r"""Lab ``experiment=theory/logistic_da``: 002 §4 (ridge logistic regression; descent-ascent
moves away from the retrained solution; Lemmas 2-5, Fig. 3).

Objectives (002 eq. 1, exponential loss as the paper's proxy, or the logistic loss):
``L_D = (1/|D|) Σ_D ℓ(m_i) + λ/2‖w‖²``, ``L_R = (1/|R|) Σ_R ℓ(m_i) + λ/2‖w‖²`` and
``L_DA = (1/|R|) Σ_R ℓ(m_i) − (1/|F|) Σ_F ℓ(m_i) + λ/2‖w‖²`` with margins ``m_i = y_i⟨w, x_i⟩``.
:func:`stationary_point` finds a zero of the gradient by damped Newton from a start (0 for D
and R; w^D for DA, as an unlearning run would) and reports whether one exists.

* **Semi-orthogonal data** (§4.2, Assumptions 1-2): coordinate j holds ``|R_j|`` retain points
  and ``|F_j| = α|R_j|`` forget points with ``y x_j = 1``; other coordinates hold
  ``other_retain`` retain and ``other_forget`` forget points. Closed forms (Lemma 5, Lambert W):
  ``w^D = W((1+α)|R_j|/(λ|D|))``, ``w^R = W(|R_j|/(λ|R|))``,
  ``w^DA = W((1 − α|R|/|F|)|R_j|/(λ|R|))``. Lemma 2's sign condition
  ``(w^DA − w^D)(w^D − w^R) ≥ 0`` is checked over α, beside its stated sufficient range
  ``α ≤ |F|/|R|``.
* **2-D correlated data** (§4.3, App. C.1.2): retain points ``(1, ε)``, forget points
  ``(ε, 1)`` (``α·|R_ij|`` of them), coordinates ``x = w_i + ε w_j``, ``y = ε w_i + w_j``.
  DA is *detrimental* where ``(x^R − x^D)(x^D − x^DA) ≥ 0`` and ``(y^R − y^D)(y^D − y^DA) ≥ 0``
  (it moves away from the oracle in both); the α range per ε is the Fig. 3 analogue, with
  Lemma 3's bound ``α^{D>DA}`` (Lemma 11) overlaid and checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from scipy.special import expit, lambertw

from unlearning.outputs.plots import pyplot, save_figure
from unlearning.theory import checks
from unlearning.theory.output import finish, fmt, output_dir, write_csv

LOSSES: tuple[str, ...] = ("exp", "logistic")


def _loss_derivatives(margins: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ℓ'(m), ℓ''(m))`` for ``ℓ(m) = e^{−m}`` or ``log(1 + e^{−m})``."""
    if loss == "exp":
        e = np.exp(-margins)
        return -e, e
    s = expit(-margins)
    return -s, s * (1 - s)


@dataclass(frozen=True)
class Stationary:
    """A stationary point of a weighted ridge objective."""

    w: np.ndarray
    converged: bool
    local_min: bool


def stationary_point(
    x: np.ndarray,
    weights: np.ndarray,
    lam: float,
    loss: str = "exp",
    start: np.ndarray | None = None,
    tol: float = 1e-12,
    max_iter: int = 500,
) -> Stationary:
    """Zero of ``∇[Σ_i c_i ℓ(⟨w, z_i⟩) + λ/2‖w‖²]`` by damped Newton, ``z_i = y_i x_i`` given as
    ``x`` (labels folded in), ``c_i = weights`` (negative for ascent). Steps are halved until the
    gradient norm decreases; ``converged`` is False when none does (no stationary point near
    ``start``, e.g. DA whose objective has none)."""
    w = np.zeros(x.shape[1]) if start is None else np.array(start, dtype=float)

    def grad_hess(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d1, d2 = _loss_derivatives(x @ v, loss)
        g = x.T @ (weights * d1) + lam * v
        h = (x * (weights * d2)[:, None]).T @ x + lam * np.eye(len(v))
        return g, h

    with np.errstate(over="ignore", invalid="ignore"):
        g, h = grad_hess(w)
        for _ in range(max_iter):
            norm = np.linalg.norm(g)
            if norm < tol:
                break
            try:
                step = np.linalg.solve(h, g)
            except np.linalg.LinAlgError:
                step = g
            t, improved = 1.0, False
            while t > 1e-12:
                cand = w - t * step
                g_c, h_c = grad_hess(cand)
                if np.all(np.isfinite(g_c)) and np.linalg.norm(g_c) < norm:
                    w, g, h, improved = cand, g_c, h_c, True
                    break
                t /= 2
            if not improved:
                break
        converged = bool(np.all(np.isfinite(g)) and np.linalg.norm(g) < 1e-8)
        local_min = converged and bool(np.linalg.eigvalsh(h)[0] > 0)
    return Stationary(w, converged, local_min)


def solve_three(
    retain_x: np.ndarray,
    retain_n: np.ndarray,
    forget_x: np.ndarray,
    forget_n: np.ndarray,
    lam: float,
    loss: str = "exp",
    n_retain: float | None = None,
    n_forget: float | None = None,
) -> dict[str, Stationary]:
    """Original (D), retrained (R) and descent-ascent (DA) solutions of 002 eq. 1 for groups of
    identical points: rows of ``retain_x``/``forget_x`` (labels folded in) with counts
    ``retain_n``/``forget_n`` (real counts allowed: each group is one weighted point).

    ``n_retain``/``n_forget`` are |R| and |F| (default: the groups' totals); larger values stand
    for points on orthogonal coordinates, which only enter the objectives through these
    normalisers (Assumption 1), so the block is solved on its own."""
    n_r = retain_n.sum() if n_retain is None else n_retain
    n_f = forget_n.sum() if n_forget is None else n_forget
    x = np.vstack([retain_x, forget_x])
    d = stationary_point(x, np.concatenate([retain_n, forget_n]) / (n_r + n_f), lam, loss)
    r = stationary_point(retain_x, retain_n / n_r, lam, loss)
    da_weights = np.concatenate([retain_n / n_r, -forget_n / n_f])
    da = stationary_point(x, da_weights, lam, loss, start=d.w)
    return {"D": d, "R": r, "DA": da}


def closed_form_1d(r_j: float, alpha: float, n_r: float, n_f: float, lam: float) -> dict:
    """Lemma 5 (002): ``w^D, w^R, w^DA`` on coordinate j (principal branch W_0; NaN for w^DA when
    its argument is below −1/e, i.e. DA has no stationary point)."""

    def w0(z: float) -> float:
        return float(lambertw(z, 0).real) if z >= -1 / math.e else math.nan

    return {
        "D": w0((1 + alpha) * r_j / (lam * (n_r + n_f))),
        "R": w0(r_j / (lam * n_r)),
        "DA": w0((1 - alpha * n_r / n_f) * r_j / (lam * n_r)),
    }


def semi_orthogonal(
    alphas: list[float], r_j: float, other_retain: float, other_forget: float, lam: float, loss: str
) -> list[dict[str, float]]:
    """Lemma 2 over α on coordinate j (the other points only set |R| and |F|)."""
    rows = []
    one = np.ones((1, 1))
    for alpha in alphas:
        f_j = alpha * r_j
        n_r, n_f = r_j + other_retain, f_j + other_forget
        sol = solve_three(
            one, np.array([r_j]), one, np.array([f_j]), lam, loss, n_retain=n_r, n_forget=n_f
        )
        w = {k: (s.w[0] if s.converged else math.nan) for k, s in sol.items()}
        closed = closed_form_1d(r_j, alpha, n_r, n_f, lam) if loss == "exp" else {}
        product = (w["DA"] - w["D"]) * (w["D"] - w["R"])
        rows.append(
            {
                "alpha": alpha,
                "w_D": w["D"],
                "w_R": w["R"],
                "w_DA": w["DA"],
                "da_exists": float(sol["DA"].converged),
                "da_local_min": float(sol["DA"].local_min),
                "closed_D": closed.get("D", math.nan),
                "closed_R": closed.get("R", math.nan),
                "closed_DA": closed.get("DA", math.nan),
                "sign_product": product,
                "lemma2_holds": float(product >= -1e-12) if math.isfinite(product) else math.nan,
                "stated_range": float(alpha <= n_f / n_r),
            }
        )
    return rows


def alpha_d_gt_da(eps: float, n_f: float, n_r: float) -> float:
    """Lemma 11 (002 App. C.1.2): ``α^{D>DA} = max{(1+ε²)/(2ε)·|F|²/(|R|(|D|+|F|)),
    2ε/(1+ε²)·|F||D|/(|R|(|D|+|F|))}``."""
    n_d = n_r + n_f
    denom = n_r * (n_d + n_f)
    return max(
        (1 + eps**2) / (2 * eps) * n_f**2 / denom, 2 * eps / (1 + eps**2) * n_f * n_d / denom
    )


def correlated_2d(
    epsilons: list[float],
    alphas: list[float],
    r_pair: float,
    other_retain: float,
    other_forget: float,
    lam: float,
    loss: str,
) -> list[dict[str, float]]:
    """The 2-D example over (ε, α): ``r_pair`` retain points (1, ε), ``α·r_pair`` forget points
    (ε, 1); ``other_retain``/``other_forget`` points on orthogonal axes set |R| and |F|."""
    rows = []
    for eps in epsilons:
        retain_x = np.array([[1.0, eps]])
        forget_x = np.array([[eps, 1.0]])
        for alpha in alphas:
            retain_n, forget_n = np.array([r_pair]), np.array([alpha * r_pair])
            n_r, n_f = r_pair + other_retain, alpha * r_pair + other_forget
            sol = solve_three(
                retain_x, retain_n, forget_x, forget_n, lam, loss, n_retain=n_r, n_forget=n_f
            )

            def xy(s: Stationary, eps: float = eps) -> tuple[float, float]:
                if not s.converged:
                    return math.nan, math.nan
                return s.w[0] + eps * s.w[1], eps * s.w[0] + s.w[1]

            (xr, yr), (xd, yd), (xa, ya) = xy(sol["R"]), xy(sol["D"]), xy(sol["DA"])
            det = (xr - xd) * (xd - xa) >= 0 and (yr - yd) * (yd - ya) >= 0
            rows.append(
                {
                    "epsilon": eps,
                    "alpha": alpha,
                    "x_R": xr, "y_R": yr, "x_D": xd, "y_D": yd, "x_DA": xa, "y_DA": ya,
                    "da_exists": float(sol["DA"].converged),
                    "detrimental": float(det) if sol["DA"].converged else math.nan,
                    "d_ge_da": float(xd >= xa and yd >= ya) if sol["DA"].converged else math.nan,
                    "r_ge_d": float(xr >= xd and yr >= yd),
                    "alpha_d_gt_da_lemma11": alpha_d_gt_da(eps, n_f, n_r),
                }
            )  # fmt: skip
    return rows


def plot(rows1: list[dict], rows2: list[dict], epsilons, alphas, path: Path) -> Path:
    """Left: w^D, w^R, w^DA vs α (Lemma 2/5). Right: detrimental (ε, α) region (Fig. 3)."""
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=90)
    al = [r["alpha"] for r in rows1]
    for key, c in (("D", "k"), ("R", "C0"), ("DA", "C3")):
        a1.plot(al, [r[f"w_{key}"] for r in rows1], c=c, label=f"w^{key} (Newton)")
        a1.plot(al, [r[f"closed_{key}"] for r in rows1], c=c, ls=":", lw=2, label=f"Lemma 5 {key}")
    bad = [r for r in rows1 if r["lemma2_holds"] == 0]
    if bad:
        a1.scatter(
            [r["alpha"] for r in bad], [r["w_DA"] for r in bad], marker="x", c="C1", zorder=3,
            label="Lemma 2 sign fails",
        )  # fmt: skip
    stated = [r["alpha"] for r in rows1 if r["stated_range"]]
    if stated:
        a1.axvspan(min(al), max(stated), color="0.5", alpha=0.12, label="α ≤ |F|/|R| (stated)")
    a1.set_xlabel("α = |F_j| / |R_j|")
    a1.set_ylabel("w_j")
    a1.set_title("semi-orthogonal data: original, retrain, descent-ascent (002 §4.2)", fontsize=9)
    a1.legend(fontsize=7, frameon=False)

    table = {(r["epsilon"], r["alpha"]): r for r in rows2}
    code = np.array(
        [[(2 if table[(e, a)]["detrimental"] == 1 else 1 if table[(e, a)]["da_exists"] else 0)
          for e in epsilons] for a in alphas]
    )  # fmt: skip
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["0.85", "C0", "C3"])
    a2.pcolormesh(
        np.arange(len(epsilons) + 1), np.arange(len(alphas) + 1), code, cmap=cmap, vmin=0, vmax=2
    )
    a2.plot(
        np.arange(len(epsilons)) + 0.5,
        [np.interp(table[(e, alphas[0])]["alpha_d_gt_da_lemma11"], alphas, np.arange(len(alphas)))
         + 0.5 for e in epsilons],
        "k--", label="Lemma 3/11 α^{D>DA}",
    )  # fmt: skip
    a2.set_xticks(np.arange(len(epsilons)) + 0.5, [f"{e:g}" for e in epsilons], fontsize=7)
    a2.set_yticks(np.arange(len(alphas)) + 0.5, [f"{a:g}" for a in alphas], fontsize=7)
    a2.set_xlabel("correlation ε")
    a2.set_ylabel("α = |F| / |R_ij|")
    a2.set_title("2-D: red = DA detrimental, blue = not, grey = no DA stationary point", fontsize=9)
    a2.legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)


def _validate(
    lam: Any,
    loss: Any,
    alphas: list[float] | None,
    epsilons: list[float] | None,
    alphas_2d: list[float] | None,
    sizes: dict[str, Any],
) -> tuple[list[float], list[float], list[float]]:
    """Check every ``lab.*`` setting (before any work); return the α, ε and 2-D α grids, with
    the defaults filled in (20 α in [0.05, 1], 9 ε in [0.1, 0.9])."""
    checks.positive("lam", lam, "0.1")
    checks.choice("loss", loss, LOSSES)
    alphas = checks.number_list(
        "alphas", list(alphas or np.round(np.linspace(0.05, 1.0, 20), 3)), 1e-6, 1e6, "[0.1,0.5]"
    )
    epsilons = checks.number_list(
        "epsilons", list(epsilons or np.round(np.linspace(0.1, 0.9, 9), 2)), 1e-6, 1, "[0.2,0.5]"
    )
    alphas_2d = checks.number_list(
        "alphas_2d", list(alphas_2d or np.round(np.linspace(0.05, 1.0, 20), 3)), 1e-6, 1e6, "[0.5]"
    )
    for key in ("r_j", "r_pair"):
        checks.positive(key, sizes[key], "50")
    for key in ("other_retain", "other_forget", "other_retain_2d", "other_forget_2d"):
        checks.in_range(key, sizes[key], 0, 1e9, "50")
    return alphas, epsilons, alphas_2d


def lemma_metrics(rows1: list[dict], rows2: list[dict]) -> dict[str, float]:
    """The lab's headline numbers from the semi-orthogonal (``rows1``) and 2-D (``rows2``) rows:

    * ``lemma2/*``: how often Lemma 2's sign condition ``(w^DA − w^D)(w^D − w^R) ≥ 0`` holds
      among the α with a DA stationary point, overall and inside its stated range α ≤ |F|/|R|;
    * ``lemma5/max_abs_error``: Newton's solutions vs Lemma 5's Lambert-W closed forms;
    * ``fig3/*``: the fraction of (ε, α) cells where DA is detrimental / has no solution;
    * ``lemma11/holds_fraction``: D ≥ DA where α ≥ Lemma 11's bound α^{D>DA}.
    """
    exists = [r for r in rows1 if r["da_exists"]]
    stated = [r for r in exists if r["stated_range"]]
    closed_err = [
        abs(r[f"w_{k}"] - r[f"closed_{k}"])
        for r in rows1
        for k in ("D", "R", "DA")
        if math.isfinite(r[f"closed_{k}"]) and math.isfinite(r[f"w_{k}"])
    ]
    lemma11_rows = [r for r in rows2 if r["da_exists"] and r["alpha"] >= r["alpha_d_gt_da_lemma11"]]
    return {
        "lemma2/holds_fraction": float(np.mean([r["lemma2_holds"] for r in exists]))
        if exists
        else math.nan,
        "lemma2/holds_fraction_in_stated_range": float(np.mean([r["lemma2_holds"] for r in stated]))
        if stated
        else math.nan,
        "lemma2/n_alpha_in_stated_range": float(len(stated)),
        "lemma2/n_alpha_without_da_solution": float(len(rows1) - len(exists)),
        "lemma5/max_abs_error": max(closed_err) if closed_err else math.nan,
        "fig3/detrimental_fraction": float(np.nanmean([r["detrimental"] for r in rows2])),
        "fig3/no_da_solution_fraction": float(np.mean([1 - r["da_exists"] for r in rows2])),
        "lemma11/holds_fraction": float(np.mean([r["d_ge_da"] for r in lemma11_rows]))
        if lemma11_rows
        else math.nan,
    }


def _summary(
    metrics: dict[str, float], rows2: list[dict], epsilons: list[float], loss: str, lam: float
) -> str:
    """The printed summary: Lemmas 2, 5 and 11 and the detrimental α range per ε."""
    ranges = []
    for eps in epsilons:
        det = [r["alpha"] for r in rows2 if r["epsilon"] == eps and r["detrimental"] == 1]
        ranges.append(f"ε={eps:g}: " + (f"[{min(det):g}, {max(det):g}]" if det else "none"))
    lines = [
        f"logistic DA (002 §4, {loss} loss, λ={lam}):",
        f"Lemma 2 sign condition holds for {fmt(metrics['lemma2/holds_fraction'], 2)} of α with a "
        f"DA solution; inside the stated range α ≤ |F|/|R|: "
        f"{fmt(metrics['lemma2/holds_fraction_in_stated_range'], 2)} "
        f"({int(metrics['lemma2/n_alpha_in_stated_range'])} α); Newton vs Lemma 5 closed form: "
        f"max |error| {metrics['lemma5/max_abs_error']:.1e}",
        f"2-D: DA detrimental in {fmt(metrics['fig3/detrimental_fraction'], 2)} of (ε, α) cells "
        f"with a DA solution; Lemma 11 bound holds in {fmt(metrics['lemma11/holds_fraction'], 2)}",
        "α ranges where DA is detrimental: " + "; ".join(ranges),
    ]
    return "\n".join(lines)


def run(
    cfg: DictConfig,
    lam: float = 0.1,
    loss: str = "exp",
    alphas: list[float] | None = None,
    r_j: float = 50,
    other_retain: float = 150,
    other_forget: float = 100,
    epsilons: list[float] | None = None,
    alphas_2d: list[float] | None = None,
    r_pair: float = 50,
    other_retain_2d: float = 150,
    other_forget_2d: float = 100,
) -> dict[str, Any]:
    """Run both parts; write ``logistic_da_{1d,2d}.csv``, ``logistic_da.png``, ``results.json``."""
    sizes = dict(
        r_j=r_j,
        r_pair=r_pair,
        other_retain=other_retain,
        other_forget=other_forget,
        other_retain_2d=other_retain_2d,
        other_forget_2d=other_forget_2d,
    )
    alphas, epsilons, alphas_2d = _validate(lam, loss, alphas, epsilons, alphas_2d, sizes)
    rows1 = semi_orthogonal(alphas, r_j, other_retain, other_forget, lam, loss)
    rows2 = correlated_2d(epsilons, alphas_2d, r_pair, other_retain_2d, other_forget_2d, lam, loss)
    out = output_dir(cfg)
    write_csv(out / "logistic_da_1d.csv", rows1)
    write_csv(out / "logistic_da_2d.csv", rows2)
    png = plot(rows1, rows2, epsilons, alphas_2d, out / "logistic_da.png")
    metrics = lemma_metrics(rows1, rows2)
    return finish(cfg, metrics, [png], _summary(metrics, rows2, epsilons, loss, lam))
