"""The pipeline's stages (SPEC §0), one module each: training (f_A and the oracle), memorization
scores, forget-set selection, the forget mask, and unlearning. Each function does one stage's
work given the composed config; :mod:`unlearning.pipeline.run` wires them to the cache."""

from unlearning.pipeline.stages.mask import MASK_FILE, compute_forget_mask, needs_forget_mask
from unlearning.pipeline.stages.scores import (
    MEMORIZATION_SPLITS,
    SCORES_FILE,
    compute_memorization,
    read_score_file,
    stack_dataset,
    uses_scores,
)
from unlearning.pipeline.stages.split import FORGET_FILE, TEST_FILE, select_forget_set
from unlearning.pipeline.stages.training import (
    MODEL_FILE,
    load_model,
    make_trainer,
    sharpness_callbacks,
    train_from_scratch,
)
from unlearning.pipeline.stages.unlearn import is_from_scratch, unlearn

__all__ = [
    "FORGET_FILE",
    "MASK_FILE",
    "MEMORIZATION_SPLITS",
    "MODEL_FILE",
    "SCORES_FILE",
    "TEST_FILE",
    "compute_forget_mask",
    "compute_memorization",
    "is_from_scratch",
    "load_model",
    "make_trainer",
    "needs_forget_mask",
    "read_score_file",
    "select_forget_set",
    "sharpness_callbacks",
    "stack_dataset",
    "train_from_scratch",
    "unlearn",
    "uses_scores",
]
