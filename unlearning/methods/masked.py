"""Methods that act on a saliency mask of f_A's parameters (Sharp MinMax's model split, 000
App. C.1; SalUn's salient weights, Fan et al. 2023).

The mask is the top ``fraction`` of parameter entries ranked globally by ``|Σ_b ∇CE(F_b)|`` at
f_A over one pass of forget batches of ``batch_size`` (:mod:`unlearning.methods.saliency`). The
pipeline's mask stage computes it once per pretrained model, forget set and those two values
(cached) and hands it to :meth:`MaskedMethod.set_forget_mask` before training; the method only
has to say which of its config keys hold them (:attr:`MaskedMethod.mask_keys`) and use the mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unlearning.methods.base import UnlearningMethod


def check_mask_fraction(fraction: Any, key: str = "method.fraction") -> float:
    """The share of parameter entries in the mask, a number in (0, 1)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"{key}={fraction!r}: the mask fraction must be a number in (0, 1)")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(
            f"{key}={fraction!r}: the share of parameter entries in the mask must lie in (0, 1),"
            " e.g. 0.3"
        )
    return float(fraction)


class MaskedMethod(UnlearningMethod):
    """Base of the methods that need a saliency mask of f_A: it owns the mask intake.

    Args:
        fraction: the share p of parameter entries in the mask, in (0, 1) (the mask stage reads
            it from the method config key ``mask_keys["fraction"]``).

    After :meth:`set_forget_mask`, :attr:`forget_masks` holds one boolean tensor per trainable
    parameter of ``self.net`` (``True`` = in the mask), in ``named_parameters`` order;
    :meth:`masked_parameters` pairs them with the parameters.
    """

    needs_forget_mask: ClassVar[bool] = True
    #: the mask's share of entries is ``method.fraction``; its saliency pass runs over F in
    #: batches of ``method.batch_size`` (the method's own batch size, 000 App. C.1).
    mask_keys: ClassVar[Mapping[str, str]] = {"fraction": "fraction", "batch_size": "batch_size"}

    def __init__(self, *args: Any, fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fraction = check_mask_fraction(fraction, f"method.{self.mask_keys['fraction']}")
        self.forget_masks: dict[str, Tensor] | None = None

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.net.named_parameters() if p.requires_grad}

    def set_forget_mask(self, masks: dict[str, Tensor]) -> None:
        """Boolean masks (``True`` = in the mask) keyed by the names of ``self.net``'s trainable
        parameters, each of its parameter's shape; anything else is refused."""
        named = self._trainable()
        if sorted(masks) != sorted(named):
            missing, extra = sorted(set(named) - set(masks)), sorted(set(masks) - set(named))
            raise ValueError(
                f"the forget mask does not match the backbone's trainable parameters "
                f"(missing: {missing}, unknown: {extra})"
            )
        for name, p in named.items():
            if masks[name].shape != p.shape:
                raise ValueError(
                    f"the forget mask of {name} has shape {tuple(masks[name].shape)}, "
                    f"the parameter {tuple(p.shape)}"
                )
        self.forget_masks = {name: masks[name].to(torch.bool) for name in named}

    def require_forget_mask(self) -> dict[str, Tensor]:
        """:attr:`forget_masks`, or a ``RuntimeError`` if the mask was never handed over."""
        if self.forget_masks is None:
            raise RuntimeError(
                f"{type(self).__name__} needs its forget mask: call set_forget_mask first (the "
                "pipeline's mask stage does)"
            )
        return self.forget_masks

    def masked_parameters(self) -> list[tuple[str, nn.Parameter, Tensor]]:
        """``(name, parameter, mask)`` for every masked parameter, the mask moved (once) to the
        parameter's device."""
        masks = self.require_forget_mask()
        out = []
        for name, p in self.net.named_parameters():
            if name not in masks:
                continue
            if masks[name].device != p.device:
                masks[name] = masks[name].to(p.device)
            out.append((name, p, masks[name]))
        return out
