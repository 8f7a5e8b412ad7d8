"""Membership inference on F and Avg. Gap (000 App. C.3, 004 §5.1)."""

from __future__ import annotations

import math

from unlearning.evaluation.family import (
    EVAL_SETS,
    MODELS,
    Context,
    Evaluation,
    Family,
    Needs,
    prefix,
)
from unlearning.evaluation.metrics.mia import avg_gap, membership_inference
from unlearning.outputs.results import accuracy_key


class MembershipInference(Family):
    """``mia``, ``mia_efficacy`` (and ``oracle/``, ``original/``) and ``avg_gap``.

    Per model, an RBF SVC learns *member* on R and *non-member* on D_test (at most
    ``max_samples`` of each, drawn with ``eval.seed``) and is applied to F: ``mia`` is the
    fraction of F judged member (000's MIA correctness), ``mia_efficacy = 1 − mia`` (004). Avg.
    Gap is the mean of |f_U − oracle| over UA, MIA-efficacy, RA and TA (004 §5.1).

    Args:
        max_samples: members and as many non-members that train the attack.
    """

    def __init__(self, max_samples: int = 2000) -> None:
        self.max_samples = max_samples

    def needs(self) -> Needs:
        """The logits of every model on every set."""
        return Needs.of(MODELS, EVAL_SETS)

    def run(self, ctx: Context, result: Evaluation) -> None:
        for model in ("unlearned", "oracle", "original"):
            keys = [f"{prefix(model)}mia", f"{prefix(model)}mia_efficacy"]
            sets = {s: ctx.store.outputs(model, s) for s in EVAL_SETS}
            empty = [s for s, o in sets.items() if len(o) == 0]
            if empty:
                result.skip(
                    keys, f"MIA needs non-empty retain, test and forget sets; empty: {empty}"
                )
                continue
            try:
                value = membership_inference(
                    (sets["retain"].logits, sets["retain"].labels),
                    (sets["test"].logits, sets["test"].labels),
                    (sets["forget"].logits, sets["forget"].labels),
                    max_samples=self.max_samples,
                    seed=ctx.seed,
                )
            except ValueError as exc:  # e.g. non-finite outputs of a diverged model
                result.skip(keys, f"the attack cannot use this model's outputs: {exc}")
                continue
            result.metrics[keys[0]], result.metrics[keys[1]] = value, 1.0 - value
        m = {**ctx.metrics, **result.metrics}
        unlearned = {k: m.get(k, math.nan) for k in ("ua", "ra", "ta", "mia_efficacy")}
        oracle = {
            "ua": 1.0 - m.get(accuracy_key("oracle", "forget"), math.nan),
            "ra": m.get(accuracy_key("oracle", "retain"), math.nan),
            "ta": m.get(accuracy_key("oracle", "test"), math.nan),
            "mia_efficacy": m.get("oracle/mia_efficacy", math.nan),
        }
        result.metrics["avg_gap"] = avg_gap(unlearned, oracle)
        if not math.isfinite(result.metrics["avg_gap"]):
            result.notes["avg_gap"] = "a term of Avg. Gap (UA, MIA-efficacy, RA, TA) is undefined"
