"""Start-up validation of a composed config: the one layer that checks every user-facing key
before any data is loaded or any model trained (docs/errors.md).

:func:`validate_config` applies, in order:

1. the rule table (:func:`unlearning.config.rules.check_keys`): each key's kind (seed, positive
   integer, finite number, boolean, choice, writable directory, importable ``_target_``, ...),
   unknown keys, interpolations that do not resolve;
2. the cross-key rules (:mod:`unlearning.config.consistency`): the optimized metric, model vs
   dataset, the split vs the dataset, the accelerator, ``compile``, multi-process trainers and
   the score file;
3. the constructors, each built once: the sharpness-aware callbacks of both optimizer presets,
   the backbone (and one forward pass of a zero batch of the dataset's input shape) and the
   unlearning method on it, so that a constructor's own argument checks fail now, not after
   pretraining.

Every failure is a :class:`~unlearning.errors.ConfigError` in one shape,
``<key>=<value>: must be <allowed> (<why>), e.g. <fix>``; ``train.py`` prints it and exits 2.
A lab job (``lab=...``, ``experiment=theory/*``) gets step 1 and the metric rule; the lab checks
its own ``lab.*`` values (:mod:`unlearning.theory.checks`) before it computes anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unlearning.config.consistency import (
    check_accelerator,
    check_callbacks_have_loggers,
    check_compile,
    check_distributed,
    check_model_fits_dataset,
    check_optimized_metric,
    check_score_file,
    check_split_fits_dataset,
)
from unlearning.config.kinds import reject
from unlearning.config.rules import check_keys
from unlearning.errors import USER_ERRORS, ConfigError

# ------------------------------------------------------------------------------ constructors


def _constructor_error(node: str, cfg: DictConfig, error: Exception) -> Exception:
    """A constructor's ``ValueError``/``TypeError`` as a :class:`ConfigError`, keyed by the
    ``<node>.<arg>`` its message names (``method.kd_T=-1: ...``), else by ``node``. Any other
    exception is returned unchanged: it is a bug to see with its traceback, not a user error."""
    cause: BaseException = error
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, USER_ERRORS):
        return cause
    if not isinstance(cause, (ValueError, TypeError)):
        return error
    message = " ".join(str(cause).split())
    named = re.match(rf"({re.escape(node)}\.\w+)=(.+?): (.+)", message)
    if named is not None:
        value = OmegaConf.select(cfg, named[1], default=named[2])
        return ConfigError(named[1], value, named[3])
    spec = OmegaConf.select(cfg, node)
    shown = spec.get("name", spec.get("_target_")) if isinstance(spec, DictConfig) else spec
    return ConfigError(node, shown, message)


def check_sharpness(cfg: DictConfig) -> None:
    """Build the sharpness-aware callback of each optimizer preset once (with the top-level
    ``rho`` for the unlearning one), so that a bad ρ, η or mode fails now."""
    for key in ("optim", "pretrain.optim"):
        spec = OmegaConf.select(cfg, f"{key}.sharpness")
        if spec is None:
            continue
        rho = cfg.get("rho") if key == "optim" else None
        try:
            instantiate(spec, rho=rho) if rho is not None else instantiate(spec)
        except Exception as error:
            raise _constructor_error(f"{key}.sharpness", cfg, error) from None


def check_model_and_method(cfg: DictConfig) -> None:
    """Build the backbone, pass one zero batch of the dataset's input shape through it (a
    model whose widths, channels or input size cannot take this dataset fails here), and build
    the method on it with its constructor's own checks."""
    try:
        net = instantiate(cfg.model)
    except Exception as error:
        raise _constructor_error("model", cfg, error) from None
    size = cfg.dataset.get("image_size")
    shape = (1, cfg.dataset.get("in_channels", 1), size, size)
    try:
        if size is not None:
            with torch.no_grad():
                net.eval()(torch.zeros(shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise reject(
            "model",
            cfg.model._target_,
            f"a model that takes dataset={cfg.dataset.name} inputs of shape {list(shape[1:])}",
            "leave the model's sizes at their defaults (${dataset.*}) or choose another model",
            " ".join(str(error).split())[:300],
        ) from None
    net.train()
    try:
        instantiate(cfg.method, net=net, optimizer=None)
    except Exception as error:
        raise _constructor_error("method", cfg, error) from None


# ------------------------------------------------------------------------------ the layer

#: every rule of a pipeline job, in the order they run (cheap and local first)
PIPELINE_RULES: tuple[Callable[[DictConfig], None], ...] = (
    check_keys,
    check_optimized_metric,
    check_model_fits_dataset,
    check_split_fits_dataset,
    check_callbacks_have_loggers,
    check_accelerator,
    check_compile,
    check_distributed,
    check_score_file,
    check_sharpness,
    check_model_and_method,
)
#: the rules of a lab job (its ``lab.*`` values are the lab's own to check)
LAB_RULES: tuple[Callable[[DictConfig], None], ...] = (check_keys, check_optimized_metric)


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first rule ``cfg`` breaks (see the module docstring);
    creates nothing and trains nothing."""
    for rule in LAB_RULES if cfg.get("lab") else PIPELINE_RULES:
        rule(cfg)
