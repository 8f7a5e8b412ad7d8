"""The shared base of every training stage and unlearning method (SPEC §2).

A method is a small subclass that declares the sets it trains on (``train_sets``) and overrides
one hook, :meth:`UnlearningMethod.loss`, over a batch ``{"retain": (x, y), "forget": (x, y)}``.
Everything else — optimizer and scheduler construction, logging, the backbone — lives here, so a
sharpness-aware callback (``callbacks.sharpness``) can wrap any method's step unchanged.

The base class also declares, with defaults, everything a pipeline stage may ask of a method
(the *method protocol*, docs/adding_a_method.md): how an epoch walks the sets
(:attr:`~UnlearningMethod.train_sets`, :attr:`~UnlearningMethod.epoch_driver`,
:meth:`~UnlearningMethod.epoch_passes`, :attr:`~UnlearningMethod.sample_id_sets`), whether the
unlearned model is the oracle itself (:attr:`~UnlearningMethod.from_scratch`), whether the method
steps its own sharpness-aware update (:attr:`~UnlearningMethod.owns_sharpness`,
:meth:`~UnlearningMethod.use_sharpness`) and whether it works on a saliency mask of f_A
(:attr:`~UnlearningMethod.needs_forget_mask`, :attr:`~UnlearningMethod.mask_keys`,
:meth:`~UnlearningMethod.set_forget_mask`; implemented by
:class:`unlearning.methods.masked.MaskedMethod`). Stages read these attributes and call these
methods directly; nothing else about a method is assumed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import nn

from callbacks.lightning_compat import HOOK_NAME_ATTRIBUTE, logs_this_step

if TYPE_CHECKING:
    from callbacks.sharpness import SharpnessAwareCallback

Batch = dict[str, tuple[torch.Tensor, torch.Tensor]]
OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: a partial torch LR scheduler (``conf/scheduler/*.yaml``), called as ``scheduler(optimizer)``
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def check_retain_weight(alpha: float, key: str = "alpha") -> float:
    """Validate the retain weight α ∈ [0, 1] (000 eq. 4)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(
            f"{key}={alpha!r}: the retain weight alpha must lie in [0, 1] "
            "(1 = only retain loss, 0 = only forget loss), e.g. alpha=0.99"
        )
    return float(alpha)


