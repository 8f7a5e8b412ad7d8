"""The fast path of :func:`~unlearning.pipeline.stages.training.train_from_scratch`: the same
pretraining recipe (000 App. C.1) run by a plain PyTorch loop instead of a Lightning ``Trainer``,
for the many small fits of an ensemble (issue #15: memorization members on random subsets,
pretraining and oracle members).

It trains *the same model*: on the CPU the weights are bit-identical (``torch.equal``) to the
Lightning stage's for plain SGD, SAM, ASAM and sharpness maximisation
(``tests/unlearning/pipeline/test_fast_training.py``). That holds because every draw and every
floating-point operation happens in the same order:

* seeding (``L.seed_everything(pretrain.seed, workers=True)``) right before building the same
  :class:`~unlearning.methods.erm.ERM` module, whose backbone draws its initial weights;
* the optimizer and the per-epoch LR scheduler come from the module's own
  ``configure_optimizers`` (the ``pretrain.optim`` preset at ``pretrain.lr``); the scheduler
  steps after each epoch's last batch, as Lightning's ``interval: "epoch"``;
* the batches come from the same :class:`~datamodules.unlearning_datamodule.UnlearningDataModule`
  loader (:class:`~datamodules.loaders.DirectBatches` for in-memory data: one ``iter`` per epoch,
  as Lightning's fit loop, which does not prefetch a sized loader), with the same augmentation;
* a step is Lightning's automatic-optimization closure (``loss``, ``zero_grad`` with
  ``set_to_none``, ``backward``) handed to ``optimizer.step``; with a sharpness-aware preset the
  closure is wrapped exactly as :class:`callbacks.sharpness.SharpnessAwareCallback` wraps it
  (first pass, ê in place in ``.grad`` over the optimizer's parameters that have a gradient, the
  second pass at ``w ± ê`` with BatchNorm running statistics frozen, the bit-exact restore, and
  ``2g − g'`` for first-order sharpness maximisation), using the same functions;
* ``torch.use_deterministic_algorithms`` follows ``trainer.deterministic``, as the Trainer sets
  it.

What it leaves out is what an ensemble member does not need: per-epoch checkpoints (a member is
small; a killed one is retrained, and the ensemble resumes member by member), loggers, user
callbacks and the divergence guard's snapshot ring (a non-finite loss or final weights still
raise :class:`~unlearning.errors.DivergedStageError` naming ``pretrain.lr``, and nothing is
saved). The fault-injection hook (:mod:`unlearning.pipeline.faults`) runs at each epoch start.

:func:`fast_path_reason` says why the fast path does not apply to a config (a GPU or several
processes, another precision, gradient clipping or accumulation, a batch limit, ``compile`` /
``channels_last``, DataLoader workers, an optimizer or scheduler it was not checked for); the
callers then use the Lightning stage. ``bench/bench_ensemble.py`` measures both.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from callbacks.sharpness import (
    SharpnessAwareCallback,
    _buffers,
    _copy_into,
    adaptive_flags,
    frozen_running_stats,
    maximisation_gradient,
    perturbation,
    perturbed,
    running_stat_modules,
)
from datamodules.sources import ImageSource
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.errors import DivergedStageError
from unlearning.files import writing
from unlearning.methods.erm import ERM
from unlearning.pipeline.faults import inject
from unlearning.pipeline.stages.training import MODEL_FILE, sharpness_callbacks

#: base optimizers whose ``step(closure)`` calls the closure exactly once (checked equal to the
#: Lightning stage); another optimizer falls back to the Lightning stage
OPTIMIZERS = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW")
#: per-epoch schedulers stepped without arguments (``None``: a constant learning rate)
SCHEDULERS = (
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.LinearLR",
    "torch.optim.lr_scheduler.ExponentialLR",
    "torch.optim.lr_scheduler.ConstantLR",
)
#: ``trainer`` keys that never change a fit on one CPU process (display, logging, the fields
#: the stage sets itself); every other key must have the value in :data:`_TRAINER_PLAIN`
_TRAINER_FREE = frozenset(
    {
        "_target_",
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "default_root_dir",
        "deterministic",
        "benchmark",
        "num_sanity_val_steps",
        "check_val_every_n_epoch",
        "val_check_interval",
        "limit_val_batches",
    }
)
#: the values of the other ``trainer`` keys under which the plain loop is the Trainer's fit
_TRAINER_PLAIN: dict[str, tuple[Any, ...]] = {
    "accelerator": ("cpu",),
    "devices": (1, "1", "auto"),
    "num_nodes": (1,),
    "strategy": (None, "auto"),
    "precision": ("32-true", "32", 32, None),
    "limit_train_batches": (1.0, None),
    "accumulate_grad_batches": (1, None),
    "gradient_clip_val": (None, 0, 0.0),
    "max_time": (None,),
    "max_steps": (-1, None),
    "min_epochs": (None,),
    "min_steps": (None,),
}


def fast_path_reason(cfg: DictConfig) -> str | None:
    """Why :func:`fast_train_from_scratch` does not apply to ``cfg`` (one line naming the key and
    its value), or ``None`` when it trains the same model as the Lightning stage
    :func:`~unlearning.pipeline.stages.training.train_from_scratch`."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    for key, value in trainer.items():
        if key in _TRAINER_FREE:
            continue
        allowed = _TRAINER_PLAIN.get(key)
        if allowed is None:
            return f"trainer.{key}={value!r}: the plain loop was not checked against it"
        if value not in allowed:
            return f"trainer.{key}={value!r}: the plain loop runs one CPU process in float32"
    for key in ("channels_last", "compile"):
        if cfg.get(key):
            return f"{key}=true: a GPU setting the plain loop does not apply"
    if int(cfg.get("num_workers") or 0) > 0:
        return f"num_workers={cfg.num_workers}: the plain loop reads in-memory batches itself"
    optimizer = str(OmegaConf.select(cfg, "pretrain.optim.optimizer._target_", default=""))
    if optimizer not in OPTIMIZERS:
        return f"pretrain.optim.optimizer._target_={optimizer!r}: not one of {OPTIMIZERS}"
    scheduler = OmegaConf.select(cfg, "pretrain.scheduler")
    if scheduler is not None and str(scheduler.get("_target_")) not in SCHEDULERS:
        return f"pretrain.scheduler._target_={scheduler.get('_target_')!r}: not one of {SCHEDULERS}"
    sharpness = OmegaConf.select(cfg, "pretrain.optim.sharpness")
    if sharpness is not None:
        target = get_class(str(sharpness.get("_target_")))
        if not (isinstance(target, type) and issubclass(target, SharpnessAwareCallback)):
            return f"pretrain.optim.sharpness._target_={sharpness.get('_target_')!r}: unknown"
    return None


