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
from unlearning.evaluation.metrics.mia import VARIANTS, avg_gap, membership_inference, svc_mia
from unlearning.outputs.results import VAL, accuracy_key


class MembershipInference(Family):
    """``mia_efficacy``, ``mia``, ``mia_efficacy/<variant>``, ``mia_combined`` (and the same
    under ``oracle/`` and ``original/``) and ``avg_gap``.

    Per model, the attacks learn *member* on R and *non-member* on D_test and are applied to F
    (:mod:`unlearning.evaluation.metrics.mia`):

    * Jia et al.'s ``SVC_MIA`` protocol, one RBF SVC per feature variant: ``mia_efficacy`` is
      the fraction of F that the ``variant`` attack judges non-member (the confidence variant by
      default: 004's and SalUn's MIA-efficacy), ``mia = 1 − mia_efficacy``, and every variant of
      ``variants`` is reported as ``mia_efficacy/<variant>``;
    * the combined attack (softmax, confidence and entropy in one standardised SVC, on
      ``combined_samples`` seeded draws of each side): ``mia_combined``, the fraction of F judged
      member, when ``combined``.

    Avg. Gap is the mean of |f_U − oracle| over UA, MIA-efficacy, RA and TA (004 §5.1).
    ``mia_efficacy_val`` (f_U, oracle) is the ``variant`` attack with the validation set as the
    non-members, and ``avg_gap_val`` Avg. Gap with it and TA on the validation set: the
    selection versions, which read no test label (issue 16).

    Args:
        variant: the variant reported as ``mia_efficacy`` (one of
            :data:`~unlearning.evaluation.metrics.mia.VARIANTS`).
        variants: the variants reported as ``mia_efficacy/<variant>``.
        max_samples: ``None`` follows the protocol (all of D_test, as many retain samples);
            a number caps both sides (large test sets make the SVC slow).
        combined: also run the combined attack.
        combined_samples: members and as many non-members that train the combined attack.
    """

    def __init__(
        self,
        variant: str = "confidence",
        variants: tuple[str, ...] | list[str] = VARIANTS,
        max_samples: int | None = None,
        combined: bool = True,
        combined_samples: int = 2000,
    ) -> None:
        self.variant = variant
        self.variants = tuple(variants)
        self.max_samples = max_samples
        self.combined = combined
        self.combined_samples = combined_samples

    def needs(self) -> Needs:
        """The logits of every model on every set; f_U's and the oracle's on the validation set
        (``mia_efficacy_val``)."""
        return Needs.of(MODELS, EVAL_SETS) | Needs.of(("unlearned", "oracle"), (VAL,))

    def run(self, ctx: Context, result: Evaluation) -> None:
        for model in ("unlearned", "oracle", "original"):
            self._attack(ctx, result, model)
        for model in ("unlearned", "oracle"):
            self._validation_attack(ctx, result, model)
        m = {**ctx.metrics, **result.metrics}
        for suffix, held_out in (("", "test"), ("_val", VAL)):
            unlearned = {
                "ua": m.get("ua", math.nan),
                "ra": m.get("ra", math.nan),
                "ta": m.get(f"ta{suffix}", math.nan),
                "mia_efficacy": m.get(f"mia_efficacy{suffix}", math.nan),
            }
            oracle = {
                "ua": 1.0 - m.get(accuracy_key("oracle", "forget"), math.nan),
                "ra": m.get(accuracy_key("oracle", "retain"), math.nan),
                "ta": m.get(accuracy_key("oracle", held_out), math.nan),
                "mia_efficacy": m.get(f"oracle/mia_efficacy{suffix}", math.nan),
            }
            key = f"avg_gap{suffix}"
            result.metrics[key] = avg_gap(unlearned, oracle)
            if not math.isfinite(result.metrics[key]):
                result.notes[key] = "a term of Avg. Gap (UA, MIA-efficacy, RA, TA) is undefined"

    def _validation_attack(self, ctx: Context, result: Evaluation, model: str) -> None:
        """``mia_efficacy_val``: the ``variant`` attack with the validation set as the
        non-members (no test label is read), for the selection metric ``avg_gap_val``."""
        key = f"{prefix(model)}mia_efficacy_val"
        sets = {s: ctx.store.outputs(model, s) for s in ("retain", VAL, "forget")}
        if any(len(o) == 0 for o in sets.values()):
            result.skip([key], "MIA needs non-empty retain, validation and forget sets")
            return
        try:
            efficacy = svc_mia(
                *((sets[s].logits, sets[s].labels) for s in ("retain", VAL, "forget")),
                variants=(self.variant,),
                max_samples=self.max_samples,
            )
        except ValueError as exc:
            result.skip([key], f"the attack cannot use this model's outputs: {exc}")
            return
        result.metrics[key] = efficacy[self.variant]

    def _attack(self, ctx: Context, result: Evaluation, model: str) -> None:
        """Every attack on one model's outputs; keys skipped with the reason when it cannot."""
        head = prefix(model)
        keys = [f"{head}mia_efficacy", f"{head}mia"]
        keys += [f"{head}mia_efficacy/{v}" for v in self.variants]
        keys += [f"{head}mia_combined"] if self.combined else []
        sets = {s: ctx.store.outputs(model, s) for s in EVAL_SETS}
        empty = [s for s, o in sets.items() if len(o) == 0]
        if empty:
            result.skip(keys, f"MIA needs non-empty retain, test and forget sets; empty: {empty}")
            return
        members, non_members, targets = (
            (sets[s].logits, sets[s].labels) for s in ("retain", "test", "forget")
        )
        try:
            efficacy = svc_mia(
                members,
                non_members,
                targets,
                variants=tuple(dict.fromkeys((self.variant, *self.variants))),
                max_samples=self.max_samples,
            )
            if self.combined:
                result.metrics[f"{head}mia_combined"] = membership_inference(
                    members, non_members, targets, self.combined_samples, seed=ctx.seed
                )
        except ValueError as exc:  # e.g. non-finite outputs of a diverged model
            result.skip(keys, f"the attack cannot use this model's outputs: {exc}")
            return
        result.metrics[f"{head}mia_efficacy"] = efficacy[self.variant]
        result.metrics[f"{head}mia"] = 1.0 - efficacy[self.variant]
        for v in self.variants:
            result.metrics[f"{head}mia_efficacy/{v}"] = efficacy[v]