class UnlearningMethod(L.LightningModule):
    """Base LightningModule over a backbone ``net``.

    Args:
        net: the backbone (a ``torch.nn.Module`` mapping images to logits).
        optimizer: a partial torch optimizer (``conf/optim/*.yaml``), called as
            ``optimizer(params, lr=lr)``.
        lr: learning rate.
        epochs: number of epochs of this stage (a scheduler preset reads it as ``${..epochs}``).
        scheduler: a partial torch LR scheduler (``conf/scheduler/*.yaml``), called as
            ``scheduler(optimizer)`` and stepped once per epoch, or ``None`` for a constant
            learning rate. ``scheduler@method=cosine`` is cosine annealing to 0 over ``epochs``
            (000 App. C.1).
        batch_size: B per set and step (read by the datamodule; kept here for the record).
        name: method name, for logs.
    """

    #: the sets whose batches ``loss`` reads; the datamodule serves exactly these.
    train_sets: ClassVar[tuple[str, ...]] = ("retain",)
    #: with joint batches, the set one pass over which is an epoch (the others cycle or are cut
    #: short); ``None`` = the longest set, i.e. ⌈|R|/B⌉ steps for a small F (000 §2.2).
    epoch_driver: ClassVar[str | None] = None
    #: sets whose batches carry each sample's index in S as a third element ``(x, y, ids)``.
    sample_id_sets: ClassVar[tuple[str, ...]] = ()
    #: the unlearned model *is* the oracle f_A(R) (``retrain``): the unlearning stage serves the
    #: oracle stage's cached model instead of training, and reports the oracle's time as RTE.
    from_scratch: ClassVar[bool] = False
    #: the method takes its sharpness-aware step itself (manual optimization): the unlearning
    #: stage hands the ``optim`` preset's sharpness settings to :meth:`use_sharpness` instead of
    #: attaching them as a callback that wraps the step (Sharp MinMax; IU, which takes no step).
    owns_sharpness: ClassVar[bool] = False
    #: the method works on a saliency mask of f_A's parameters: the pipeline's mask stage
    #: computes it (cached) and hands it to :meth:`set_forget_mask` before training.
    #: :class:`unlearning.methods.masked.MaskedMethod` sets this and implements the intake.
    needs_forget_mask: ClassVar[bool] = False
    #: with ``needs_forget_mask``: the mask stage's parameters (``fraction``: the share of
    #: entries in the mask; ``batch_size``: the forget batches of the saliency pass) mapped to
    #: the keys of the method's config that hold them; their values size the mask and key its
    #: cache entry (:meth:`mask_settings`).
    mask_keys: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        lr: float = 0.01,
        epochs: int = 1,
        scheduler: SchedulerFactory | None = None,
        batch_size: int | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer or torch.optim.SGD
        self.scheduler_factory = scheduler
        self.lr, self.epochs, self.method_name = lr, epochs, name
        self.batch_size = batch_size

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets the running hook's name (`_current_fx_name`, a Lightning internal
        # guarded in callbacks.lightning_compat) around every hook it calls (~45 times a training
        # step); nn.Module.__setattr__'s parameter/module/buffer checks make that ~0.2 ms a step,
        # a visible share of a small model's step (bench item 2). It is a plain attribute.
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def cross_entropy(self, batch: Batch, set_name: str) -> torch.Tensor:
        """Mean cross-entropy of the ``set_name`` part of the batch."""
        x, y = batch[set_name]
        return F.cross_entropy(self.net(x), y)

    def frozen_copy(self) -> nn.Module:
        """A reference copy of the backbone as it is now (f_A when called in a constructor): eval
        mode, no gradients — SCRUB's teacher, the boundary methods' original model."""
        reference = copy.deepcopy(self.net).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        return reference

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective of one step and named parts to log. Subclasses override this."""
        raise NotImplementedError

    def epoch_passes(self, epoch: int) -> tuple[str, ...] | None:
        """The sets to pass over *one after another* in ``epoch`` (each batch then holds one
        set, ``{name: (x, y)}``), or ``None`` for joint batches (the default, every epoch).
        A method that overrides this gets its train loader rebuilt every epoch."""
        return None

    def epoch_schedule(self) -> dict[str, Any]:
        """How the datamodule walks the sets in an epoch (``UnlearningDataModule`` arguments)."""
        chained = type(self).epoch_passes is not UnlearningMethod.epoch_passes
        return {
            "driver": self.epoch_driver,
            "passes": self.epoch_passes if chained else None,
            "with_ids": self.sample_id_sets,
        }

    @classmethod
    def mask_settings(cls, method_cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The mask stage's parameters read from the method's config through :attr:`mask_keys`
        (``{}`` for a method without a mask): what sizes the mask and keys its cache entry."""
        return {param: method_cfg.get(key) for param, key in cls.mask_keys.items()}

    def set_forget_mask(self, masks: dict[str, torch.Tensor]) -> None:
        """Receive the saliency mask (``True`` = in the mask) keyed by names of ``self.net``'s
        trainable parameters; called once before training when :attr:`needs_forget_mask`."""
        raise TypeError(
            f"{type(self).__name__} takes no forget mask (needs_forget_mask is False); "
            "derive from unlearning.methods.masked.MaskedMethod to use one"
        )

    def use_sharpness(self, settings: SharpnessAwareCallback | None) -> None:
        """Receive the ``optim`` preset's sharpness-aware settings (a configured
        :class:`callbacks.sharpness.SharpnessAwareCallback`, or ``None`` under plain SGD);
        called once before training when :attr:`owns_sharpness`, instead of attaching them as a
        callback. The default keeps them as ``self.sharpness`` for the method's own step."""
        self.sharpness = settings

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, parts = self.loss(batch)
        self.log_step(loss, parts, batch_size=len(next(iter(batch.values()))[1]))
        return loss

    def log_step(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log ``train/loss`` (also on the progress bar) and ``train/<part>`` for this step — on
        the steps whose values reach the logger only (every ``trainer.log_every_n_steps``).

        Lightning keeps only the latest ``on_step`` value of a key and writes it on those steps,
        so skipping the others loses nothing a logger or the progress bar would show (the bar's
        loss then changes every ``log_every_n_steps`` steps). It saves a fixed cost of ~0.1 ms
        per ``self.log`` call (Lightning moves its whole result entry to the value's device on
        every call), a visible share of a small model's step (bench item 2, docs/benchmarks.md).
        The divergence guard reads the loss ``training_step`` returns, not the logged value.
        """
        if not self._logs_this_step():
            return
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=batch_size)

    def _logs_this_step(self) -> bool:
        """Whether the trainer writes this training step's logged values to its loggers:
        Lightning's own rule (every ``log_every_n_steps`` optimizer steps, and the last step
        before a stop), read through :func:`callbacks.lightning_compat.logs_this_step`; without
        a trainer (a bare call in a test) everything is logged."""
        return logs_this_step(self)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters handed to the optimizer."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> Any:
        """The ``optim`` preset's optimizer over :meth:`trainable_parameters` at ``lr``, and the
        scheduler built on it, stepped once per epoch (none: a constant learning rate)."""
        optimizer = self.optimizer_factory(self.trainable_parameters(), lr=self.lr)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }


def method_class(target: str) -> type[UnlearningMethod]:
    """The :class:`UnlearningMethod` subclass a method config's ``_target_`` names: what a
    pipeline stage asks about a method (its declared protocol) before building it."""
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
        raise TypeError(f"method._target_={target!r} is not a subclass of UnlearningMethod")
    return cls
