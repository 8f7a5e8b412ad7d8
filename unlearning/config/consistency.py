"""Cross-key rules: values that are each allowed (the rule table,
:mod:`unlearning.config.rules`, has checked their kinds) but cannot work together, or need
something of this machine or disk — a GPU, a C++ compiler, a cluster, a readable score file.

Each rule is a function of the composed config that raises
:class:`~unlearning.errors.ConfigError` in the one message shape
(:func:`~unlearning.config.kinds.reject`); :func:`unlearning.config.validation.validate_config`
runs them in order.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from datamodules.splits import INFLUENCE_SPLIT, MEMORIZATION_SPLITS
from unlearning.config.kinds import reject
from unlearning.config.rules import locate
from unlearning.config.topology import (
    SCRIPT_STRATEGIES,
    cluster_started,
    per_device_batch_size,
    runs_script_per_rank,
    strategy_name,
    world_size,
)
from unlearning.errors import ConfigError

if TYPE_CHECKING:
    from datamodules.sources import ImageSource

GPU_ACCELERATORS = ("gpu", "cuda")
#: Lightning strategies that train in this one process
SINGLE_PROCESS = ("single_device", "lightning.pytorch.strategies.SingleDeviceStrategy")
#: precisions that need a GPU (fp16 autocast; Lightning silently runs bf16 on the CPU instead)
FP16_MIXED = ("16-mixed", "16", 16)


# ------------------------------------------------------------------------------ metrics


#: a setting a metric needs, and whether a config has it
Condition = tuple[str, Callable[[DictConfig], bool]]


def _family_on(name: str) -> Condition:
    """The evaluation family ``eval.<name>`` is enabled."""

    def enabled(cfg: DictConfig) -> bool:
        return bool(OmegaConf.select(cfg, f"eval.{name}.enabled", default=False))

    return f"eval.{name}.enabled=true", enabled


#: the metric keys of ``results.json`` (docs/results.md), each with the setting that makes a
#: job produce it (``None``: every pipeline job does)
METRICS: tuple[tuple[str, Condition | None], ...] = (
    (
        r"(original|oracle|unlearned)/acc_(retain|forget|val|test)|tow(_abs)?(_val)?|ta(_val)?"
        r"|ua|ra|rte_s|oracle_s",
        None,
    ),
    (r"split/(n_forget|n_retain|n_val|n_test)", None),
    (
        r"split/(mean_mem|mean_mem_all|mem_is_proxy|overlap_(high_mid|high_low|mid_low))",
        ("split=mem_high|mem_mid|mem_low|mix", lambda cfg: cfg.split.name in MEMORIZATION_SPLITS),
    ),
    (
        r"split/influence_(models|explained|mean_projection)",
        ("split=influence_pc", lambda cfg: cfg.split.name == INFLUENCE_SPLIT),
    ),
    (
        r"split/n_noisy_forget",
        ("dataset.label_noise > 0", lambda cfg: bool(cfg.dataset.get("label_noise"))),
    ),
    (
        r"((original|oracle)/)?(mia|mia_efficacy|mia_combined"
        r"|mia_efficacy/(correctness|confidence|entropy|m_entropy|prob))|avg_gap|time/mia"
        r"|(oracle/)?mia_efficacy_val|avg_gap_val",
        _family_on("mia"),
    ),
    (
        r"(original/)?(e_var_(all|cls)(_raw)?|e_wp_(all|cls))|time/entanglement",
        _family_on("entanglement"),
    ),
    (r"(original/)?basin_ratio/(retain|forget|test)|time/landscape", _family_on("landscape")),
    (r"(original/)?hessian_top/(retain|forget|test)|time/hessian", _family_on("hessian")),
    (r"(oracle/)?relearn/steps|relearn/ratio|time/relearn", _family_on("relearn")),
    (r"klom(_original)?/(retain|forget|test)|klom/models|time/klom", _family_on("klom")),
    (r"time/features", _family_on("features")),
    (r"(original/)?ulira/acc_(retain|forget|test)|time/ulira", _family_on("ulira")),
    (
        r"(original/)?forgetting_(quality|score)|time/forgetting_quality",
        _family_on("forgetting_quality"),
    ),
)


#: the metrics that read D_test's labels (docs/tuning.md): the test accuracies and everything
#: built on them, and every attack or measurement on D_test (the MIA's non-members, the
#: landscape, Hessian and KLoM on the test set). Selection must not use them (002 §2).
TEST_LABEL_METRICS = (
    r"(original|oracle|unlearned)/acc_test|tow|tow_abs|ta|avg_gap"
    r"|((original|oracle)/)?(mia|mia_efficacy|mia_combined|mia_efficacy/\w+)"
    r"|(original/)?(basin_ratio|hessian_top)/test|klom(_original)?/test"
)
#: the config key that allows selecting on a test metric anyway
ALLOW_TEST_SELECTION = "validation.allow_test_selection"


def reads_test_labels(name: str) -> bool:
    """Whether the metric ``name`` is computed from D_test's labels (:data:`TEST_LABEL_METRICS`):
    choosing a configuration by it selects on the data the results report."""
    return re.fullmatch(TEST_LABEL_METRICS, name) is not None


#: the evaluation families that read model ensembles (trained inside the evaluation, rank 0)
ENSEMBLE_FAMILIES = ("klom", "ulira", "forgetting_quality")


def is_metric(name: str) -> bool:
    """Whether ``name`` is a metric key some pipeline job writes to ``results.json``."""
    return any(re.fullmatch(pattern, name) for pattern, _ in METRICS)


def check_optimized_metric(cfg: DictConfig) -> None:
    """``optimized_metric`` names a metric this job writes (a lab's metrics are its own) and,
    unless ``validation.allow_test_selection`` says otherwise, one that reads no test label:
    selection (Optuna's objective, the best trial) uses validation metrics (issue 16)."""
    name = cfg.get("optimized_metric")
    if cfg.get("lab"):
        return
    if reads_test_labels(name) and not OmegaConf.select(cfg, ALLOW_TEST_SELECTION, default=False):
        fix = f"{name}_val" if is_metric(f"{name}_val") else "tow_val"
        raise reject(
            "optimized_metric",
            name,
            "a metric that reads no test label (selection on the test set reports a tuned "
            f"number as if it were held out: use a validation metric such as {fix}, or set "
            f"{ALLOW_TEST_SELECTION}=true to select on the test set anyway)",
            fix,
        )
    for pattern, condition in METRICS:
        if re.fullmatch(pattern, name):
            if condition is not None and not condition[1](cfg):
                raise reject(
                    "optimized_metric",
                    name,
                    f"a metric this job writes; {name} needs {condition[0]}",
                    condition[0],
                )
            return
    raise reject(
        "optimized_metric",
        name,
        "a metric key of results.json (docs/results.md: tow_val, avg_gap_val, ua, ra, "
        "unlearned/acc_val, klom/forget, ...)",
        "tow_val",
    )


# ------------------------------------------------------------------------------ model and data


def check_model_fits_dataset(cfg: DictConfig) -> None:
    """The model's classes and input channels are the dataset's (the YAML defaults
    interpolate them: ``${dataset.num_classes}``, ``${dataset.in_channels}``)."""
    for key, what in (("num_classes", "classes"), ("in_channels", "channels")):
        ours, theirs = cfg.model.get(key), cfg.dataset.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise reject(
                f"model.{key}",
                ours,
                f"{theirs} (the {what} of dataset={cfg.dataset.name})",
                f"leave model.{key} at its default (${{dataset.{key}}})",
            )


def check_split_fits_dataset(cfg: DictConfig) -> None:
    """A class split names a class of the dataset; a group split needs sub-classes; an
    influence-PC split from datamodels needs the memorization estimator's members."""
    split = cfg.split
    if (
        split.name == INFLUENCE_SPLIT
        and split.attribution == "datamodel"
        and cfg.memorization.source != "estimate"
    ):
        raise reject(
            "split.attribution",
            "datamodel",
            "trak when memorization.source is not estimate",
            "memorization=estimate (the datamodel matrix reads its members' margins)",
            f"memorization.source={cfg.memorization.source} trains no members",
        )
    if split.name == "class" and split.label >= cfg.dataset.num_classes:
        raise reject(
            "split.label",
            split.label,
            f"a class of dataset={cfg.dataset.name}, in [0, {cfg.dataset.num_classes - 1}]",
            "0",
        )
    if split.name == "group" and not hasattr(locate(cfg.dataset._target_), "fine_targets"):
        raise reject(
            "split.name", "group", f"a dataset with sub-classes, not {cfg.dataset.name}", "random"
        )


def check_score_file(cfg: DictConfig) -> None:
    """A score file that a memorization split reads (``memorization=file``) opens as an
    ``.npz`` archive without pickled objects and holds ``memorization.key`` as a numeric
    array; its length against |S| is checked once the data is loaded
    (:func:`unlearning.pipeline.stages.scores.read_score_file`)."""
    if cfg.split.name not in MEMORIZATION_SPLITS or cfg.memorization.source != "file":
        return
    path, key = Path(cfg.memorization.path).expanduser(), cfg.memorization.key
    problem = score_file_problem(path, key)
    if problem is not None:
        raise reject(
            "memorization.path",
            str(path),
            f"a readable .npz score file holding the array memorization.key={key!r}",
            "data/memorization/cifar100.npz (docs/memorization.md)",
            problem,
        )


def score_file_problem(path: Path, key: str) -> str | None:
    """What keeps ``path`` from being read as scores under ``key``, or ``None``."""
    if not path.is_file():
        return "no score file there"
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            return "a .npy array, not a .npz archive of named arrays"
        with archive:
            if key not in archive.files:
                return f"it has no array {key!r}, only {sorted(archive.files)}"
            scores = archive[key]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        return " ".join(f"unreadable: {error}".split())
    if not np.issubdtype(scores.dtype, np.number):
        return f"its {key!r} holds {scores.dtype} values, not numbers"
    return None


# ------------------------------------------------------------------------------ the machine


def check_callbacks_have_loggers(cfg: DictConfig) -> None:
    """A user callback that writes to the loggers (``LearningRateMonitor``) needs one: with
    ``logger=none`` Lightning raises inside the unlearning fit, after pretraining."""
    if cfg.get("logger"):
        return
    for name, node in (cfg.get("callbacks") or {}).items():
        target = str(node.get("_target_", "")) if node is not None else ""
        if target.endswith("LearningRateMonitor"):
            raise reject(
                f"callbacks.{name}",
                target,
                "a callback that writes to no logger while logger=none (LearningRateMonitor "
                "logs the learning rate to the job's loggers)",
                "logger=csv, or drop the callback",
            )


def check_accelerator(cfg: DictConfig) -> None:
    """The accelerator exists here; fp16 mixed precision and device lists need GPUs."""
    import torch

    trainer = cfg.trainer
    accelerator = trainer.get("accelerator")
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise reject(
            "trainer.accelerator", accelerator, "cpu here", "trainer=cpu", "no CUDA GPU is visible"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise reject("trainer.accelerator", accelerator, "cpu here", "cpu", "MPS is not available")
    if accelerator == "cpu" and trainer.get("precision") in FP16_MIXED:
        raise reject(
            "trainer.precision",
            trainer.precision,
            "bf16-mixed or 32-true on the CPU (fp16 autocast needs a GPU; Lightning would "
            "switch to bf16-mixed without saying so in the results)",
            "bf16-mixed",
        )
    devices = trainer.get("devices")
    if accelerator == "cpu" and OmegaConf.is_list(devices):
        raise reject(
            "trainer.devices",
            OmegaConf.to_container(devices),
            "a number of processes on the CPU (device lists name GPUs)",
            "1",
        )


def check_compile(cfg: DictConfig) -> None:
    """``compile=true`` needs TorchDynamo on this Python and, on the CPU, a C++ compiler for
    the inductor backend (checked now rather than at the first training step, minutes in)."""
    if not cfg.get("compile"):
        return
    import torch

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            "compile", True, "torch.compile does not support this Python/torch; use compile=false"
        )
    if cfg.trainer.get("accelerator") == "cpu" and not any(
        shutil.which(cxx) for cxx in ("c++", "g++", "clang++")
    ):
        raise ConfigError(
            "compile",
            True,
            "on the CPU torch.compile needs a C++ compiler (g++ or clang++) on PATH; install one "
            "or use compile=false",
        )


# ------------------------------------------------------------------------------ several processes


def check_distributed(cfg: DictConfig) -> None:
    """A multi-process ``trainer`` preset (docs/ddp.md): script-launched DDP ranks with an
    integer device count, enough GPUs (or gloo for CPU ranks), a cluster for several nodes,
    no rank-0-only training inside the evaluation, and global batch sizes divisible by the
    world size W = ``trainer.devices`` × ``trainer.num_nodes``."""
    name = strategy_name(cfg)
    if name is None or name in SINGLE_PROCESS:
        return
    if name not in SCRIPT_STRATEGIES:
        raise reject(
            "trainer.strategy",
            name,
            "ddp for several devices: spawned ranks (ddp_spawn) return only the weights to the "
            "main process, not the loop counters and callback states the stages check, and "
            "other strategies are untested here (docs/ddp.md)",
            "use strategy=ddp via trainer=ddp or trainer=ddp_cpu",
        )
    devices = cfg.trainer.get("devices")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise reject(
            "trainer.devices",
            devices,
            f"the number of devices per node under strategy={name} (the world size sets the "
            "per-device batch and is part of the stage cache keys)",
            "2",
        )
    _check_rank_backend(cfg, name, devices)
    _check_nodes(cfg)
    # the families that read model ensembles: their members are trained inside the evaluation
    for family in ENSEMBLE_FAMILIES:
        if runs_script_per_rank(cfg) and OmegaConf.select(cfg, f"eval.{family}.enabled"):
            raise reject(
                f"eval.{family}.enabled",
                True,
                "false under DDP: it reads model ensembles (KLoM's), whose members are trained "
                "inside the evaluation, which runs on rank 0 only",
                "false, or use trainer=cpu / trainer=gpu",
            )
    if runs_script_per_rank(cfg) and _chains_passes(cfg):
        raise ConfigError(
            "method",
            cfg.method.name,
            "walks its epochs as consecutive passes over single sets (epoch_passes), which "
            "Lightning does not shard across DDP ranks; e.g. use trainer=cpu / trainer=gpu",
        )
    for key in ("pretrain.batch_size", "method.batch_size"):
        per_device_batch_size(cfg, key)


def _check_rank_backend(cfg: DictConfig, name: str, devices: int) -> None:
    """GPU ranks need that many visible GPUs; CPU ranks need gloo; sync_batchnorm needs GPUs."""
    import torch

    accelerator = cfg.trainer.get("accelerator")
    if accelerator in GPU_ACCELERATORS:
        found = torch.cuda.device_count()
        if found < devices or (devices < 2 and world_size(cfg) < 2):
            raise reject(
                "trainer.devices",
                devices,
                f"at least 2 and at most the {found} CUDA GPU(s) visible here under "
                f"strategy={name}",
                "use trainer=gpu for one GPU, trainer=ddp_cpu to try DDP on the CPU",
            )
    elif not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        raise reject(
            "trainer.strategy", name, "a single process: CPU ranks need gloo", "trainer=cpu"
        )
    if cfg.trainer.get("sync_batchnorm") and accelerator not in GPU_ACCELERATORS:
        raise reject(
            "trainer.sync_batchnorm", True, "false: it needs GPUs (torch's SyncBatchNorm)", "false"
        )


def _check_nodes(cfg: DictConfig) -> None:
    """Several nodes need their ranks started by a cluster, as many as W."""
    nodes = cfg.trainer.get("num_nodes")
    if nodes is None:
        raise reject(
            "trainer.num_nodes",
            nodes,
            "set to the number of nodes (trainer=ddp_multinode reads $SLURM_NNODES when run "
            "inside a SLURM allocation)",
            "2",
        )
    cluster = cluster_started()
    if nodes > 1 and cluster is None:
        raise reject(
            "trainer.num_nodes",
            nodes,
            "1 outside a cluster: a multi-node run needs one process per device started by "
            "SLURM or torchrun, and no SLURM task or torchrun environment was found here",
            "submit with sbatch and `srun python train.py ...` "
            "(--ntasks-per-node=trainer.devices), or use torchrun",
        )
    tasks = os.environ.get("SLURM_NTASKS")
    if cluster == "slurm" and tasks is not None and int(tasks) != world_size(cfg):
        raise reject(
            "trainer.num_nodes",
            nodes,
            f"such that trainer.devices × trainer.num_nodes = {world_size(cfg)} matches the "
            f"{tasks} task(s) SLURM started",
            f"--ntasks-per-node={cfg.trainer.devices} and --nodes={nodes}",
        )


def _chains_passes(cfg: DictConfig) -> bool:
    """Whether the method overrides ``epoch_passes`` (SCRUB): its loader is no ``DataLoader``."""
    from unlearning.methods.base import UnlearningMethod

    method = locate(cfg.method._target_)
    return getattr(method, "epoch_passes", None) is not UnlearningMethod.epoch_passes


# ------------------------------------------------------------------------------ the loaded data
# (issue 19) These rules need the data source, built and checked on disk by
# unlearning.pipeline.run.check_inputs: they run there, after validate_config and before any
# training, and name the key that made a set empty.


def _size_key(cfg: DictConfig, part: str) -> tuple[str, Any, str]:
    """The config key that sizes ``part`` of the dataset, its value and an example fix."""
    dataset = cfg.dataset
    if "test_fraction" in dataset:  # digits: one fraction cuts both parts
        return "dataset.test_fraction", dataset.test_fraction, "0.2"
    if f"n_{part}" in dataset:  # signal_noise
        return f"dataset.n_{part}", dataset[f"n_{part}"], "1000" if part == "test" else "400"
    return "dataset.root", str(dataset.get("root")), "the root of a complete copy of the data"


def check_data_sets(cfg: DictConfig, source: ImageSource) -> None:
    """The train part holds at least 2 samples (F and R each need one), the test part one; a
    class or group split names a class that is in S and leaves R and D_test non-empty. Each
    message names the key that made the set empty: an empty set used to surface as a division
    by zero (or a NaN accuracy) in the evaluation, after all the training."""
    n_train, n_test = len(source.targets("train")), len(source.targets("test"))
    for part, n, least in (("train", n_train, 2), ("test", n_test, 1)):
        if n < least:
            key, value, fix = _size_key(cfg, part)
            raise reject(
                key,
                value,
                f"a value that leaves the {part} part at least {least} "
                f"sample{'s' if least > 1 else ''}",
                fix,
                f"it holds {n}",
            )
    split = cfg.split
    if split.name not in ("class", "group"):
        return
    key, label = (
        ("split.label", split.label)
        if split.name == "class"
        else (
            "split.fine_label",
            split.fine_label,
        )
    )
    if split.name == "class":
        train, test = source.targets("train"), source.targets("test")
    else:
        train, test = source.fine_targets("train"), source.fine_targets("test")
    present = sorted(set(np.unique(train).tolist()))
    in_s = int((train == label).sum())
    if in_s == 0 or in_s == len(train):
        why = "no sample of S has it" if in_s == 0 else "every sample of S has it: R is empty"
        raise reject(
            key,
            label,
            f"a class of S that leaves R non-empty, one of {present[:20]}",
            str(present[0] if present[0] != label else present[-1]),
            why,
        )
    if not (test != label).any():
        raise reject(
            key,
            label,
            "a class that leaves samples of other classes in D_test",
            str(present[0] if present[0] != label else present[-1]),
            "D_test without it is empty",
        )


def check_scores(cfg: DictConfig, scores: np.ndarray, n_forget: int) -> None:
    """Scores read from a file (``memorization=file``) are finite or NaN (NaN: a sample the
    estimator never held out, never chosen), and enough of them are finite to pick F (three
    times |F| with ``split.disjoint``, whose levels share no sample). Found at start-up rather
    than in the split stage, after pretraining."""
    path = str(Path(cfg.memorization.path).expanduser())
    infinite = int(np.isinf(scores).sum())
    if infinite:
        raise reject(
            "memorization.path",
            path,
            "a score file of finite scores (NaN for an undefined one)",
            "data/memorization/cifar100.npz (docs/memorization.md)",
            f"{infinite} of its {len(scores)} scores are infinite",
        )
    needed = n_forget * (3 if cfg.split.get("disjoint", False) else 1)
    finite = int(np.isfinite(scores).sum())
    if finite < needed:
        raise reject(
            "memorization.path",
            path,
            f"a score file with at least {needed} finite scores for split.size={cfg.split.size}",
            "split.size=0.01",
            f"it has {finite}; the others are NaN",
        )
