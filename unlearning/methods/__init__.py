"""Unlearning methods, one concept per module; each a subclass of
:class:`unlearning.methods.base.UnlearningMethod` overriding ``loss`` (or ``training_step``), and
of :class:`unlearning.methods.masked.MaskedMethod` when it works on a saliency mask of f_A."""

from unlearning.methods.ascent import GradientAscent, NegGrad
from unlearning.methods.base import UnlearningMethod
from unlearning.methods.boundary import BoundaryExpand, BoundaryShrink
from unlearning.methods.erm import ERM, Finetune, Retrain
from unlearning.methods.influence import InfluenceUnlearning
from unlearning.methods.l1_sparse import L1Sparse
from unlearning.methods.masked import MaskedMethod
from unlearning.methods.minmax import SharpMinMax
from unlearning.methods.random_label import RandomLabel, SalUn
from unlearning.methods.scrub import SCRUB
from unlearning.methods.ugradsl import UGradSL, UGradSLPlus

__all__ = [
    "ERM",
    "SCRUB",
    "BoundaryExpand",
    "BoundaryShrink",
    "Finetune",
    "GradientAscent",
    "InfluenceUnlearning",
    "L1Sparse",
    "MaskedMethod",
    "NegGrad",
    "RandomLabel",
    "Retrain",
    "SalUn",
    "SharpMinMax",
    "UGradSL",
    "UGradSLPlus",
    "UnlearningMethod",
]
