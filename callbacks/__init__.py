"""Lightning callbacks of the framework that work on any LightningModule.

* :mod:`callbacks.sharpness` -- sharpness-aware optimisation (SAM, ASAM, sharpness
  maximisation) wrapped around the base optimizer's step (SPEC §1, docs/config/optim.md).
* :mod:`callbacks.rng_state` -- random-generator states saved in checkpoints, so a resumed run
  draws the same batches as an uninterrupted one.
* :mod:`callbacks.divergence` -- stops a diverging fit (non-finite or exploding loss, non-finite
  weights) and restores the last finite weights.

This package never imports from ``unlearning/`` or ``datamodules/``.
"""
