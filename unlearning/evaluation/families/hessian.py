"""Sharpness: the top Hessian eigenvalue of the loss by power iteration."""

from __future__ import annotations

from collections.abc import Sequence

from unlearning.evaluation.family import Context, Evaluation, Family, Needs, SampleNeed, prefix
from unlearning.evaluation.metrics.hessian import top_hessian_eigenvalue


class HessianSharpness(Family):
    """``hessian_top/<set>`` and ``original/hessian_top/<set>``: the top Hessian eigenvalue
    (largest magnitude, signed Rayleigh quotient) of the mean cross-entropy on a fixed sample of
    each set, by power iteration on Hessian-vector products; a run that stops at ``iterations``
    before reaching ``tol`` keeps its value and gets a note.

    Args:
        sets: the sets the loss is measured on.
        max_samples: a fixed (``eval.seed``) sample of at most this many inputs per set.
        iterations: at most this many Hessian-vector products.
        tol: stop when the eigenvalue estimate changes by less (relative).
    """

    def __init__(
        self,
        sets: Sequence[str] = ("retain", "forget"),
        max_samples: int = 256,
        iterations: int = 30,
        tol: float = 1e-2,
    ) -> None:
        self.sets, self.max_samples = list(sets), max_samples
        self.iterations, self.tol = iterations, tol

    def needs(self) -> Needs:
        """A sample of each of ``sets`` (the products run their own passes)."""
        return Needs(samples=frozenset(SampleNeed(s, self.max_samples) for s in self.sets))

    def run(self, ctx: Context, result: Evaluation) -> None:
        for set_name in self.sets:
            x, y = ctx.store.sample(set_name, self.max_samples, ctx.seed)
            for model in ("original", "unlearned"):
                key = f"{prefix(model)}hessian_top/{set_name}"
                if len(y) == 0:
                    result.skip([key], f"the {set_name} set is empty")
                    continue
                eig = top_hessian_eigenvalue(
                    ctx.store.models[model], x, y, self.iterations, self.tol, ctx.seed
                )
                result.metrics[key] = eig.value
                if not eig.converged:
                    result.notes[key] = (
                        f"power iteration stopped after {eig.iterations} products without "
                        f"reaching tol={self.tol}; raise eval.hessian.iterations"
                    )
