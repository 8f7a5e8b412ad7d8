r"""Sharpness-aware optimisation (SAM, ASAM, sharpness maximisation) as a Lightning callback.

SPEC §1: every phase (pretraining, oracle retraining, unlearning) steps a *base* optimizer (SGD
with momentum and weight decay by default) and may add a sharpness-aware wrapper as a callback,
so that any method gets SAM without changing its code. Equations (``g = ∇L(w)`` on the
mini-batch; every norm is taken over *all* perturbed parameters together):

* **SAM** (Foret et al. 2021; the ``max`` of 000 eq. 5)::

      ê = ρ g / ‖g‖₂,           step the base optimizer with  g' = ∇L(w + ê)

* **ASAM** (Kwon et al. 2021, adaptive)::

      T_w = |w| + η  (elementwise),   ê = ρ T_w² g / ‖T_w g‖₂,   step with  g' = ∇L(w + ê)

  Which parameters are "adaptive" is the option ``adaptive_params``: ``"weight"`` (default) follows
  the official ASAM code (SamsungLabs/ASAM): ``T_w = |w| + η`` for parameters whose qualified name
  contains ``"weight"`` (conv/linear kernels *and* BatchNorm γ) and ``T_w = 1`` (plain SAM) for all
  others (biases, BatchNorm β). ``"all"`` scales every parameter; with ``eta=0`` it reproduces
  davda54/sam's ``adaptive=True`` (the code base that paper 000 builds on) and
  ``pytorch_optimizer.SAM(adaptive=True)``.

* **Sharpness maximisation** (000 eq. 8, after Kim et al. 2023): minimise
  ``L(w) − [L(w + ê) − L(w)] = 2 L(w) − L(w + ê)`` with ê as in SAM/ASAM.

  - ``variant="first_order"`` (default): with ê held constant (as SAM does) the gradient of the
    objective, i.e. the step direction, is ``2 g − g'``.
  - ``variant="negative_rho"``: the other natural reading, "SAM with negative ρ": step with the
    gradient at ``w − ê``, i.e. ``∇L(w − ê)``. No public code of Kim et al. exists, so both are
    offered (SPEC §1).

Numerics shared by all modes: the denominator is ``‖·‖₂ + 1e-12`` (as davda54/sam and
pytorch_optimizer; the official ASAM uses 1e-16); the perturbation uses the raw gradient
(no weight decay: the base optimizer adds it at the restored ``w``); ``w`` is restored
*bit-identically* by copying a saved clone back (not by subtracting ê, which the official ASAM
and the first davda54 release do and which is off by rounding).

Mechanism (see :class:`SharpnessAwareCallback`): at ``on_fit_start`` the callback wraps
``trainer.strategy.optimizer_step``. Lightning's automatic optimization routes every step as
``LightningModule.optimizer_step -> LightningOptimizer.step -> strategy.optimizer_step(optimizer,
closure) -> precision_plugin.optimizer_step -> optimizer.step(closure)``, where ``closure`` runs
``training_step`` + ``zero_grad`` + ``backward``. The wrapper runs the closure once itself (first
pass, under DDP ``no_sync``), computes ê, and hands the base strategy step a closure that
perturbs, runs the second pass (BatchNorm running statistics, ``self.log`` and torchmetrics
states frozen), restores ``w`` and forms the step direction. The precision plugin then runs its
usual ``on_before_optimizer_step`` hooks and gradient clipping on that final gradient, and the
real torch optimizer steps once, so LR schedulers, the AMP grad scaler and checkpointing see an
ordinary optimizer. The Lightning and torchmetrics internals this relies on (the closure's
stored result, the step's route through the strategy, torchmetrics' private state) are reached
through :mod:`callbacks.lightning_compat`, which fails loudly when an upgrade moves them.

The pure functions :func:`perturbation`, :func:`step_direction`, :func:`perturbed`,
:func:`frozen_running_stats` and :func:`sharpness_aware_grad` compute the same quantities without
Lightning, for methods that need sharpness-aware gradients of several objectives on parts of one
model (Sharp MinMax, 000 §3.2: SAM on the retain part, sharpness maximisation on the forget part,
selected by elementwise masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    XLAStrategy,
)
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import Metric

from callbacks import lightning_compat as compat

__all__ = [
    "ADAPTIVE_PARAMS",
    "ASAM",
    "EPS",
    "MODES",
    "OBJECTIVES",
    "SAM",
    "SharpnessAwareCallback",
    "SharpnessMax",
    "adaptive_flags",
    "from_mode",
    "frozen_running_stats",
    "perturbation",
    "perturbed",
    "running_stat_modules",
    "sharpness_aware_grad",
    "step_direction",
]

Objective = Literal["minimize", "maximize", "maximize_neg"]
"""``minimize``: SAM/ASAM, step with ∇L(w+ê). ``maximize``: 000 eq. 8 to first order, step with
2∇L(w) − ∇L(w+ê). ``maximize_neg``: "negative ρ", step with ∇L(w−ê)."""

OBJECTIVES: tuple[str, ...] = ("minimize", "maximize", "maximize_neg")
ADAPTIVE_PARAMS: tuple[str, ...] = ("weight", "all")
MODES: tuple[str, ...] = ("sam", "asam", "sharpmax", "sharpmax_neg")
VARIANTS: tuple[str, ...] = ("first_order", "negative_rho")
EPS = 1e-12
"""Added to the perturbation's norm (davda54/sam, pytorch_optimizer); ê = 0 when g = 0."""

