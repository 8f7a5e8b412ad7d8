"""Entry point: ``python train.py [-m] method=neggrad optim=asam rho=1.0 alpha=0.9,0.99``.

Composes the config from ``conf/``, validates it (:mod:`unlearning.config.validation`: the
pipeline does so first thing in :func:`unlearning.pipeline.run.run`, a lab job here), runs the
pipeline or the lab and returns the optimized metric (``optimized_metric``, ToW by default) for
Hydra sweepers. A user error (bad value, missing data) prints one message naming the key and
exits with status 2 — no traceback (docs/errors.md). SIGTERM (preemption) exits with 143 after
the current batch; rerunning resumes (docs/pipeline.md).
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import InstantiationException
from hydra.utils import call
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from unlearning.config.sweep import completed_results
from unlearning.config.validation import validate_config
from unlearning.errors import USER_ERRORS, unwrap_user_error
from unlearning.outputs.wandb_logger import one_run_per_job
from unlearning.pipeline.run import run

RESUME_HINT = (
    "interrupted by SIGTERM: finished stages are cached; run the same command again (same "
    "hydra.run.dir) to resume the interrupted stage from its last epoch (docs/pipeline.md)"
)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        with one_run_per_job():  # finishes the job's W&B run, also when the job fails
            # a rerun of a sweep (hydra.sweep.dir=<old dir>) skips jobs whose results.json says ok
            results = completed_results(cfg)
            # `lab` (set by experiment=theory/*) runs a synthetic experiment instead of the pipeline
            if results is None and cfg.get("lab"):
                validate_config(cfg)
                results = call(cfg.lab, cfg=cfg)
            elif results is None:
                results = run(cfg)
    except (*USER_ERRORS, InstantiationException) as error:
        # hydra's call()/instantiate() wrap a constructor's user error; unwrap it
        error = unwrap_user_error(error)
        if not isinstance(error, USER_ERRORS):
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except SIGTERMException:  # Lightning stops a fit at the next batch after SIGTERM
        print(RESUME_HINT, file=sys.stderr, flush=True)
        sys.exit(143)  # 128 + SIGTERM: the job did not finish
    return results["metrics"].get(cfg.get("optimized_metric") or "tow")


if __name__ == "__main__":
    main()
