"""U-LiRA (Hayes et al. 2024, arXiv 2403.01218): the per-example likelihood-ratio attack that
tells unlearned models from oracles, run on the model ensembles the pipeline builds."""

from __future__ import annotations

from unlearning.evaluation.family import (
    EVAL_SETS,
    Context,
    Ensemble,
    Evaluation,
    OracleComparison,
    prefix,
)
from unlearning.evaluation.metrics.ulira import ulira_accuracy


class ULiRA(OracleComparison):
    """``ulira/acc_<set>`` for R, F and D_test: per example, Gaussians fitted to the margins
    (LiRA's logit-scaled confidence) of shadow unlearned models and shadow oracles, a
    likelihood-ratio test on held-out members of both ensembles, and the attack's balanced
    accuracy averaged over the set (:mod:`unlearning.evaluation.metrics.ulira`). 0.5: the
    unlearned models cannot be told from the oracles; 1: every held-out model is told.
    ``ulira/acc_forget`` is the paper's number; R and D_test show whether unlearning left a trace
    on the data it kept.

    With ``original``, ``original/ulira/acc_<set>`` runs the same attack on N pretrained models
    f_A^k against the oracles: the attack on doing nothing, the reference an unlearning method
    starts from (002 App. M reports KLoM's counterpart).

    Args:
        models: N, the members of each ensemble (the same N as ``eval.klom.models`` shares the
            ensembles with KLoM).
        folds: cross-fitting folds (member k of each ensemble is a target in fold ``k % folds``,
            a shadow in the others); ``None``: leave-one-out; 2: disjoint shadow and target
            halves.
        original: also attack the pretrained ensemble.
    """

    def __init__(self, models: int = 8, folds: int | None = None, original: bool = False) -> None:
        super().__init__(models, original)
        self.folds = folds

    def run(self, ctx: Context, result: Evaluation) -> None:
        oracle = ctx.ensembles.get(self.oracles)
        for model, need in self.compared.items():
            keys = [f"{prefix(model)}ulira/acc_{s}" for s in EVAL_SETS]
            attacked = ctx.ensembles.get(need)
            if oracle is None or attacked is None:
                result.skip(keys, "U-LiRA needs the ensembles the pipeline builds")
                continue
            self._attack(attacked, oracle, keys, result)

    def _attack(
        self, attacked: Ensemble, oracle: Ensemble, keys: list[str], result: Evaluation
    ) -> None:
        """U-LiRA of ``attacked`` against ``oracle`` on each set into ``keys`` (a set it cannot
        attack, empty or with non-finite margins, is skipped with the reason)."""
        if attacked.note is not None:
            result.notes[keys[EVAL_SETS.index("forget")]] = attacked.note
        for set_name, key in zip(EVAL_SETS, keys):
            if oracle.margins[set_name].shape[1] == 0:
                result.skip([key], f"the {set_name} set is empty")
                continue
            try:
                result.metrics[key] = ulira_accuracy(
                    attacked.margins[set_name], oracle.margins[set_name], self.folds
                )
            except ValueError as error:
                result.skip([key], str(error))
