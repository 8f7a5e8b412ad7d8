"""UGradSL and UGradSL+ (004 §4, Alg. 1): gradient mixing with (negative) label smoothing on F.

Generalised label smoothing (004 §3.1) with smoothing rate ``a`` over K classes::

    y^{GLS,a} = (1 − a) · onehot(y) + (a / K) · 1,        a ∈ (−∞, 1)

(``a < 0`` is negative label smoothing, NLS). Its cross-entropy is 004 eq. 6::

    ℓ(x, y^{GLS,a}) = −Σ_k y^{GLS,a}_k log softmax(h(x))_k
                    = (1 + (1−K)/K · a) · ℓ(x, y) + (a/K) · Σ_{y'≠y} ℓ(x, y')

and one step minimises the gradient-mixed loss of 004 eq. 8 on a joint batch (B_r, B_f)::

    L = p · mean_{B_r} ℓ(x, y) − (1 − p) · mean_{B_f} ℓ(x, y^{GLS,a_i})

Means replace eq. 8's sums (|B_r| = |B_f| = B, so only the scale of the learning rate differs,
as for NegGrad, 000 eq. 4). 004's GA ratio ``p`` is our retain weight ``alpha`` (004's p = ours).

**Self-adaptive rate** (004 Alg. 1 lines 6-10, App. D), ``adaptive=True``: features
``z = net.embed(x)`` of the current model (eval mode, no gradient); for each forget sample j,
``c_j = #{i ∈ B_r : 1 − cos(z_i^r, z_j^f) < beta}`` and ``a_j = c_j / |B_r|``, which is App. D's
``c_j / |B_f|`` when the two batches have the same size (normalising by |B_r| keeps a_j ∈ [0, 1]
on a short last forget batch). App. D states a_j ∈ [0, 1] and that forget samples close to many
retain samples "are updated more conservatively" — a positive rate weakens the ascent on the
true class by (1 − a_j), so the default ``adaptive_sign="positive"`` takes App. D literally.
``adaptive_sign="negative"`` uses a_j = −c_j/|B_r| (NLS, stronger for entangled samples), the
reading suggested by App. D's sentence "the larger |α_i|, the lower confidence". The rates are
computed once per batch in ``on_train_batch_start`` so a sharpness-aware optimizer's two passes
see the same objective.

**Epochs.** UGradSL+ (:class:`UGradSLPlus`) iterates over R: ⌈|R|/B⌉ joint steps, F cycling
(``epoch_driver = "retain"``). UGradSL (:class:`UGradSL`) iterates over F (004 App. D: "UGradSL is
terminated after completing the iterations on D_f"; ``epoch_driver = "forget"``): ⌈|F|/B⌉ joint
steps, each forget batch paired with the next batch of a fresh random pass over R.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearning.methods.base import Batch, UnlearningMethod, check_retain_weight
from unlearning.modes import eval_mode

ADAPTIVE_SIGNS = ("positive", "negative")


def smoothed_targets(labels: Tensor, num_classes: int, rates: Tensor | float) -> Tensor:
    """``y^{GLS,a} = (1 − a) · onehot(y) + a/K`` per row (004 §3.1); ``rates`` scalar or (n,)."""
    onehot = F.one_hot(labels, num_classes).to(torch.get_default_dtype())
    a = torch.as_tensor(rates, dtype=onehot.dtype, device=onehot.device)
    a = a.reshape(-1, 1) if a.dim() > 0 else a
    return (1.0 - a) * onehot + a / num_classes


def smoothed_cross_entropy(logits: Tensor, labels: Tensor, rates: Tensor | float) -> Tensor:
    """Mean over the batch of ``−Σ_k y^{GLS,a}_k log softmax(logits)_k`` (004 eq. 6)."""
    log_p = F.log_softmax(logits, dim=1)
    targets = smoothed_targets(labels, logits.shape[1], rates).to(log_p.dtype)
    return -(targets * log_p).sum(1).mean()


class UGradSLPlus(UnlearningMethod):
    """UGradSL+ (004 Alg. 1): ``p·CE(R) − (1−p)·CE_GLS(F)`` per joint step, epochs over R.

    Args (besides the base ones):
        alpha: 004's GA ratio p ∈ [0, 1] (the retain weight; 004's p = ours).
        smoothing: the fixed smoothing rate a ∈ (−inf, 1) (004: a < 0, default −0.4); ignored
            when ``adaptive``.
        adaptive: use the self-adaptive per-sample rate of 004 App. D instead of ``smoothing``.
        beta: cosine-distance threshold β ∈ (0, 2] of the adaptive rate.
        adaptive_sign: ``positive`` (a_j = c_j/|B|, App. D as written) or ``negative``.
    """

    train_sets: ClassVar[tuple[str, ...]] = ("retain", "forget")
    epoch_driver: ClassVar[str | None] = "retain"

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.9,
        smoothing: float = -0.4,
        adaptive: bool = False,
        beta: float = 0.1,
        adaptive_sign: str = "positive",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = check_retain_weight(alpha)
        try:
            a = float(smoothing)
        except (TypeError, ValueError):
            a = math.nan
        if isinstance(smoothing, bool) or not (math.isfinite(a) and a < 1.0):
            raise ValueError(
                f"method.smoothing={smoothing!r}: the smoothing rate must be a finite number in "
                "(-inf, 1) (negative = negative label smoothing, 004 eq. 6; e.g. -0.4)"
            )
        if not isinstance(adaptive, bool):
            raise ValueError(f"method.adaptive={adaptive!r}: must be true or false")
        try:
            b = float(beta)
        except (TypeError, ValueError):
            b = math.nan
        if isinstance(beta, bool) or not 0.0 < b <= 2.0:
            raise ValueError(
                f"method.beta={beta!r}: the cosine-distance threshold must lie in (0, 2]"
            )
        if adaptive_sign not in ADAPTIVE_SIGNS:
            raise ValueError(
                f"method.adaptive_sign={adaptive_sign!r}: choose one of {ADAPTIVE_SIGNS}"
            )
        self.smoothing, self.adaptive, self.beta = a, adaptive, b
        self.adaptive_sign = adaptive_sign
        self._cached_rates: Tensor | None = None

    # ------------------------------------------------------------------ smoothing rates

    @torch.no_grad()
    def adaptive_rates(self, batch: Batch) -> Tensor:
        """004 App. D: ``a_j = ±c_j/|B_r|`` with c_j the retain samples within cosine distance
        ``beta`` of forget sample j in ``net.embed`` feature space (eval mode, no gradient)."""
        with eval_mode(self.net):
            z_r = self.net.embed(batch["retain"][0]).flatten(1)
            z_f = self.net.embed(batch["forget"][0]).flatten(1)
        cosine = F.normalize(z_f.float(), dim=1) @ F.normalize(z_r.float(), dim=1).T
        counts = ((1.0 - cosine) < self.beta).sum(1)
        rates = counts.float() / len(z_r)
        return rates if self.adaptive_sign == "positive" else -rates

    def smoothing_rates(self, batch: Batch) -> Tensor | float:
        """The rate(s) used on ``batch``'s forget part: cached per step, adaptive, or fixed."""
        if not self.adaptive:
            return self.smoothing
        if self._cached_rates is not None and len(self._cached_rates) == len(batch["forget"][1]):
            return self._cached_rates
        return self.adaptive_rates(batch)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> int | None:
        # computed once per batch, outside training_step: SAM's second pass sees the same rates
        self._cached_rates = self.adaptive_rates(batch) if self.adaptive else None
        return None

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._cached_rates = None

    # ------------------------------------------------------------------ objective

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """004 eq. 8 with batch means: ``p·CE(R) − (1−p)·CE_GLS(F)``."""
        retain = self.cross_entropy(batch, "retain")
        x, y = batch["forget"]
        rates = self.smoothing_rates(batch)
        forget = smoothed_cross_entropy(self.net(x), y, rates)
        loss = self.alpha * retain - (1.0 - self.alpha) * forget
        parts = {"loss_retain": retain, "loss_forget_smoothed": forget}
        if isinstance(rates, Tensor):
            parts["smoothing_rate"] = rates.mean()
        return loss, parts


class UGradSL(UGradSLPlus):
    """UGradSL (004 Alg. 1 with the bracketed dataset replacement): the same step as UGradSL+,
    but each epoch is one pass over F (⌈|F|/B⌉ joint steps, each forget batch paired with a
    random retain batch)."""

    epoch_driver: ClassVar[str | None] = "forget"


__all__ = ["UGradSL", "UGradSLPlus", "smoothed_cross_entropy", "smoothed_targets"]
