"""Start-up validation of a composed config (issue 2 "Bad input"). Runs before any data is
loaded or any model trained; every error names the key, the bad value and what is allowed.

Hydra already rejects unknown group options (``method=foo``: it lists the available options)
and unknown keys (``alpah=0.9``: the config is in struct mode); this module checks values.
"""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from unlearning.config.errors import ConfigError
from unlearning.evaluation.batch_fit import AUTO
from unlearning.evaluation.suite import check_eval_config
from unlearning.methods.base import SCHEDULERS, UnlearningMethod
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.distributed import check_trainer


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(key, value, "must be a number")
    return float(value)


def _positive(cfg: DictConfig, key: str, integer: bool = False) -> None:
    value = _number(cfg, key)
    if value <= 0 or (integer and value != int(value)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(key, OmegaConf.select(cfg, key), f"must be {kind}")


def _in_range(cfg: DictConfig, key: str, low: float, high: float, example: str) -> None:
    value = _number(cfg, key)
    if not low <= value <= high:
        raise ConfigError(key, value, f"must lie in [{low}, {high}], e.g. {key}={example}")


def _check_sharpness(cfg: DictConfig, key: str, rho: float | None) -> None:
    """Build the sharpness-aware callback of an optim preset once, so that a bad ρ, η or mode
    fails now rather than after pretraining."""
    spec = OmegaConf.select(cfg, f"{key}.sharpness")
    if spec is None:
        return
    try:
        instantiate(spec, rho=rho) if rho is not None else instantiate(spec)
    except Exception as exc:  # hydra wraps the callback's ValueError
        cause = exc.__cause__ or exc
        raise ConfigError(f"{key}.sharpness", OmegaConf.to_container(spec), str(cause)) from None


def _in_open_unit(cfg: DictConfig, key: str, example: str) -> None:
    value = _number(cfg, key)
    if not 0.0 < value < 1.0:
        raise ConfigError(key, value, f"must lie in (0, 1), e.g. {key}={example}")


def _check_training(cfg: DictConfig) -> None:
    """Retain weight, ρ, and the pretraining and unlearning schedules."""
    _in_range(cfg, "alpha", 0.0, 1.0, "0.99")
    if cfg.get("rho") is not None:
        _positive(cfg, "rho")
    for prefix in ("pretrain", "method"):
        _positive(cfg, f"{prefix}.lr")
        _positive(cfg, f"{prefix}.epochs", integer=True)
        _positive(cfg, f"{prefix}.batch_size", integer=True)
        scheduler = OmegaConf.select(cfg, f"{prefix}.scheduler")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"{prefix}.scheduler", scheduler, f"choose one of {list(SCHEDULERS)}")
    for key in ("optim", "pretrain.optim"):
        _check_sharpness(cfg, key, cfg.get("rho") if key == "optim" else None)


def _check_method(cfg: DictConfig) -> None:
    """The method class and its mask settings (Sharp MinMax)."""
    if OmegaConf.select(cfg, "method.fraction") is not None:
        _in_open_unit(cfg, "method.fraction", "0.3")
    if OmegaConf.select(cfg, "method.forget_rho") is not None:
        _positive(cfg, "method.forget_rho")
    target = OmegaConf.select(cfg, "method._target_")
    try:
        method_cls: Any = get_class(target)
    except Exception as exc:  # any import failure is a config error here
        raise ConfigError("method._target_", target, f"cannot import it ({exc})") from None
    if not (isinstance(method_cls, type) and issubclass(method_cls, UnlearningMethod)):
        raise ConfigError(
            "method._target_", target, "must be a subclass of unlearning.methods.UnlearningMethod"
        )


def _check_method_arguments(cfg: DictConfig) -> None:
    """Build the method once on a fresh backbone, so that the constructor's own checks (each
    naming its ``method.<key>``) fail now rather than after pretraining."""
    try:
        instantiate(cfg.method, net=instantiate(cfg.model), optimizer=None)
    except Exception as exc:  # hydra wraps the constructor's ValueError
        cause = exc.__cause__ or exc
        if not isinstance(cause, (ValueError, TypeError)):
            raise
        raise ConfigError("method", cfg.method.name, str(cause)) from None


def _check_memorization(cfg: DictConfig) -> None:
    source = OmegaConf.select(cfg, "memorization.source")
    if source not in ("estimate", "file", "learning_speed"):
        raise ConfigError("memorization.source", source, "choose estimate, file or learning_speed")
    if source in ("estimate", "learning_speed"):
        _positive(cfg, "memorization.epochs", integer=True)
        _positive(cfg, "memorization.lr")
    if source == "estimate":
        _positive(cfg, "memorization.members", integer=True)
        _in_open_unit(cfg, "memorization.fraction", "0.7")


def _check_model_and_device(cfg: DictConfig) -> None:
    model_classes = OmegaConf.select(cfg, "model.num_classes")
    data_classes = OmegaConf.select(cfg, "dataset.num_classes")
    if model_classes != data_classes:
        raise ConfigError(
            "model.num_classes",
            model_classes,
            f"dataset={cfg.dataset.name} has {data_classes} classes; leave model.num_classes at "
            "its default (${dataset.num_classes}) or set it to the same value",
        )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "trainer.accelerator", accelerator, "no CUDA GPU is visible here; use trainer=cpu"
            )


def _check_reliability(cfg: DictConfig) -> None:
    """The divergence threshold, and a cache directory that can be written (checked without
    creating anything, so that a read-only or mistyped cache fails now, not after training)."""
    if OmegaConf.select(cfg, "divergence.max_abs_loss") is not None:
        _positive(cfg, "divergence.max_abs_loss")
    lag = OmegaConf.select(cfg, "divergence.lag")
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        raise ConfigError(
            "divergence.lag", lag, "must be null (1 on CUDA, 0 on the CPU) or an integer >= 0"
        )
    StageCache(cfg.paths.cache_dir).check_writable()


def _check_speed_settings(cfg: DictConfig) -> None:
    """``channels_last`` and ``compile`` are booleans; ``compile=true`` needs TorchDynamo on this
    Python and, on the CPU, a C++ compiler for the inductor backend (checked now rather than at
    the first training step, minutes in)."""
    import shutil

    for key in ("channels_last", "compile"):
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
    if not cfg.get("compile", False):
        return
    import torch

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            "compile", True, "torch.compile does not support this Python/torch; use compile=false"
        )
    if OmegaConf.select(cfg, "trainer.accelerator") == "cpu" and not any(
        shutil.which(cxx) for cxx in ("c++", "g++", "clang++")
    ):
        raise ConfigError(
            "compile",
            True,
            "on the CPU torch.compile needs a C++ compiler (g++ or clang++) on PATH; install one "
            "or use compile=false",
        )


def _check_eval_batch_size(cfg: DictConfig) -> None:
    """``eval_batch_size`` is a positive integer or ``auto`` (the largest batch that fits,
    :mod:`unlearning.evaluation.batch_fit`)."""
    value = cfg.get("eval_batch_size")
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            "eval_batch_size",
            value,
            f"must be a positive integer or {AUTO}, e.g. eval_batch_size=1024, or "
            f"eval_batch_size={AUTO} for the largest batch that fits the GPU",
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid value of ``cfg``."""
    _check_training(cfg)
    _check_reliability(cfg)
    _check_method(cfg)
    _check_memorization(cfg)
    _check_model_and_device(cfg)
    _check_speed_settings(cfg)
    _check_eval_batch_size(cfg)
    check_trainer(cfg)  # ddp presets: devices, GPUs, nodes, batch divisible by W
    check_eval_config(cfg)
    _check_method_arguments(cfg)