RHO_KEY = "optim.sharpness.rho (or pretrain.optim.sharpness.rho, or the top-level `rho` override)"
_SHARPNESS_KEY = "optim.sharpness"


# --------------------------------------------------------------------------- validation


def _validate_rho(rho: Any, key: str = RHO_KEY) -> float:
    """Return ``rho`` as a float, or raise ``ValueError`` naming ``key``; allowed range (0, inf).

    The sign of the perturbation is set by the objective (``maximize_neg`` perturbs along −ê),
    never by a negative ρ, so ρ ≤ 0 is always a configuration error.
    """
    if isinstance(rho, bool):
        raise ValueError(f"{key} must be a number in (0, inf); got {rho!r}")
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number in (0, inf); got {rho!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(
            f"{key} must be > 0 (allowed range (0, inf)); got {rho!r}. For the 'negative rho' "
            "reading of sharpness maximisation use optim=sharpmax "
            "optim.sharpness.variant=negative_rho with a positive rho."
        )
    return value


def _validate_eta(eta: Any, key: str = f"{_SHARPNESS_KEY}.eta") -> float:
    """Return ASAM's η as a float or raise ``ValueError`` naming ``key``; allowed: [0, inf)."""
    if isinstance(eta, bool):
        raise ValueError(f"{key} must be a number in [0, inf); got {eta!r}")
    try:
        value = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number in [0, inf); got {eta!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{key} must be >= 0 (allowed range [0, inf)); got {eta!r}")
    return value


def _validate_choice(value: Any, allowed: Sequence[str], key: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` naming ``key``."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def _validate_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false; got {value!r}")
    return value


# --------------------------------------------------------------------------- pure functions


def adaptive_flags(names: Sequence[str], adaptive_params: str = "weight") -> list[bool]:
    """Which parameters ASAM scales by ``T_w = |w| + η`` (the others get ``T_w = 1``).

    ``"weight"``: names containing ``"weight"``, as the official ASAM code (SamsungLabs/ASAM,
    ``'weight' in n``): conv/linear kernels and BatchNorm γ; biases and BatchNorm β are plain SAM.
    ``"all"``: every parameter (davda54/sam's ``adaptive=True``, together with ``eta=0``).
    """
    _validate_choice(adaptive_params, ADAPTIVE_PARAMS, f"{_SHARPNESS_KEY}.adaptive_params")
    if adaptive_params == "all":
        return [True] * len(names)
    return ["weight" in name for name in names]


def _foreach_ok(*lists: Sequence[Tensor]) -> bool:
    """True when every tensor shares one device and dtype: the fused ``torch._foreach_*`` path
    (one kernel per op instead of one per parameter, which matters on GPUs)."""
    first = lists[0][0]
    return all(t.device == first.device and t.dtype == first.dtype for ts in lists for t in ts)


def _global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖(t_1, ..., t_n)‖₂ over all entries, in at least float32, on ``tensors[0]``'s device."""
    first = tensors[0]
    if first.dtype in (torch.float32, torch.float64) and _foreach_ok(tensors):
        norms = list(torch._foreach_norm(list(tensors)))
    else:
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        norms = [torch.linalg.vector_norm(t, dtype=dtype).to(first.device) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def perturbation(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    *,
    adaptive: bool = False,
    eta: float = 0.0,
    flags: Sequence[bool] | None = None,
    masks: Sequence[Tensor | None] | None = None,
    inplace: bool = False,
) -> list[Tensor]:
    r"""The sharpness-aware perturbation ê for ``params`` given their gradients (SPEC §1).

    SAM: ``ê = ρ g / (‖g‖₂ + 1e-12)``; ASAM (``adaptive=True``):
    ``ê = ρ T_w² g / (‖T_w g‖₂ + 1e-12)`` with ``T_w = |w| + η`` on parameters whose ``flags``
    entry is true (all when ``flags`` is None; see :func:`adaptive_flags`) and ``T_w = 1`` on the
    others. The norm runs over all given tensors together.

    ``masks`` (optional, one 0/1 tensor or None per parameter) restricts the perturbation to a
    part of the model, as Sharp MinMax's retain/forget split (000 §3.2): ``g`` is replaced by
    ``m ⊙ g`` before anything else, so ê is zero outside the mask and the norm only sees the part.

    Returns ê (always the +ê direction; sharpness maximisation with ``negative_rho`` applies −ê).
    Computed without autograd; ``params`` are not modified, and ``grads`` neither unless
    ``inplace=True``, which writes ê into the ``grads`` tensors and returns them (no allocation:
    the callback does this with the first pass's ``.grad``, which it does not need afterwards).
    """
    rho = _validate_rho(rho, key="rho")
    eta = _validate_eta(eta, key="eta")
    if len(params) != len(grads):
        raise ValueError(f"got {len(params)} params but {len(grads)} grads")
    if not params:
        return []

    def times(x: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            return x
        return x.mul_(y) if inplace else x * y

    g = [gi.detach() for gi in grads]
    if masks is not None:
        if len(masks) != len(g):
            raise ValueError(f"got {len(masks)} masks for {len(g)} params")
        g = [times(gi, m) for gi, m in zip(g, masks, strict=True)]
    scales: list[Tensor | None] = [None] * len(g)
    if adaptive:
        use = [True] * len(g) if flags is None else list(flags)
        if len(use) != len(g):
            raise ValueError(f"got {len(use)} adaptive flags for {len(g)} params")
        scales = [
            p.detach().abs().add_(eta) if f else None for p, f in zip(params, use, strict=True)
        ]
    tg = [times(gi, t) for gi, t in zip(g, scales, strict=True)]  # T_w g
    scale = rho / (_global_norm(tg) + EPS)
    if _foreach_ok(tg):
        if inplace:
            torch._foreach_mul_(tg, scale.to(tg[0]))
            e = tg
        else:
            e = list(torch._foreach_mul(tg, scale.to(tg[0])))
    else:
        e = [x.mul_(scale.to(x)) if inplace else x * scale.to(x) for x in tg]
    return [x if t is None else x.mul_(t) for x, t in zip(e, scales, strict=True)]  # T_w² g


def step_direction(
    grad_w: Sequence[Tensor], grad_perturbed: Sequence[Tensor], objective: str = "minimize"
) -> list[Tensor]:
    """The direction the base optimizer steps along, from g = ∇L(w) and g' = ∇L(w ± ê).

    ``minimize`` (SAM/ASAM) and ``maximize_neg`` ("negative ρ"): ``g'``.
    ``maximize`` (000 eq. 8 to first order, ê constant): ∇[2L(w) − L(w+ê)] = ``2 g − g'``.
    """
    _validate_choice(objective, OBJECTIVES, f"{_SHARPNESS_KEY}.objective")
    if objective == "maximize":
        return [2.0 * g - gp for g, gp in zip(grad_w, grad_perturbed, strict=True)]
    return [gp for gp in grad_perturbed]


@contextmanager
def perturbed(
    params: Sequence[Tensor],
    e: Sequence[Tensor],
    sign: float = 1.0,
    saved: Sequence[Tensor] | None = None,
) -> Iterator[None]:
    """Move ``params`` to ``w + sign·ê`` inside the block; restore ``w`` bit-identically on exit.

    ``w`` is saved as a copy and copied back (also when the block raises): restoring by
    subtraction ``(w + ê) − ê`` is not exact in floating point. ``saved``: optional preallocated
    buffers (one per parameter, same shape/dtype/device) for that copy, reused across steps.
    """
    params, e = list(params), list(e)
    if len(params) != len(e):
        raise ValueError(f"got {len(params)} params but {len(e)} perturbations")
    fused = bool(params) and _foreach_ok(params, e)
    with torch.no_grad():
        if saved is None:
            saved = [p.detach().clone() for p in params]
        elif fused and _foreach_ok(params, saved):
            torch._foreach_copy_(list(saved), params)
        else:
            for buf, p in zip(saved, params, strict=True):
                buf.copy_(p)
        if fused:
            torch._foreach_add_(params, e, alpha=sign)
        else:
            for p, ei in zip(params, e, strict=True):
                p.add_(ei, alpha=sign)
    del e  # ê is not needed for the exact restore; let it be freed inside the block
    try:
        yield
    finally:
        with torch.no_grad():
            if fused:
                torch._foreach_copy_(params, list(saved))
            else:
                for p, w in zip(params, saved, strict=True):
                    p.copy_(w)


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def running_stat_modules(module: nn.Module) -> list[nn.Module]:
    """Normalisation layers of ``module`` that update running statistics in train mode.

    All ``torch.nn`` BatchNorm variants (incl. SyncBatchNorm, lazy ones) and InstanceNorm with
    ``track_running_stats=True``.
    """
    return [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]


@contextmanager
def frozen_running_stats(
    modules: nn.Module | Sequence[nn.Module] | None, store: dict[int, Tensor] | None = None
) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged by the forward passes inside the block.

    SAM's second pass must not update ``running_mean``/``running_var``/``num_batches_tracked``
    a second time (SPEC §1). They are saved and copied back on exit (bit-exact, and correct for
    ``momentum=None`` cumulative averaging, where setting momentum to 0 would not be).
    Normalisation in train mode still uses the batch statistics, so gradients are unaffected.
    ``modules``: a module (searched with :func:`running_stat_modules`) or a list of layers.
    ``store``: optional scratch buffers for the saved copies, kept and reused across calls (the
    callback passes one, so a step allocates nothing).
    """
    if modules is None:
        layers: list[nn.Module] = []
    elif isinstance(modules, nn.Module):
        layers = running_stat_modules(modules)
    else:
        layers = list(modules)
    live = [
        buf
        for layer in layers
        for name in _RUNNING_STATS
        if isinstance(buf := getattr(layer, name, None), Tensor)
        and not isinstance(buf, nn.parameter.UninitializedBuffer)
    ]
    saved = [b.clone() for b in live] if store is None else _copy_into(store, live)
    try:
        yield
    finally:
        if live:
            with torch.no_grad():
                torch._foreach_copy_(live, saved)  # one fused call (mixed dtypes are fine)


def sharpness_aware_grad(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    rho: float,
    *,
    objective: str = "minimize",
    adaptive: bool = False,
    eta: float = 0.0,
    flags: Sequence[bool] | None = None,
    masks: Sequence[Tensor | None] | None = None,
    module: nn.Module | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Sharpness-aware gradient of ``loss_fn`` w.r.t. ``params``, without touching ``.grad``.

    1. ``L = loss_fn()`` at w, ``g = ∂L/∂params`` (torch.autograd.grad; unused params get 0),
       masked by ``masks`` if given;
    2. ê = :func:`perturbation` (SAM, or ASAM when ``adaptive``);
    3. ``g' = ∂loss_fn()/∂params`` at ``w + ê`` (``w − ê`` for ``objective="maximize_neg"``),
       with ``module``'s BatchNorm running statistics frozen; ``w`` restored bit-identically;
    4. return ``(L.detach(), d)`` with d = :func:`step_direction` (``g'``, or ``2g − g'`` for
       ``"maximize"``, 000 eq. 8), multiplied by ``masks`` if given.

    ``loss_fn`` must evaluate the same mini-batch both times (it runs the forward pass). The
    caller steps with ``d`` (e.g. writes it into ``.grad`` and calls its optimizer). For Sharp
    MinMax: ``objective="minimize"`` on α·CE(R) with the retain mask and ``"maximize"`` on
    −(1−α)·CE(F) with the forget mask, then add the two directions.
    """
    objective = _validate_choice(objective, OBJECTIVES, f"{_SHARPNESS_KEY}.objective")
    params = list(params)

    def grads_of(loss: Tensor) -> list[Tensor]:
        found = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]

    def masked(tensors: list[Tensor]) -> list[Tensor]:
        if masks is None:
            return tensors
        return [t if m is None else t * m for t, m in zip(tensors, masks, strict=True)]

    with torch.enable_grad():
        loss = loss_fn()
        g = masked(grads_of(loss))
    e = perturbation(params, g, rho, adaptive=adaptive, eta=eta, flags=flags)
    sign = -1.0 if objective == "maximize_neg" else 1.0
    with perturbed(params, e, sign), frozen_running_stats(module), torch.enable_grad():
        g_perturbed = grads_of(loss_fn())
    return loss.detach(), masked(step_direction(g, g_perturbed, objective))


# --------------------------------------------------------------------------- Lightning plumbing

_MISSING = object()
_LOG_METHODS = ("log", "log_dict")


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log``/``log_dict`` during SAM's second pass."""


def _metric_modules(module: nn.Module) -> list[Metric]:
    return [m for m in module.modules() if isinstance(m, Metric)]


@contextmanager
def _first_pass_only_logging(module: nn.Module, metrics: Sequence[Metric]) -> Iterator[None]:
    """Make the block invisible to logging: SPEC §1, metrics come from the first pass only.

    ``module.log``/``module.log_dict`` become no-ops (also for callbacks logging through the
    module in ``on_after_backward`` etc.), and the states of torchmetrics ``Metric`` submodules
    (updated by e.g. ``self.acc(preds, y)`` in ``training_step``) are restored on exit
    (:func:`callbacks.lightning_compat.metric_state`).
    """
    saved_metrics = [(metric, compat.metric_state(metric)) for metric in metrics]
    saved_attrs = {name: module.__dict__.get(name, _MISSING) for name in _LOG_METHODS}
    for name in _LOG_METHODS:
        object.__setattr__(module, name, _no_log)
    try:
        yield
    finally:
        for name, value in saved_attrs.items():
            if value is _MISSING:
                object.__delattr__(module, name)
            else:
                object.__setattr__(module, name, value)
        for metric, state in saved_metrics:
            compat.restore_metric_state(metric, state)


def _ddp_model(trainer: pl.Trainer) -> DistributedDataParallel | None:
    model = trainer.strategy.model
    return model if isinstance(model, DistributedDataParallel) else None


def _average_across_replicas(tensors: list[Tensor], ddp: DistributedDataParallel) -> None:
    """In-place mean over DDP replicas (one flat all-reduce when all tensors share a dtype)."""
    import torch.distributed as dist

    group = getattr(ddp, "process_group", None)
    world = dist.get_world_size(group)
    if len({t.dtype for t in tensors}) == 1 and len({t.device for t in tensors}) == 1:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for t, chunk in zip(tensors, torch.split(flat, [t.numel() for t in tensors]), strict=True):
            t.copy_(chunk.view_as(t))
        return
    for t in tensors:
        dist.all_reduce(t, group=group)
        t.div_(world)


def _buffers(store: dict[int, Tensor], params: Sequence[Tensor]) -> list[Tensor]:
    """Scratch tensors shaped like ``params``, kept in ``store`` and reused across steps.

    Reusing them instead of allocating a model-sized copy every step keeps the allocator (and on
    CPUs the kernel's page faults) out of the step time.
    """
    out = []
    for p in params:
        buf = store.get(id(p))
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = torch.empty_like(p, requires_grad=False)
            store[id(p)] = buf
        out.append(buf)
    return out


@torch.no_grad()
def _copy_into(store: dict[int, Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
    """Copies of ``tensors`` in the reusable buffers of ``store``."""
    bufs = _buffers(store, tensors)
    if bufs:
        torch._foreach_copy_(bufs, list(tensors))  # groups by device and dtype itself
    return bufs


@torch.no_grad()
def maximisation_gradient(params: Sequence[Tensor], grad_w: Sequence[Tensor]) -> None:
    """First-order sharpness maximisation (000 eq. 8): after the second pass has left g' = ∇L(w +
    ê) in ``.grad``, set ``.grad`` to 2g − g' with g = ∇L(w) from ``grad_w``, in place."""
    for p, g in zip(params, grad_w, strict=True):
        if p.grad is None:
            p.grad = g * 2.0
        else:
            p.grad.neg_().add_(g, alpha=2.0)


_UNSUPPORTED_STRATEGIES = (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, XLAStrategy)


class SharpnessAwareCallback(Callback):
    r"""Turns the base optimizer's step of *any* LightningModule into a sharpness-aware step.

    Works with automatic optimization (one optimizer) on single-device and DDP strategies; the
    module's code does not know about it (SPEC §1). Use a subclass: :class:`SAM`,
    :class:`ASAM`, :class:`SharpnessMax` (or :func:`from_mode`).

    Per optimizer step, on the same mini-batch:

    1. first pass: Lightning's closure (``training_step`` + ``zero_grad`` + ``backward``) gives
       ``g = ∇L(w)``. Under DDP it runs inside ``no_sync()`` -- forward *and* backward, since
       DDP decides at forward time whether the backward all-reduces -- so each replica perturbs
       with its own gradient (m-sharpness, Foret et al. §4.1 with m = per-device batch);
    2. ``ê`` = :func:`perturbation` over the optimizer's parameters that have a gradient;
    3. second pass at ``w + ê`` (``w − ê`` for ``negative_rho``): the closure again (gradients
       synchronised under DDP), with BatchNorm running statistics restored afterwards, ``log`` /
       ``log_dict`` silenced and torchmetrics states restored, so metrics come from the first
       pass; the loss returned to Lightning (progress bar, ``on_train_batch_end`` outputs) is the
       first pass's ``L(w)``;
    4. ``w`` restored bit-identically; the gradient becomes the step direction (``g'``, or
       ``2g − g'`` for first-order sharpness maximisation, with ``g`` averaged over replicas under
       DDP so all replicas take the same step);
    5. Lightning's precision plugin runs ``on_before_optimizer_step`` and **gradient clipping on
       that final direction** (so ``trainer.gradient_clip_val`` works), then the torch optimizer
       steps once: LR schedulers, AMP's grad scaler and checkpoints act on the base optimizer.

    Refused with a clear error: ``trainer.accumulate_grad_batches > 1`` (the second pass needs
    the whole batch again), manual optimization, and the DeepSpeed/FSDP/model-parallel/XLA
    strategies (sharded or fused steps the callback cannot re-run). After the first training
    batch the callback checks that its wrapped step ran
    (:func:`callbacks.lightning_compat.check_step_routed`), so a Lightning version that routes
    steps elsewhere stops the fit instead of training without SAM; a module whose own
    ``optimizer_step`` hook skips ``optimizer.step`` on the very first batch is refused too.

    Memory: ê is computed in place in the first pass's ``.grad`` tensors; ``w`` is saved in one
    model-sized buffer kept for the whole fit (reused each step, freed at the end), plus one more
    for ``g`` with first-order sharpness maximisation.

    ``training_step`` runs twice per step on the same batch, so it must define the same
    objective both times: draw randomness that defines it (e.g. random relabelling) outside
    ``training_step`` or seed it by batch; dropout redraws its masks, as in every SAM code.

    Args:
        rho: neighbourhood radius ρ > 0 (config ``optim.sharpness.rho``; top-level ``rho``
            overrides the unlearning optimizer's).
        objective: ``"minimize"`` (SAM/ASAM), ``"maximize"`` (000 eq. 8, ``2g − g'``) or
            ``"maximize_neg"`` (step with ``∇L(w − ê)``).
        adaptive: ASAM's scale-invariant perturbation ``T_w = |w| + η``.
        eta: ASAM's η ≥ 0 (ignored unless ``adaptive``).
        adaptive_params: ``"weight"`` (official ASAM) or ``"all"`` (davda54/sam); see
            :func:`adaptive_flags`.
    """

    def __init__(
        self,
        rho: float,
        *,
        objective: str = "minimize",
        adaptive: bool = False,
        eta: float = 0.0,
        adaptive_params: str = "weight",
    ) -> None:
        super().__init__()
        self.rho = _validate_rho(rho)
        self.objective = _validate_choice(objective, OBJECTIVES, f"{_SHARPNESS_KEY}.objective")
        self.adaptive = _validate_bool(adaptive, f"{_SHARPNESS_KEY}.adaptive")
        self.eta = _validate_eta(eta)
        self.adaptive_params = _validate_choice(
            adaptive_params, ADAPTIVE_PARAMS, f"{_SHARPNESS_KEY}.adaptive_params"
        )
        self._restore_step: Callable[[], None] | None = None
        self._step_ran = False  # whether the installed step ran (checked after the first batch)
        self._routing_checked = False
        self._flags: dict[int, bool] = {}
        self._norm_layers: list[nn.Module] = []
        self._metrics: list[nn.Module] = []
        self._saved_store: dict[int, Tensor] = {}  # w during the second pass, reused per step
        self._grad_store: dict[int, Tensor] = {}  # g for 2g − g' (sharpness maximisation)
        self._stats_store: dict[int, Tensor] = {}  # BatchNorm running statistics, reused

    # ---- description -------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """One of :data:`MODES`: ``sam``, ``asam``, ``sharpmax``, ``sharpmax_neg``."""
        if self.objective == "maximize":
            return "sharpmax"
        if self.objective == "maximize_neg":
            return "sharpmax_neg"
        return "asam" if self.adaptive else "sam"

    @property
    def sign(self) -> float:
        """+1: perturb to ``w + ê``; −1: to ``w − ê`` (``maximize_neg``)."""
        return -1.0 if self.objective == "maximize_neg" else 1.0

    def __repr__(self) -> str:
        extra = ""
        if self.adaptive:
            extra = f", eta={self.eta}, adaptive_params={self.adaptive_params!r}"
        return (
            f"{type(self).__name__}(rho={self.rho}, objective={self.objective!r}, "
            f"adaptive={self.adaptive}{extra})"
        )

    def gradient(
        self,
        loss_fn: Callable[[], Tensor],
        named_params: Sequence[tuple[str, Tensor]],
        *,
        masks: Sequence[Tensor | None] | None = None,
        module: nn.Module | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """:func:`sharpness_aware_grad` with this callback's ρ, objective and ASAM settings."""
        names = [n for n, _ in named_params]
        return sharpness_aware_grad(
            loss_fn,
            [p for _, p in named_params],
            self.rho,
            objective=self.objective,
            adaptive=self.adaptive,
            eta=self.eta,
            flags=adaptive_flags(names, self.adaptive_params) if self.adaptive else None,
            masks=masks,
            module=module,
        )

    # ---- Lightning hooks ---------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate the trainer set-up and wrap ``trainer.strategy.optimizer_step``."""
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{name} needs automatic optimization, but {type(pl_module).__name__} sets "
                "`automatic_optimization = False`. With manual optimization compute the step "
                "with callbacks.sharpness.sharpness_aware_grad in training_step instead."
            )
        self._check_accumulation(trainer)
        if isinstance(trainer.strategy, _UNSUPPORTED_STRATEGIES):
            raise ValueError(
                f"{name} supports single-device and DDP strategies; got "
                f"trainer.strategy={type(trainer.strategy).__name__}."
            )
        names = {id(p): n for n, p in pl_module.named_parameters()}
        flags = adaptive_flags(list(names.values()), self.adaptive_params)
        self._flags = dict(zip(names.keys(), flags, strict=True))
        self._norm_layers = running_stat_modules(pl_module)
        self._metrics = _metric_modules(pl_module)
        self._install(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._uninstall()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall()

    # ---- the wrapped step --------------------------------------------------------------

    def _check_accumulation(self, trainer: pl.Trainer) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"{type(self).__name__} (sharpness-aware optimisation) re-runs the step's batch "
                "at the perturbed weights and cannot be combined with gradient accumulation: "
                f"set trainer.accumulate_grad_batches=1 (got {trainer.accumulate_grad_batches})."
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After the first batch: check that Lightning ran the installed step (a loud error, not
        a fit that silently trains without SAM, if a Lightning upgrade reroutes the step)."""
        if not self._routing_checked:
            self._routing_checked = True
            compat.check_step_routed(self._step_ran, type(self).__name__)

    def _install(self, trainer: pl.Trainer) -> None:
        """Wrap ``trainer.strategy.optimizer_step`` (``compat.install_optimizer_step``)."""
        strategy = trainer.strategy
        base_step = strategy.optimizer_step
        if isinstance(getattr(base_step, "sharpness_callback", None), SharpnessAwareCallback):
            raise ValueError(
                "only one sharpness-aware callback (SAM/ASAM/SharpnessMax) per Trainer; got "
                f"{base_step.sharpness_callback!r} and {self!r}"
            )
        self._uninstall()

        def optimizer_step(
            optimizer: torch.optim.Optimizer,
            closure: Callable[[], Any],
            model: Any = None,
            **kwargs: Any,
        ) -> Any:
            self._step_ran = True
            return self._sharpness_step(trainer, base_step, optimizer, closure, model, **kwargs)

        optimizer_step.sharpness_callback = self  # type: ignore[attr-defined]
        self._step_ran = self._routing_checked = False
        self._restore_step = compat.install_optimizer_step(strategy, optimizer_step)

    def _uninstall(self) -> None:
        self._saved_store.clear()
        self._grad_store.clear()
        self._stats_store.clear()
        restore, self._restore_step = self._restore_step, None
        if restore is not None:
            restore()

    def _first_pass_context(self, trainer: pl.Trainer) -> AbstractContextManager[Any]:
        ddp = _ddp_model(trainer)
        return ddp.no_sync() if ddp is not None else nullcontext()

    def _sharpness_step(
        self,
        trainer: pl.Trainer,
        base_step: Callable[..., Any],
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], Any],
        model: Any,
        **kwargs: Any,
    ) -> Any:
        """Two passes on one batch, then ``base_step`` (the strategy's own optimizer_step)."""
        self._check_accumulation(trainer)
        with self._first_pass_context(trainer):
            first_loss = closure()
        first_result = compat.closure_result(closure)  # None unless Lightning's own closure
        params = [p for group in optimizer.param_groups for p in group["params"]]
        params = [p for p in params if p.grad is not None]
        if first_loss is None or not params:
            # training_step returned None (skipped step) or nothing to perturb: plain step.
            return base_step(optimizer, lambda: first_loss, model, **kwargs)

        grads = [p.grad for p in params]
        grad_w: list[Tensor] | None = None
        if self.objective == "maximize":  # keep g for 2g − g'
            grad_w = _copy_into(self._grad_store, grads)
            ddp = _ddp_model(trainer)
            if ddp is not None and trainer.world_size > 1:
                _average_across_replicas(grad_w, ddp)
        # ê is written into the first pass's .grad tensors (no allocation); the second pass's
        # zero_grad discards them.
        pending = [
            perturbation(
                params,
                grads,
                self.rho,
                adaptive=self.adaptive,
                eta=self.eta,
                flags=[self._flags.get(id(p), False) for p in params] if self.adaptive else None,
                inplace=True,
            )
        ]
        del grads
        saved = _buffers(self._saved_store, params)
        pl_module = trainer.lightning_module

        def second_pass() -> Any:
            with (
                perturbed(params, pending.pop(), self.sign, saved=saved),
                frozen_running_stats(self._norm_layers, self._stats_store),
                _first_pass_only_logging(pl_module, self._metrics),
            ):
                closure()
            if grad_w is not None:
                maximisation_gradient(params, grad_w)
            compat.set_closure_result(closure, first_result)  # outputs, logged loss: 1st pass
            return first_loss

        return base_step(optimizer, second_pass, model, **kwargs)


class SAM(SharpnessAwareCallback):
    """SAM (Foret et al. 2021): ``ê = ρ g/‖g‖₂``, step with ``∇L(w + ê)`` (SPEC §1).

    Args:
        rho: ρ > 0; the paper's default 0.1 (000 §4, App. C.1).
    """

    def __init__(self, rho: float = 0.1) -> None:
        super().__init__(rho, objective="minimize")


class ASAM(SharpnessAwareCallback):
    """ASAM (Kwon et al. 2021): ``ê = ρ T_w² g/‖T_w g‖₂``, ``T_w = |w| + η``, step with ``∇L(w+ê)``.

    Default follows the official ASAM code: η = 0.01 on parameters named ``*weight*``, ``T_w = 1``
    elsewhere. ``eta=0, adaptive_params="all"`` is davda54/sam's ``adaptive=True``.

    Args:
        rho: ρ > 0; 000 uses 0.1 and 1.0 (default 1.0, App. C.1).
        eta: η ≥ 0.
        adaptive_params: ``"weight"`` or ``"all"`` (:func:`adaptive_flags`).
    """

    def __init__(
        self, rho: float = 1.0, eta: float = 0.01, adaptive_params: str = "weight"
    ) -> None:
        super().__init__(
            rho, objective="minimize", adaptive=True, eta=eta, adaptive_params=adaptive_params
        )


class SharpnessMax(SharpnessAwareCallback):
    """Sharpness maximisation (000 eq. 8, after Kim et al. 2023): min ``2L(w) − L(w + ê)``.

    ``variant="first_order"`` steps along ``2g − g'`` (ê held constant, as SAM does);
    ``variant="negative_rho"`` steps along ``∇L(w − ê)`` ("SAM with negative ρ"). ê is SAM's, or
    ASAM's with ``adaptive=True``. Used by the forget part of Sharp MinMax (000 §3.2).

    Args:
        rho: ρ > 0 (default 0.1, as SAM in 000).
        variant: ``"first_order"`` or ``"negative_rho"``.
        adaptive, eta, adaptive_params: ASAM-shaped ê, see :class:`ASAM`.
    """

    def __init__(
        self,
        rho: float = 0.1,
        variant: str = "first_order",
        adaptive: bool = False,
        eta: float = 0.01,
        adaptive_params: str = "weight",
    ) -> None:
        variant = _validate_choice(variant, VARIANTS, f"{_SHARPNESS_KEY}.variant")
        super().__init__(
            rho,
            objective="maximize" if variant == "first_order" else "maximize_neg",
            adaptive=adaptive,
            eta=eta,
            adaptive_params=adaptive_params,
        )

    @property
    def variant(self) -> str:
        return "first_order" if self.objective == "maximize" else "negative_rho"


def from_mode(mode: str, **kwargs: Any) -> SharpnessAwareCallback:
    """Build the callback for ``mode`` in :data:`MODES` (``sam | asam | sharpmax | sharpmax_neg``).

    ``kwargs`` go to the class (e.g. ``rho``, ``eta``); unknown modes raise ``ValueError``.
    """
    mode = _validate_choice(mode, MODES, f"{_SHARPNESS_KEY}.mode")
    if mode == "sam":
        return SAM(**kwargs)
    if mode == "asam":
        return ASAM(**kwargs)
    variant = "first_order" if mode == "sharpmax" else "negative_rho"
    return SharpnessMax(variant=variant, **kwargs)
