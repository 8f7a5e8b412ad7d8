"""Sharp MinMax (000 §3.2, App. C.1): split the model into a forget part and a retain part and
optimise them in opposite directions.

The forget part is the top ``fraction`` of parameter entries ranked globally by
``|Σ_b ∇CE(F_b)|`` at f_A (:mod:`unlearning.methods.saliency`; computed once per pretrained model
and forget set by the pipeline's mask stage, cached, and handed over through
:class:`~unlearning.methods.masked.MaskedMethod`'s intake). Each step, on a joint batch (B retain
+ B forget samples):

* forget part: sharpness **maximisation** on ``L_F(w) = −(1−α)·CE(F)`` — the first-order step
  direction ``2∇L_F(w) − ∇L_F(w + ê_F)`` of 000 eq. 8 (``forget_objective="maximize"``), or the
  gradient at ``w − ê_F`` (``"maximize_neg"``); ê_F is computed from the forget part alone;
* retain part: ``L_R(w) = α·CE(R)`` with the selected ``optim``: SAM/ASAM (ê_R from the retain
  part alone) or the plain gradient for ``optim=sgd``.

Both perturbations belong to the selected optimizer's family: under ``optim=asam`` ê_F is
adaptive too (``T_w = |w| + η``), so ``rho=1.0`` means the same relative radius on both parts;
under ``optim=sam`` or ``sgd`` ê_F is SAM's ``ρ g/‖g‖``.

The two directions live on disjoint entries; their sum is handed to one base optimizer (SGD with
momentum and weight decay acts elementwise, so this equals two optimizers with the same settings).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from callbacks.sharpness import SharpnessAwareCallback, adaptive_flags, sharpness_aware_grad
from unlearning.methods.base import Batch, check_retain_weight
from unlearning.methods.masked import MaskedMethod

FORGET_OBJECTIVES = ("maximize", "maximize_neg")


class SharpMinMax(MaskedMethod):
    """Sharp MinMax. ``alpha`` is the retain weight (000 eq. 4); ``fraction`` the share p of
    parameter entries in the forget part (000 App. C.1: 30% on CIFAR-100, 5% on ImageNet), i.e.
    the mask (:class:`~unlearning.methods.masked.MaskedMethod`); ``forget_rho`` the radius of
    the forget part's perturbation (default: the retain optimizer's ρ, or 0.1 under plain SGD)."""

    train_sets: ClassVar[tuple[str, ...]] = ("retain", "forget")
    #: the pipeline hands the ``optim`` preset's sharpness settings to :meth:`use_sharpness`
    #: instead of attaching the callback (this method steps its two parts itself).
    owns_sharpness: ClassVar[bool] = True

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.99,
        fraction: float = 0.3,
        forget_rho: float | None = None,
        forget_objective: str = "maximize",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, fraction=fraction, **kwargs)
        self.automatic_optimization = False
        self.alpha = check_retain_weight(alpha)
        if forget_objective not in FORGET_OBJECTIVES:
            raise ValueError(
                f"method.forget_objective={forget_objective!r}: choose one of {FORGET_OBJECTIVES}"
            )
        if forget_rho is not None and not float(forget_rho) > 0:
            raise ValueError(f"method.forget_rho={forget_rho!r}: must be > 0 (or null)")
        self.forget_rho, self.forget_objective = forget_rho, forget_objective
        self.retain_sharpness: SharpnessAwareCallback | None = None

    def use_sharpness(self, settings: SharpnessAwareCallback | None) -> None:
        """The retain part's optimizer: a SAM/ASAM configuration, or ``None`` for plain SGD."""
        if settings is not None and settings.objective != "minimize":
            raise ValueError(
                "optim: Sharp MinMax's retain part minimises sharpness; use optim=sgd, sam or asam"
            )
        self.retain_sharpness = settings

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The mixed objective α·CE(R) − (1−α)·CE(F) (for reference; steps use both parts)."""
        retain = self.cross_entropy(batch, "retain")
        forget = self.cross_entropy(batch, "forget")
        return self.alpha * retain - (1 - self.alpha) * forget, {
            "loss_retain": retain,
            "loss_forget": forget,
        }

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        masks = self.require_forget_mask()  # True = forget part
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        forget_mask = [masks[n].to(p.device, p.dtype) for n, p in named]
        retain_mask = [1.0 - m for m in forget_mask]

        def retain_loss() -> Tensor:
            return self.alpha * self.cross_entropy(batch, "retain")

        def forget_loss() -> Tensor:
            return -(1.0 - self.alpha) * self.cross_entropy(batch, "forget")

        s = self.retain_sharpness
        adaptive = s is not None and s.adaptive
        shape = {  # the perturbation family of the selected optim (ASAM: adaptive) for both parts
            "adaptive": adaptive,
            "eta": s.eta if s is not None else 0.0,
            "flags": adaptive_flags([n for n, _ in named], s.adaptive_params) if adaptive else None,
            "module": self.net,
        }
        if s is None:
            loss_r = retain_loss()
            grads = torch.autograd.grad(loss_r, params, allow_unused=True)
            d_r = [
                torch.zeros_like(p) if g is None else g * m
                for p, g, m in zip(params, grads, retain_mask, strict=True)
            ]
            loss_r = loss_r.detach()
        else:
            loss_r, d_r = sharpness_aware_grad(
                retain_loss, params, s.rho, objective="minimize", masks=retain_mask, **shape
            )
        rho_f = self.forget_rho or (s.rho if s is not None else 0.1)
        loss_f, d_f = sharpness_aware_grad(
            forget_loss, params, rho_f, objective=self.forget_objective, masks=forget_mask, **shape
        )
        optimizer = self.optimizers()
        optimizer.zero_grad()
        for p, a, b in zip(params, d_r, d_f, strict=True):
            p.grad = a + b
        optimizer.step()
        parts = {
            "loss_retain": loss_r / max(self.alpha, 1e-12),
            "loss_forget": -loss_f / max(1 - self.alpha, 1e-12),
        }
        self.log_step(loss_r + loss_f, parts, batch_size=len(batch["retain"][1]))
        return loss_r + loss_f

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
