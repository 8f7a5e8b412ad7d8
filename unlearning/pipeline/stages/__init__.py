"""The pipeline's stages (SPEC §0), one module each: training (the runner every training stage
uses, f_A and the oracle), memorization scores, forget-set selection, the forget mask, and
unlearning. Each function does one stage's work given the composed config;
:mod:`unlearning.pipeline.run` wires them to the cache (keys: :mod:`unlearning.pipeline.keys`)."""

from unlearning.pipeline.stages.mask import MASK_FILE, compute_forget_mask
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
    StageOutcome,
    TrainingStage,
    load_model,
    make_trainer,
    prepare_backbone,
    run_training_stage,
    sharpness_callbacks,
    train_from_scratch,
)
from unlearning.pipeline.stages.unlearn import unlearn, user_callbacks

__all__ = [
    "FORGET_FILE",
    "MASK_FILE",
    "MEMORIZATION_SPLITS",
    "MODEL_FILE",
    "SCORES_FILE",
    "TEST_FILE",
    "StageOutcome",
    "TrainingStage",
    "compute_forget_mask",
    "compute_memorization",
    "load_model",
    "make_trainer",
    "prepare_backbone",
    "read_score_file",
    "run_training_stage",
    "select_forget_set",
    "sharpness_callbacks",
    "stack_dataset",
    "train_from_scratch",
    "unlearn",
    "user_callbacks",
    "uses_scores",
]