@contextlib.contextmanager
def _deterministic(setting: Any) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` as the Trainer sets it for ``trainer.deterministic``
    (``True``, ``"warn"``; ``False``/``None`` leave it), restored afterwards."""
    before, warn = (
        torch.are_deterministic_algorithms_enabled(),
        (torch.is_deterministic_algorithms_warn_only_enabled()),
    )
    if setting is True or setting == "warn":
        torch.use_deterministic_algorithms(True, warn_only=setting == "warn")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


class _SharpStep:
    """The sharpness-aware step of :class:`callbacks.sharpness.SharpnessAwareCallback` (one CPU
    process: no DDP), wrapping a closure the way the callback wraps Lightning's: the same
    functions, the same order, the same reused buffers."""

    def __init__(self, settings: SharpnessAwareCallback, module: ERM) -> None:
        self.s = settings
        names = {id(p): n for n, p in module.named_parameters()}
        flags = adaptive_flags(list(names.values()), settings.adaptive_params)
        self.flags = dict(zip(names.keys(), flags, strict=True))
        self.norm_layers = running_stat_modules(module)
        self.saved: dict[int, Tensor] = {}
        self.grad_store: dict[int, Tensor] = {}
        self.stats: dict[int, Tensor] = {}

    def __call__(
        self, optimizer: torch.optim.Optimizer, closure: Callable[[], Tensor]
    ) -> Tensor | None:
        s = self.s
        first_loss = closure()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        params = [p for p in params if p.grad is not None]
        if first_loss is None or not params:
            optimizer.step(lambda: first_loss)
            return first_loss
        grads = [p.grad for p in params]
        grad_w = _copy_into(self.grad_store, grads) if s.objective == "maximize" else None
        pending = [
            perturbation(
                params,
                grads,
                s.rho,
                adaptive=s.adaptive,
                eta=s.eta,
                flags=[self.flags.get(id(p), False) for p in params] if s.adaptive else None,
                inplace=True,
            )
        ]
        del grads
        saved = _buffers(self.saved, params)

        def second_pass() -> Tensor:
            with (
                perturbed(params, pending.pop(), s.sign, saved=saved),
                frozen_running_stats(self.norm_layers, self.stats),
            ):
                closure()
            if grad_w is not None:
                maximisation_gradient(params, grad_w)
            return first_loss

        optimizer.step(second_pass)
        return first_loss


def _plain_step(optimizer: torch.optim.Optimizer, closure: Callable[[], Tensor]) -> Tensor | None:
    return optimizer.step(closure)


def fast_train_from_scratch(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray | None,
    train_set: str,
    work_dir: Path,
) -> dict[str, Any]:
    """:func:`~unlearning.pipeline.stages.training.train_from_scratch` by a plain PyTorch loop
    (:func:`fit`): saves ``work_dir/model.pt`` and returns the same metadata (this attempt's
    training time, the epochs). Only for a config :func:`fast_path_reason` accepts (raises
    ``ValueError`` with that reason otherwise); a divergence raises
    :class:`~unlearning.errors.DivergedStageError` and saves nothing."""
    net, meta = fit(cfg, source, forget_indices, train_set)
    name = "pretrain" if train_set == "train" else "oracle"
    path = work_dir / MODEL_FILE
    with writing(path, f"the {name} stage's model", "paths.cache_dir"):
        torch.save(net.state_dict(), path)
    shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)  # a Lightning attempt's leftovers
    return meta


def fit(
    cfg: DictConfig,
    source: ImageSource,
    forget_indices: np.ndarray | None,
    train_set: str,
    epoch_end: Callable[[nn.Module, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``cfg.model`` from its seeded init (``pretrain.seed``) on ``train_set`` (``train`` =
    S, ``retain`` = R = S minus ``forget_indices``) with ``cfg.pretrain``'s optimizer A,
    scheduler, batch size, augmentation and epochs, in memory: the backbone (in train mode) and
    the metadata of :func:`fast_train_from_scratch`. ``epoch_end(net, epoch)`` is called after
    each epoch's scheduler step (it must leave the RNG and the weights as they are). A
    non-finite loss or final weights raise :class:`~unlearning.errors.DivergedStageError`
    naming ``pretrain.lr``."""
    reason = fast_path_reason(cfg)
    if reason is not None:
        raise ValueError(f"the fast training path does not apply: {reason}")
    p = cfg.pretrain
    name = "pretrain" if train_set == "train" else "oracle"
    start = time.perf_counter()
    with _deterministic(cfg.trainer.get("deterministic")):
        L.seed_everything(p.seed, workers=True, verbose=False)
        module = ERM(
            instantiate(cfg.model),
            optimizer=instantiate(p.optim.optimizer),
            lr=p.lr,
            epochs=p.epochs,
            scheduler=instantiate(p.get("scheduler")),
            train_set=train_set,
            name=name,
        )
        sharpness = sharpness_callbacks(p.optim)
        data = UnlearningDataModule(
            source,
            forget_indices,
            module.train_sets,
            int(p.batch_size),
            num_workers=0,
            **module.epoch_schedule(),
        )
        loader = data._train_loader(train_set)
        configured = module.configure_optimizers()
        if isinstance(configured, dict):
            optimizer = configured["optimizer"]
            scheduler = configured["lr_scheduler"]["scheduler"]
        else:
            optimizer, scheduler = configured, None
        step = _SharpStep(sharpness[0], module) if sharpness else _plain_step
        net = module.net
        net.train()
        steps = 0
        for epoch in range(int(p.epochs)):
            inject(name, epoch)
            for batch in loader:
                x, y = batch[0], batch[1]

                def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
                    loss = F.cross_entropy(net(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    return loss

                loss = step(optimizer, closure)
                steps += 1
                if loss is not None and not math.isfinite(float(loss.detach())):
                    raise DivergedStageError("pretrain.lr", p.lr, name, steps, f"loss is {loss}")
            if scheduler is not None:
                scheduler.step()
            if epoch_end is not None:
                epoch_end(net, epoch)
                net.train()
        if not all(torch.isfinite(t).all() for t in net.parameters()):
            raise DivergedStageError(
                "pretrain.lr", p.lr, name, steps, "non-finite weights at the end"
            )
    return net, {"train_seconds": time.perf_counter() - start, "epochs": int(p.epochs)}
