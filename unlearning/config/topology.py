"""The training topology a config asks for: strategy, world size W, per-device batch, and the
cluster environment that started this process. Read from the ``trainer`` group alone (no process
is started here), so the validation layer and the pipeline's rank management share one reading.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from unlearning.errors import ConfigError

#: Lightning strategy names whose ranks are processes that each run the whole script
SCRIPT_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")


def _many_devices(cfg: DictConfig) -> bool:
    """Whether ``trainer.devices`` / ``num_nodes`` ask for more than one process."""
    devices = OmegaConf.select(cfg, "trainer.devices")
    if OmegaConf.select(cfg, "trainer.num_nodes") not in (None, 1):
        return True
    if OmegaConf.is_list(devices) or isinstance(devices, list):
        return len(devices) > 1
    if devices in ("auto", -1, "-1"):
        accelerator = OmegaConf.select(cfg, "trainer.accelerator")
        if accelerator not in ("gpu", "cuda", "auto"):
            return False
        import torch

        return torch.cuda.device_count() > 1
    return isinstance(devices, int) and not isinstance(devices, bool) and devices > 1


def strategy_name(cfg: DictConfig) -> str | None:
    """The trainer's strategy as a name (``ddp``, ``ddp_spawn``, ...), or ``None`` for one
    process. An unset or ``auto`` strategy on several devices is ``ddp``, as Lightning picks."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    if strategy in (None, "auto"):
        return "ddp" if _many_devices(cfg) else None
    if isinstance(strategy, str):
        return strategy
    target = str(OmegaConf.select(strategy, "_target_", default=""))
    if target.endswith("DDPStrategy"):
        start = OmegaConf.select(strategy, "start_method", default="popen")
        return "ddp" if start == "popen" else f"ddp_{start}"
    return target


def world_size(cfg: DictConfig) -> int:
    """W = ``trainer.devices`` × ``trainer.num_nodes`` for a multi-process strategy, else 1.

    Only integer ``devices`` count (a list counts its entries); ``auto``/``-1`` are rejected for
    DDP presets by :func:`unlearning.config.consistency.check_distributed`, since W is part of
    every stage's result.
    """
    name = strategy_name(cfg)
    if name is None or not name.startswith("ddp"):
        return 1
    devices = OmegaConf.select(cfg, "trainer.devices")
    nodes = OmegaConf.select(cfg, "trainer.num_nodes") or 1
    count = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, list) else devices
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return 1
    return count * int(nodes)


def runs_script_per_rank(cfg: DictConfig) -> bool:
    """Whether every rank is a process running the whole job (``ddp``), as opposed to one
    process (single device) or ranks spawned per fit (``ddp_spawn``)."""
    return strategy_name(cfg) in SCRIPT_STRATEGIES and world_size(cfg) > 1


def per_device_batch_size(cfg: DictConfig, key: str) -> int:
    """B / W: the batch each device draws per step for the global batch ``cfg.<key>`` = B.

    DDP averages the W per-device gradients, so W devices with B / W samples each take the same
    step as one device with B (up to batch-norm statistics, which are per device unless
    ``trainer.sync_batchnorm``). Raises :class:`ConfigError` naming ``key`` if W does not
    divide B.
    """
    batch, size = int(OmegaConf.select(cfg, key)), world_size(cfg)
    if batch % size:
        raise ConfigError(
            key,
            batch,
            f"is the global batch and must be divisible by the world size {size} "
            "(trainer.devices × trainer.num_nodes), each device drawing batch / world size; "
            f"e.g. {key}={max(size, batch - batch % size)}",
        )
    return batch // size


def cluster_started() -> str | None:
    """The name of the cluster environment that started this process as one rank, if any."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return "slurm"
    if TorchElasticEnvironment.detect():
        return "torchrun"
    return None
