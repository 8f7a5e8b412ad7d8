"""Entanglement of retain and forget embeddings (000 §4.2, eq. 11 and App. C.3; SPEC §5).

Both scores read L2-normalised penultimate embeddings of R and F:

* ``E_Var`` (000 eq. 11): intra-set variance over inter-set variance,

      E_Var(R, F) = [ (1/|R|) Σ_{i∈R} ‖φ_i − μ_R‖² + (1/|F|) Σ_{j∈F} ‖φ_j − μ_F‖² ]
                    / [ ½ (‖μ_R − μ‖² + ‖μ_F − μ‖²) ],

  μ_R, μ_F the set means and μ the mean over R ∪ F. Large = entangled (the sets overlap).
* ``E_Wp`` (000 App. C.3): draw equally many embeddings from R and F, put uniform weights on
  both clouds, compute the exact optimal-transport (Wasserstein-p) distance with POT
  (``ot.emd2``, Euclidean ground cost to the power p) and report 1 − distance. 1 = the clouds
  coincide; it drops as they separate.

The class-wise variants (``E^Cls``) compute the score between R_c and F_c within each class c
that has samples in both sets and average them weighted by |F_c|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class EntanglementUndefined(ValueError):
    """The sets given cannot produce a score (e.g. no class has both retain and forget samples)."""


def e_var(retain: np.ndarray, forget: np.ndarray) -> float:
    """Raw E_Var of 000 eq. 11 between ``(n_R, d)`` and ``(n_F, d)`` embeddings (squared
    deviations are squared Euclidean norms)."""
    retain, forget = np.asarray(retain, np.float64), np.asarray(forget, np.float64)
    if len(retain) == 0 or len(forget) == 0:
        raise EntanglementUndefined("E_Var needs at least one retain and one forget embedding")
    mu_r, mu_f = retain.mean(0), forget.mean(0)
    mu = np.concatenate([retain, forget]).mean(0)
    intra = ((retain - mu_r) ** 2).sum(1).mean() + ((forget - mu_f) ** 2).sum(1).mean()
    inter = 0.5 * (((mu_r - mu) ** 2).sum() + ((mu_f - mu) ** 2).sum())
    if inter <= 0.0:
        raise EntanglementUndefined("E_Var is undefined: R and F have the same mean embedding")
    return float(intra / inter)


def rescale(values: dict[str, float]) -> dict[str, float]:
    """Min-max rescaling of raw E_Var scores to [0, 1] over the value range of all scores given
    (000 App. C.3: "rescale the raw scores to [0, 1] based on the value range across global and
    class-wise scores"). Non-finite values stay NaN; a single finite value maps to 1."""
    finite = [v for v in values.values() if np.isfinite(v)]
    if not finite:
        return {k: float("nan") for k in values}
    lo, hi = min(finite), max(finite)
    span = hi - lo
    return {
        k: (float("nan") if not np.isfinite(v) else 1.0 if span == 0 else (v - lo) / span)
        for k, v in values.items()
    }


@dataclass
class Transport:
    """An exact optimal-transport distance and whether the network simplex converged."""

    distance: float
    converged: bool
    message: str = ""


def wasserstein(
    a: np.ndarray, b: np.ndarray, p: float = 2.0, num_itermax: int = 1_000_000
) -> Transport:
    """Exact W_p between two equal-weight point clouds (POT ``ot.emd2``).

    ``ot.emd2`` stops at ``numItermax`` with only a warning; here the limit is raised and the
    solver's own report (``log["warning"]``) is returned, so non-convergence is surfaced rather
    than silently accepted.
    """
    import ot

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cost = ot.dist(a, b, metric="euclidean") ** p
    wa, wb = ot.unif(len(a)), ot.unif(len(b))
    value, log = ot.emd2(wa, wb, cost, numItermax=int(num_itermax), log=True)
    message = log.get("warning") or ""
    return Transport(float(value) ** (1.0 / p), not message, str(message))


def e_wp(
    retain: np.ndarray,
    forget: np.ndarray,
    max_samples: int,
    rng: np.random.Generator,
    p: float = 2.0,
    num_itermax: int = 1_000_000,
) -> tuple[float, Transport]:
    """E_Wp = 1 − W_p between equal-size random samples of R and F (000 App. C.3): both clouds
    get ``n = min(|R|, |F|, max_samples)`` points drawn without replacement. Returns the score
    and the transport report."""
    n = min(len(retain), len(forget), max_samples)
    if n < 1:
        raise EntanglementUndefined("E_Wp needs at least one retain and one forget embedding")
    r = np.asarray(retain)[rng.choice(len(retain), n, replace=False)]
    f = np.asarray(forget)[rng.choice(len(forget), n, replace=False)]
    transport = wasserstein(r, f, p, num_itermax)
    return 1.0 - transport.distance, transport


def classwise(
    score, retain: np.ndarray, y_retain: np.ndarray, forget: np.ndarray, y_forget: np.ndarray
) -> tuple[float, list]:
    """Class-wise entanglement: ``score(R_c, F_c)`` for every class c present in both R and F,
    averaged with weights |F_c| (000 §4.2, "weighted averaged E^Cls"). ``score`` returns a float
    or a ``(float, extra)`` pair; the extras are returned in class order.

    Raises :class:`EntanglementUndefined` when no class has samples in both sets (e.g. class
    forgetting, where R holds none of the forgotten class).
    """
    y_retain, y_forget = np.asarray(y_retain), np.asarray(y_forget)
    values, weights, extras = [], [], []
    for c in np.unique(y_forget):
        r, f = retain[y_retain == c], forget[y_forget == c]
        if len(r) == 0:
            continue
        try:
            out = score(r, f)
        except EntanglementUndefined:
            continue
        value, extra = out if isinstance(out, tuple) else (out, None)
        values.append(value)
        weights.append(len(f))
        extras.append(extra)
    if not values:
        raise EntanglementUndefined(
            "no class has samples in both R and F (class-wise entanglement needs at least one "
            f"shared class; F has classes {sorted(np.unique(y_forget).tolist())})"
        )
    return float(np.average(values, weights=weights)), extras
