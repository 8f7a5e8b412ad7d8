"""Feature plots: t-SNE of the retain and forget embeddings before and after unlearning (000
Fig. 1)."""

from __future__ import annotations

import numpy as np

from unlearning.evaluation.family import Context, Evaluation, Family, Needs
from unlearning.evaluation.metrics.features import tsne_2d


class FeaturePlots(Family):
    """``features.png``: t-SNE of R (subsampled with ``eval.seed``) and F embeddings, coloured by
    class, f_A and f_U side by side. Writes no metric; a t-SNE that cannot run on this data
    leaves a note under ``features``.

    Args:
        max_samples: retain points plotted (all of F is plotted).
    """

    def __init__(self, max_samples: int = 500) -> None:
        self.max_samples = max_samples

    def needs(self) -> Needs:
        """The embeddings of f_A and f_U on R and F."""
        return Needs.of(("original", "unlearned"), ("retain", "forget"), embeddings=True)

    def run(self, ctx: Context, result: Evaluation) -> None:
        from unlearning.outputs.plots import plot_features

        panels = {}
        rng = np.random.default_rng(ctx.seed)
        for model in ("original", "unlearned"):
            r = ctx.store.outputs(model, "retain", True)
            f = ctx.store.outputs(model, "forget", True)
            keep = np.sort(rng.choice(len(r), min(len(r), self.max_samples), replace=False))
            er, ef = r.normalized_embeddings()[keep], f.normalized_embeddings()
            try:
                points = tsne_2d(np.concatenate([er, ef]), seed=ctx.seed)
            except ValueError as exc:
                result.notes["features"] = str(exc)
                return
            panels[model] = (
                points[: len(er)],
                r.labels.numpy()[keep],
                points[len(er) :],
                f.labels.numpy(),
            )
        plot_features(panels, ctx.output_dir / "features.png")
