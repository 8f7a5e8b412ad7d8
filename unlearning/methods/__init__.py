"""Unlearning methods, one concept per module; each a subclass of
:class:`unlearning.methods.base.UnlearningMethod` overriding ``loss``."""

from unlearning.methods.ascent import GradientAscent, NegGrad
from unlearning.methods.base import UnlearningMethod
from unlearning.methods.erm import ERM, Finetune, Retrain
from unlearning.methods.minmax import SharpMinMax

__all__ = [
    "ERM",
    "Finetune",
    "GradientAscent",
    "NegGrad",
    "Retrain",
    "SharpMinMax",
    "UnlearningMethod",
]
