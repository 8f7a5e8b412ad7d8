"""The NeurIPS 2023 unlearning competition's forgetting quality and final score (Triantafillou et
al. 2024, arXiv 2406.09073), on the model ensembles the pipeline builds."""

from __future__ import annotations

import math

from unlearning.evaluation.family import (
    Context,
    Evaluation,
    OracleComparison,
    prefix,
)
from unlearning.evaluation.metrics.forgetting_quality import final_score, forgetting_quality


class ForgettingQuality(OracleComparison):
    """``forgetting_quality``: per forget example, ε of the best threshold attack between N
    unlearned models and N oracles, scored 1, ½, ¼, … by ε's bin and averaged over F
    (:mod:`unlearning.evaluation.metrics.forgetting_quality`); 1 = no attack tells them apart.
    ``forgetting_score``: the competition's final score, ``forgetting_quality`` ×
    (RA_U / RA_oracle) × (TA_U / TA_oracle), from the job's accuracies ``unlearned/acc_retain``,
    ``oracle/acc_retain``, ``unlearned/acc_test``, ``oracle/acc_test`` (the competition averages
    the accuracies over its N unlearned and N retrained models; here they are f_U's and the
    job's oracle's, the ensembles hold margins only).

    With ``original``, ``original/forgetting_quality`` and ``original/forgetting_score`` score N
    pretrained models f_A^k against the oracles (with f_A's accuracies): doing nothing.

    Args:
        models: N, the members of each ensemble (≥ 3: the score's ε bins end at ⌈log(N − 1)⌉;
            the competition used 512; the same N as ``eval.klom.models`` shares the ensembles).
        original: also score the pretrained ensemble.
    """

    def run(self, ctx: Context, result: Evaluation) -> None:
        oracle = ctx.ensembles.get(self.oracles)
        for model, need in self.compared.items():
            quality_key = f"{prefix(model)}forgetting_quality"
            score_key = f"{prefix(model)}forgetting_score"
            scored = ctx.ensembles.get(need)
            if oracle is None or scored is None:
                reason = "the forgetting quality needs the ensembles the pipeline builds"
                result.skip([quality_key, score_key], reason)
                continue
            if scored.note is not None:
                result.notes[quality_key] = scored.note
            if oracle.margins["forget"].shape[1] == 0:
                result.skip([quality_key, score_key], "the forget set is empty")
                continue
            try:
                quality = forgetting_quality(scored.margins["forget"], oracle.margins["forget"])
            except ValueError as error:
                result.skip([quality_key, score_key], str(error))
                continue
            result.metrics[quality_key] = quality
            accuracies = [
                ctx.metrics.get(f"{m}/acc_{s}", math.nan)
                for s in ("retain", "test")
                for m in (model, "oracle")
            ]
            if not all(math.isfinite(a) for a in accuracies) or 0.0 in accuracies[1::2]:
                result.skip(
                    [score_key],
                    f"the final score needs the accuracies {model}/acc_retain, "
                    f"oracle/acc_retain, {model}/acc_test, oracle/acc_test (the oracle's > 0); "
                    f"got {accuracies}",
                )
                continue
            result.metrics[score_key] = final_score(quality, *accuracies)
