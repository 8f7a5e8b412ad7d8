"""Relearn time (Golatkar et al. 2020; issue 16): steps of fine-tuning until the forget accuracy is
back at the original model's level, for f_U and for the oracle, and their ratio."""

from __future__ import annotations

from dataclasses import replace

import torch

from unlearning.evaluation.family import Context, Evaluation, Family, Needs, SampleNeed
from unlearning.evaluation.metrics.relearn import RelearnSettings, accuracy, relearn_steps


class RelearnTime(Family):
    """``relearn/steps``, ``oracle/relearn/steps`` and ``relearn/ratio``.

    The slice is a fixed (``eval.seed``) sample of F (at most ``max_samples``) plus
    ``retain_samples`` samples of R, test transforms. f_U and the oracle are each fine-tuned on
    it (:func:`~unlearning.evaluation.metrics.relearn.relearn_steps`, the same batch order)
    until their accuracy on the F sample reaches the original model's on it minus
    ``tolerance``. ``relearn/ratio`` = f_U's steps / the oracle's: ≈ 1 as after retraining,
    ≪ 1 when F comes back quickly. A model that does not get there within ``max_steps`` is
    reported at the cap (a lower bound) with a note.

    Args:
        max_samples: F samples in the slice and in the accuracy check.
        retain_samples: R samples in the slice.
        lr, momentum, batch_size, max_steps: the fine-tuning (plain SGD).
        tolerance: the target is the original model's F accuracy minus this.
    """

    def __init__(
        self,
        max_samples: int = 500,
        retain_samples: int = 256,
        lr: float = 0.01,
        momentum: float = 0.9,
        batch_size: int = 32,
        max_steps: int = 500,
        tolerance: float = 0.0,
    ) -> None:
        self.max_samples = max_samples
        self.retain_samples = retain_samples
        self.tolerance = tolerance
        self.settings = RelearnSettings(lr, momentum, batch_size, max_steps)

    def needs(self) -> Needs:
        """A sample of F and one of R (the fine-tuning runs its own passes)."""
        return Needs(
            samples=frozenset(
                {SampleNeed("forget", self.max_samples), SampleNeed("retain", self.retain_samples)}
            )
        )

    def run(self, ctx: Context, result: Evaluation) -> None:
        keys = ["relearn/steps", "oracle/relearn/steps", "relearn/ratio"]
        forget = ctx.store.sample("forget", self.max_samples, ctx.seed)
        retain = ctx.store.sample("retain", self.retain_samples, ctx.seed)
        if len(forget[1]) == 0:
            result.skip(keys, "the forget set is empty")
            return
        original = ctx.store.models["original"]
        target = accuracy(original, *(t.to(next(original.parameters()).device) for t in forget))
        target -= self.tolerance
        slice_x, slice_y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
        settings = replace(self.settings, seed=ctx.seed)
        steps = {}
        for model, key in (("unlearned", keys[0]), ("oracle", keys[1])):
            found = relearn_steps(
                ctx.store.models[model], slice_x, slice_y, *forget, target, settings
            )
            if found is None:
                found = settings.max_steps
                result.notes[key] = (
                    f"did not reach the original model's forget accuracy ({target:.3f}) within "
                    f"eval.relearn.max_steps={settings.max_steps}: the cap is a lower bound"
                )
            steps[model] = found
            result.metrics[key] = float(found)
        if steps["oracle"] == 0:
            result.skip(
                [keys[2]],
                "the oracle already reaches the original model's forget accuracy: no relearning",
            )
        else:
            result.metrics[keys[2]] = steps["unlearned"] / steps["oracle"]
