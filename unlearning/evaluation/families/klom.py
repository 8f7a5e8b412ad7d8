"""KLoM (002 §2, Georgiev et al. 2024): how far the margins of N unlearned models are from those
of N oracles, per sample, on R, F and D_test."""

from __future__ import annotations

from unlearning.evaluation.family import (
    EVAL_SETS,
    Context,
    EnsembleNeed,
    Evaluation,
    Family,
    Needs,
)
from unlearning.evaluation.metrics.klom import klom


class KLoM(Family):
    """``klom/<set>`` for R, F and D_test: the ``percentile``-th percentile over the set of the
    per-sample KLoM, KL(unlearned ‖ oracle) between histograms of the sample's margins under N
    unlearned and N oracle models (002 §2).

    The family only reads margins: the pipeline builds both ensembles before the evaluation
    (:mod:`unlearning.pipeline.stages.ensembles`: the oracles as the cached stage
    ``klom_oracles``, the unlearned models from the job's unlearning stage with N seeds).

    Args:
        models: N, the members of each ensemble (the papers use ~100, 002 App. M).
        bins: histogram bins over the pooled range of the sample's 2N margins.
        clip: margins are clipped to [−clip, clip].
        percentile: the reported percentile of per-sample KLoM.
        strategy: how the oracle ensemble is trained: ``vmap``, ``sequential`` or ``auto``
            (``vmap`` on CUDA).
    """

    def __init__(
        self,
        models: int = 8,
        bins: int = 20,
        clip: float = 100.0,
        percentile: float = 95.0,
        strategy: str = "auto",
    ) -> None:
        self.models, self.bins, self.clip, self.percentile = models, bins, clip, percentile
        self.oracles = EnsembleNeed("oracle", models, strategy)
        self.unlearned = EnsembleNeed("unlearned", models)

    def needs(self) -> Needs:
        """The two ensembles, oracles first; the logits of f_U on every set (the unlearned
        ensemble's member 0 is the job's own model)."""
        return Needs.of(("unlearned",), EVAL_SETS, ensembles=(self.oracles, self.unlearned))

    def run(self, ctx: Context, result: Evaluation) -> None:
        keys = [f"klom/{s}" for s in EVAL_SETS]
        oracle = ctx.ensembles.get(self.oracles)
        unlearned = ctx.ensembles.get(self.unlearned)
        if oracle is None or unlearned is None:
            result.skip(keys, "KLoM needs the ensembles the pipeline builds before the evaluation")
            return
        if unlearned.note is not None:
            result.notes["klom/forget"] = unlearned.note
        for set_name, key in zip(EVAL_SETS, keys):
            if oracle.margins[set_name].shape[1] == 0:
                result.skip([key], f"the {set_name} set is empty")
                continue
            result.metrics[key] = klom(
                unlearned.margins[set_name],
                oracle.margins[set_name],
                self.percentile,
                bins=self.bins,
                clip=self.clip,
            )
