"""Loss landscapes along filter-normalised random directions and the basin ratio (Li et al.
2018; 000 §4.3, Fig. 3)."""

from __future__ import annotations

from collections.abc import Sequence

from unlearning.evaluation.family import (
    Context,
    Evaluation,
    Family,
    Needs,
    SampleNeed,
    prefix,
)
from unlearning.evaluation.metrics.landscape import loss_landscape


class LossLandscape(Family):
    """``basin_ratio/<set>`` and ``original/basin_ratio/<set>``; with ``plots`` the figures
    ``landscape_<set>.png`` (f_A and f_U side by side: curve, contour, surface).

    Args:
        sets: the sets the loss is averaged over (any of ``retain``, ``forget``, ``test``).
        max_samples: a fixed (``eval.seed``) sample of at most this many inputs per set.
        radius: the grid spans [−radius, radius] along both directions.
        steps_1d: points of the 1-D curve (odd: θ itself is on the grid).
        steps_2d: points per axis of the 2-D grid the basin ratio is read from.
        plots: write ``landscape_<set>.png``.
    """

    def __init__(
        self,
        sets: Sequence[str] = ("test", "forget"),
        max_samples: int = 256,
        radius: float = 1.0,
        steps_1d: int = 11,
        steps_2d: int = 9,
        plots: bool = False,
    ) -> None:
        self.sets, self.max_samples = list(sets), max_samples
        self.radius, self.steps_1d, self.steps_2d, self.plots = radius, steps_1d, steps_2d, plots

    def needs(self) -> Needs:
        """A sample of each of ``sets`` (the landscape runs its own perturbed passes)."""
        return Needs(samples=frozenset(SampleNeed(s, self.max_samples) for s in self.sets))

    def run(self, ctx: Context, result: Evaluation) -> None:
        from unlearning.outputs.plots import plot_landscapes

        for set_name in self.sets:
            x, y = ctx.store.sample(set_name, self.max_samples, ctx.seed)
            keys = [f"{prefix(m)}basin_ratio/{set_name}" for m in ("original", "unlearned")]
            if len(y) == 0:
                result.skip(keys, f"the {set_name} set is empty")
                continue
            scapes = {
                model: loss_landscape(
                    ctx.store.models[model],
                    x,
                    y,
                    self.radius,
                    self.steps_1d,
                    self.steps_2d,
                    ctx.seed,
                )
                for model in ("original", "unlearned")
            }
            for model, scape in scapes.items():
                result.metrics[f"{prefix(model)}basin_ratio/{set_name}"] = scape.basin_ratio
            if self.plots:
                plot_landscapes(scapes, ctx.output_dir / f"landscape_{set_name}.png", set_name)
