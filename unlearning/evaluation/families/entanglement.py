"""Entanglement of the retain and forget embeddings: E_Var (000 eq. 11) and E_Wp (000 App. C.3)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from unlearning.evaluation.family import Context, Evaluation, Family, Needs, prefix
from unlearning.evaluation.metrics import entanglement as ent
from unlearning.evaluation.metrics.features import Outputs

log = logging.getLogger(__name__)


class Entanglement(Family):
    """``e_var_all|cls`` (rescaled), ``e_var_all|cls_raw`` and ``e_wp_all|cls`` of f_U, and the
    same under ``original/`` for f_A. The rescaling of E_Var to [0, 1] (000 App. C.3) runs over
    the four raw values of both models.

    Args:
        max_samples: E_Wp: points per cloud (equal-size samples of R and F).
        p: Wasserstein order; the ground cost is the Euclidean distance to the power p.
        num_itermax: ``ot.emd2``'s iteration limit; a transport that did not converge keeps its
            value and gets a note.
    """

    def __init__(self, max_samples: int = 500, p: float = 2, num_itermax: int = 1_000_000) -> None:
        self.max_samples, self.p, self.num_itermax = max_samples, p, num_itermax

    def needs(self) -> Needs:
        """The embeddings of f_A and f_U on R and F."""
        return Needs.of(("original", "unlearned"), ("retain", "forget"), embeddings=True)

    def run(self, ctx: Context, result: Evaluation) -> None:
        raw: dict[str, float] = {}
        for model in ("original", "unlearned"):
            r = ctx.store.outputs(model, "retain", True)
            f = ctx.store.outputs(model, "forget", True)
            raw.update(self._model(ctx.seed, prefix(model), r, f, result))
        for key, value in ent.rescale(raw).items():
            result.metrics[key.removesuffix("_raw")] = value
            if not math.isfinite(value):
                result.notes[key.removesuffix("_raw")] = result.notes.get(key, "undefined")

    def _model(
        self, seed: int, pre: str, r: Outputs, f: Outputs, result: Evaluation
    ) -> dict[str, float]:
        """One model's entanglement scores into ``result``; returns its raw E_Var values."""
        er, ef = r.normalized_embeddings(), f.normalized_embeddings()
        yr, yf = r.labels.numpy(), f.labels.numpy()
        rng = np.random.default_rng(seed)

        def wp(a: np.ndarray, b: np.ndarray) -> tuple[float, ent.Transport]:
            return ent.e_wp(a, b, self.max_samples, rng, self.p, self.num_itermax)

        attempts: dict[str, Callable[[], Any]] = {
            f"{pre}e_var_all_raw": lambda: ent.e_var(er, ef),
            f"{pre}e_var_cls_raw": lambda: ent.classwise(ent.e_var, er, yr, ef, yf)[0],
            f"{pre}e_wp_all": lambda: wp(er, ef),
            f"{pre}e_wp_cls": lambda: ent.classwise(wp, er, yr, ef, yf),
        }
        raw: dict[str, float] = {}
        for key, compute in attempts.items():
            try:
                value = compute()
            except ent.EntanglementUndefined as exc:
                result.skip([key], str(exc))
                if key.endswith("_raw"):
                    raw[key] = float("nan")
                continue
            if isinstance(value, tuple):  # E_Wp: (score, transport report(s))
                value, transports = value
                transports = transports if isinstance(transports, list) else [transports]
                failed = [t.message for t in transports if t is not None and not t.converged]
                if failed:
                    result.notes[key] = (
                        f"ot.emd2 did not converge ({failed[0]}); raise "
                        "eval.entanglement.num_itermax or lower eval.entanglement.max_samples"
                    )
                    log.warning("[eval] %s: %s", key, result.notes[key])
            result.metrics[key] = float(value)
            if key.endswith("_raw"):
                raw[key] = float(value)
        return raw
