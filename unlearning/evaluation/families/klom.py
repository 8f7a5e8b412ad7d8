"""KLoM (002 §2 and App. M, after Georgiev et al. 2024): how far the margins of N unlearned
models are from those of N oracles, per sample, on R, F and D_test; and, as the reference point,
how far those of the N pretrained models are."""

from __future__ import annotations

import logging

from unlearning.evaluation.family import (
    EVAL_SETS,
    MODELS,
    Context,
    EnsembleNeed,
    Evaluation,
    Family,
    Needs,
)
from unlearning.evaluation.metrics.klom import klom

log = logging.getLogger(__name__)

#: 002 App. M: margin distributions become stable for all sets from N = 80 models on
STABLE_MODELS = 80


class KLoM(Family):
    """``klom/<set>`` and ``klom_original/<set>`` for R, F and D_test, and ``klom/models`` = N.

    ``klom/<set>`` is the ``percentile``-th percentile over the set of the per-sample KLoM,
    KL(unlearned ‖ oracle) between histograms of the sample's margins under N unlearned models
    (each unlearned from its own pretrained model f_A^k) and N oracles (002 App. M: N = 100,
    95th percentile). ``klom_original/<set>`` is the same with the N pretrained models f_A^k in
    place of the unlearned ones: where unlearning starts from (002 Fig. 1's circle), low on R
    and D_test and high on F. Below N = :data:`STABLE_MODELS` the histograms are noisy even on
    R and D_test (002 App. M): a warning and a note under ``klom/models`` say so.

    The family only reads margins: the pipeline builds the three ensembles before the
    evaluation (:mod:`unlearning.pipeline.stages.ensembles`), each member an entry of its
    training stage in the shared cache.

    Args:
        models: N, the members of each ensemble (002 App. M: 100).
        bins: histogram bins over the pooled range of the sample's margins (002: 20).
        clip: margins are clipped to [−clip, clip] (002: 100).
        percentile: the reported percentile of per-sample KLoM (002: 95).
    """

    def __init__(
        self, models: int = 8, bins: int = 20, clip: float = 100.0, percentile: float = 95.0
    ) -> None:
        self.models, self.bins, self.clip, self.percentile = models, bins, clip, percentile
        self.oracles = EnsembleNeed("oracle", models)
        self.originals = EnsembleNeed("original", models)
        self.unlearned = EnsembleNeed("unlearned", models)

    def needs(self) -> Needs:
        """The three ensembles (oracles first) and the outputs of the job's three models on
        every set (each ensemble's member 0 is the job's own model)."""
        return Needs.of(MODELS, EVAL_SETS, ensembles=(self.oracles, self.originals, self.unlearned))

    def run(self, ctx: Context, result: Evaluation) -> None:
        keys = {
            "klom": [f"klom/{s}" for s in EVAL_SETS],
            "klom_original": [f"klom_original/{s}" for s in EVAL_SETS],
        }
        oracle = ctx.ensembles.get(self.oracles)
        compared = {"klom": ctx.ensembles.get(self.unlearned)}
        compared["klom_original"] = ctx.ensembles.get(self.originals)
        if oracle is None or None in compared.values():
            result.skip(
                [*keys["klom"], *keys["klom_original"]],
                "KLoM needs the ensembles the pipeline builds before the evaluation",
            )
            return
        result.metrics["klom/models"] = float(self.models)
        if self.models < STABLE_MODELS:
            note = (
                f"N = {self.models} models per ensemble: 002 App. M finds KLoM stable from "
                f"N = {STABLE_MODELS} on (N = 20 or 50 inflates it even on R and D_test); "
                "eval=klom runs N = 100"
            )
            result.notes["klom/models"] = note
            log.warning("[eval] KLoM: %s", note)
        if compared["klom"].note is not None:
            result.notes["klom/forget"] = compared["klom"].note
        for name, ensemble in compared.items():
            for set_name, key in zip(EVAL_SETS, keys[name]):
                if oracle.margins[set_name].shape[1] == 0:
                    result.skip([key], f"the {set_name} set is empty")
                    continue
                result.metrics[key] = klom(
                    ensemble.margins[set_name],
                    oracle.margins[set_name],
                    self.percentile,
                    bins=self.bins,
                    clip=self.clip,
                )
