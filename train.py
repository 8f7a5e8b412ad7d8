"""Entry point: ``python train.py [-m] method=neggrad optim=asam rho=1.0 alpha=0.9,0.99``.

Composes the config from ``conf/``, runs the pipeline (:func:`unlearning.pipeline.run`) and
returns the optimized metric (``optimized_metric``, ToW by default) for Hydra sweepers.
A user error (bad value, missing data) prints one message naming the key and exits with
status 2 — no traceback.
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import call
from omegaconf import DictConfig

from unlearning.errors import USER_ERRORS
from unlearning.pipeline import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        # `lab` (set by experiment=theory/*) runs a synthetic experiment instead of the pipeline
        results = call(cfg.lab, cfg=cfg) if cfg.get("lab") else run(cfg)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    return results["metrics"].get(cfg.get("optimized_metric") or "tow")


if __name__ == "__main__":
    main()
