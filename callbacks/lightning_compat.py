"""Every Lightning and torchmetrics internal the framework touches, each behind a guarded accessor.

Lightning's public API does not offer everything two features need: the sharpness-aware step
(:mod:`callbacks.sharpness`, SPEC §1: two passes inside one optimizer step, metrics and outputs
from the first) and the cheap logging path of :class:`unlearning.methods.UnlearningMethod` (bench
item 2: skip ``self.log`` on steps whose values no logger sees). What they use beyond the public
API -- private attributes, private module paths, the route a step takes through the trainer --
is reached only through this module. A Lightning or torchmetrics upgrade that moves one of them
therefore fails *here*, loudly, with :class:`LightningInternalError` naming the internal, the
installed versions and the ones it was checked on; it never silently changes a SAM step or the
logs, and code elsewhere never spells a private Lightning name.

:data:`INTERNALS` lists them with who relies on them and what would go wrong without them. They
are checked

* at import time, where no live trainer is needed (:func:`check_import_time`): the ``Closure``
  and ``ClosureResult`` classes, the parameters of ``Strategy.optimizer_step``, the logger
  connector's ``should_update_logs`` property, ``LightningModule._current_fx_name``;
* at first use, where the internal only exists on live objects: ``Closure._result`` after a
  call (:func:`closure_result`), ``LightningModule._trainer`` and ``Trainer._logger_connector``
  (:func:`logs_this_step`), torchmetrics' state bookkeeping (:func:`metric_state`), and that
  Lightning really routes the optimizer step through ``strategy.optimizer_step``
  (:func:`check_step_routed`).

``tests/callbacks/test_lightning_compat.py`` checks each internal's shape on the installed
versions and that each guard raises when the internal is taken away. This package imports
nothing from ``unlearning/``; ``unlearning/`` imports this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning
import torchmetrics
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import Strategy
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "CHECKED_ON",
    "HOOK_NAME_ATTRIBUTE",
    "INTERNALS",
    "METRIC_BOOKKEEPING",
    "Internal",
    "LightningInternalError",
    "check_hook_name",
    "check_import_time",
    "check_logger_connector",
    "check_step_routed",
    "check_step_signature",
    "closure_classes",
    "closure_result",
    "free_network_port",
    "install_optimizer_step",
    "logs_this_step",
    "metric_state",
    "restore_metric_state",
    "set_closure_result",
]

CHECKED_ON: dict[str, str] = {"lightning": "2.6.6", "torchmetrics": "1.9.0"}
"""The versions every internal below was read in and tested against."""


@dataclass(frozen=True)
class Internal:
    """One internal: where it lives, which framework code relies on it, and what happens without.

    Attributes:
        name: the internal, spelled as in the library's source.
        used_by: the framework code that relies on it, and why.
        if_missing: what would change if it moved and nobody noticed (why the guard raises).
    """

    name: str
    used_by: str
    if_missing: str


INTERNALS: dict[str, Internal] = {
    "closure": Internal(
        "lightning.pytorch.loops.optimization.automatic.Closure / ClosureResult",
        "callbacks.sharpness: recognises the closure Lightning hands to the optimizer step",
        "SAM's step could not tell Lightning's closure apart and would report the second pass",
    ),
    "closure_result": Internal(
        "lightning.pytorch.loops.optimization.automatic.Closure._result",
        "callbacks.sharpness: after SAM's second pass it puts the first pass's ClosureResult "
        "back, so on_train_batch_end outputs and the logged loss are L(w), not L(w + ê)",
        "training outputs and the progress-bar loss would silently come from the perturbed pass",
    ),
    "optimizer_step": Internal(
        "lightning.pytorch.strategies.Strategy.optimizer_step(optimizer, closure, model, "
        "**kwargs), called by LightningOptimizer.step for every automatic-optimization step",
        "callbacks.sharpness: replaces it on the trainer's strategy instance to run two passes",
        "the sharpness-aware wrapper would never run and every SAM/ASAM/SharpMax fit would "
        "silently train with the plain base optimizer",
    ),
    "metric_state": Internal(
        "torchmetrics.Metric._defaults (state names), _update_count, _computed, _forward_cache",
        "callbacks.sharpness: snapshots and restores torchmetrics states around SAM's second "
        "pass, so metrics count each batch once",
        "metrics updated in training_step would count every batch twice under SAM",
    ),
    "hook_name": Internal(
        "lightning.pytorch.LightningModule._current_fx_name, written by "
        "lightning.pytorch.trainer.call around every hook",
        "unlearning.methods.UnlearningMethod.__setattr__: sets it without nn.Module's checks "
        "(~45 writes a training step, ~0.2 ms a step on a small model, bench item 2)",
        "the fast path would be dead code: same numbers, slower steps, and a stale comment",
    ),
    "logger_connector": Internal(
        "lightning.pytorch.LightningModule._trainer and "
        "lightning.pytorch.Trainer._logger_connector.should_update_logs",
        "unlearning.methods.UnlearningMethod._logs_this_step: logs only on the steps whose "
        "values reach the loggers (every trainer.log_every_n_steps; as LearningRateMonitor does)",
        "UnlearningMethod could not tell which steps are logged",
    ),
    "free_network_port": Internal(
        "lightning.fabric.plugins.environments.lightning.find_free_network_port (a module path "
        "lightning.fabric.plugins.environments does not re-export)",
        "unlearning.pipeline.distributed: picks the rendezvous port of the ranks it starts",
        "multi-process jobs could not start",
    ),
}
"""Every internal the framework touches, keyed by the id :class:`LightningInternalError` takes."""


class LightningInternalError(RuntimeError):
    """A Lightning/torchmetrics internal the framework relies on is missing or has a new shape.

    The message names the internal, what is wrong, the installed and the checked versions, and
    what the framework would get wrong without it.
    """

    def __init__(self, key: str, problem: str) -> None:
        internal = INTERNALS[key]
        self.key = key
        super().__init__(
            f"{internal.name}: {problem}. Installed: lightning {lightning.__version__}, "
            f"torchmetrics {torchmetrics.__version__}; checked on lightning "
            f"{CHECKED_ON['lightning']}, torchmetrics {CHECKED_ON['torchmetrics']}. Used by "
            f"{internal.used_by}; without it {internal.if_missing}. Adapt "
            "callbacks/lightning_compat.py to this version or install the checked ones."
        )


# --------------------------------------------------------------------------- the step's closure


def closure_classes() -> tuple[type, type]:
    """Lightning's automatic-optimization ``Closure`` and the ``ClosureResult`` it stores.

    ``Closure.__call__`` runs ``training_step`` + ``zero_grad`` + ``backward``, stores their
    ``ClosureResult`` (loss, outputs) in ``_result`` and returns the loss; the training loop
    reads ``_result`` after the optimizer step (``consume_result``). Raises
    :class:`LightningInternalError` when the module or a class moved.
    """
    try:
        from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult
    except ImportError as exc:
        raise LightningInternalError("closure", f"cannot be imported ({exc})") from None
    return Closure, ClosureResult


_CLOSURE, _CLOSURE_RESULT = closure_classes()


def closure_result(closure: Callable[[], Any]) -> Any | None:
    """The ``ClosureResult`` a called Lightning ``Closure`` stored, or ``None`` for any other
    callable (a closure Lightning did not make carries no result to keep).

    First-use guard: a called ``Closure`` must hold a ``ClosureResult`` in ``_result``; if
    Lightning stopped storing it there, :class:`LightningInternalError` is raised instead of
    silently reporting SAM's second pass.
    """
    if not isinstance(closure, _CLOSURE):
        return None
    result = getattr(closure, "_result", None)
    if not isinstance(result, _CLOSURE_RESULT):
        raise LightningInternalError(
            "closure_result",
            f"a called Closure holds {type(result).__name__} in `_result`, not a ClosureResult",
        )
    return result


def set_closure_result(closure: Callable[[], Any], result: Any) -> None:
    """Store ``result`` (from :func:`closure_result`) back into a Lightning ``Closure``; what the
    training loop then reads as the step's outputs. A no-op for ``result=None``."""
    if result is not None:
        closure._result = result  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the optimizer step

_STEP_PARAMETERS = ("self", "optimizer", "closure", "model")


def check_step_signature(strategy_class: type = Strategy) -> None:
    """Import-time guard: ``optimizer_step(self, optimizer, closure, model=None, **kwargs)``.

    The sharpness-aware wrapper takes and forwards exactly these arguments; a strategy whose
    step takes others would be called wrongly.
    """
    step = getattr(strategy_class, "optimizer_step", None)
    if not callable(step):
        raise LightningInternalError("optimizer_step", f"{strategy_class.__name__} has none")
    params = list(inspect.signature(step).parameters.values())
    names = tuple(p.name for p in params[: len(_STEP_PARAMETERS)])
    if names != _STEP_PARAMETERS or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        raise LightningInternalError(
            "optimizer_step",
            f"its parameters are {[p.name for p in params]}, expected "
            f"{list(_STEP_PARAMETERS)} followed by **kwargs",
        )


_MISSING = object()


def install_optimizer_step(strategy: Strategy, step: Callable[..., Any]) -> Callable[[], None]:
    """Make ``step`` the ``optimizer_step`` of this ``strategy`` instance (not of its class).

    Lightning's ``LightningOptimizer.step`` calls ``strategy.optimizer_step(optimizer, closure,
    **kwargs)`` for every automatic-optimization step, so an instance attribute intercepts every
    step of this trainer only. Read ``strategy.optimizer_step`` *before* calling this to get the
    step to delegate to. Returns a function that undoes the replacement (only while ``step`` is
    still installed, restoring whatever instance attribute was there before); whether the route
    is still taken is checked by :func:`check_step_routed`.
    """
    previous = strategy.__dict__.get("optimizer_step", _MISSING)
    strategy.optimizer_step = step  # type: ignore[method-assign]

    def restore() -> None:
        if strategy.__dict__.get("optimizer_step") is not step:
            return
        if previous is _MISSING:
            del strategy.optimizer_step
        else:
            strategy.optimizer_step = previous  # type: ignore[method-assign]

    return restore


def check_step_routed(ran: bool, who: str) -> None:
    """First-use guard, called once the first training batch has ended: ``ran`` tells whether
    the step installed by :func:`install_optimizer_step` was called for it.

    If Lightning stops routing steps through ``strategy.optimizer_step`` the wrapper is skipped
    and the fit would silently train with the plain base optimizer; this raises instead.
    """
    if not ran:
        raise LightningInternalError(
            "optimizer_step",
            f"the first training batch ended without calling the optimizer_step that {who} "
            "installed on trainer.strategy, so Lightning no longer routes steps through it",
        )


# --------------------------------------------------------------------------- torchmetrics states

METRIC_BOOKKEEPING: tuple[str, ...] = ("_update_count", "_computed", "_forward_cache")
"""Private ``Metric`` attributes that change with ``update``/``forward`` besides the states."""


def _copy_state(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, list):
        return list(value)
    return value


def metric_state(metric: Metric) -> dict[str, Any]:
    """A copy of everything ``update``/``forward`` change on a torchmetrics ``Metric``: its
    registered states (``add_state``, listed in ``_defaults``) and :data:`METRIC_BOOKKEEPING`.

    First-use guard: raises :class:`LightningInternalError` when ``_defaults`` is not a dict or
    a listed attribute is missing (restoring a partial state would count a batch twice).
    """
    defaults = getattr(metric, "_defaults", None)
    if not isinstance(defaults, dict):
        raise LightningInternalError(
            "metric_state", f"{type(metric).__name__}._defaults is {type(defaults).__name__}"
        )
    state = {}
    for name in (*defaults, *METRIC_BOOKKEEPING):
        if not hasattr(metric, name):
            raise LightningInternalError(
                "metric_state", f"{type(metric).__name__} has no attribute {name!r}"
            )
        state[name] = _copy_state(getattr(metric, name))
    return state


def restore_metric_state(metric: Metric, state: dict[str, Any]) -> None:
    """Put a :func:`metric_state` copy back (bypassing ``nn.Module.__setattr__``, as torchmetrics'
    own ``reset`` does not need to re-register anything)."""
    for name, value in state.items():
        object.__setattr__(metric, name, value)


# --------------------------------------------------------------------------- module attributes

HOOK_NAME_ATTRIBUTE = "_current_fx_name"
"""The ``LightningModule`` attribute Lightning sets to the running hook's name around every hook
call (``lightning.pytorch.trainer.call``); a plain attribute, never a parameter or module."""


def check_hook_name(module_class: type = LightningModule) -> None:
    """Import-time guard: a fresh ``LightningModule`` holds :data:`HOOK_NAME_ATTRIBUTE` = None."""
    module = module_class()
    if HOOK_NAME_ATTRIBUTE not in vars(module) or vars(module)[HOOK_NAME_ATTRIBUTE] is not None:
        raise LightningInternalError(
            "hook_name", f"a new {module_class.__name__} has no {HOOK_NAME_ATTRIBUTE} = None"
        )


def check_logger_connector() -> None:
    """Import-time guard: the trainer's logger connector class has a ``should_update_logs``
    property (the instance is checked at first use by :func:`logs_this_step`)."""
    try:
        from lightning.pytorch.trainer.connectors.logger_connector import _LoggerConnector
    except ImportError as exc:
        raise LightningInternalError("logger_connector", f"cannot be imported ({exc})") from None
    if not isinstance(getattr(_LoggerConnector, "should_update_logs", None), property):
        raise LightningInternalError(
            "logger_connector", "_LoggerConnector.should_update_logs is not a property"
        )


def logs_this_step(module: LightningModule) -> bool:
    """Whether the trainer writes the current training step's logged values to its loggers.

    Lightning's own rule (``_LoggerConnector.should_update_logs``: every
    ``log_every_n_steps`` optimizer steps, and the last step before a stop), as its
    ``LearningRateMonitor`` reads it. ``True`` without a trainer (a bare call in a test), so
    everything is logged there. First-use guard: a module without ``_trainer``, or an attached
    trainer without ``_logger_connector.should_update_logs``, raises
    :class:`LightningInternalError` instead of logging every step.
    """
    try:
        trainer = module._trainer
    except AttributeError:
        raise LightningInternalError(
            "logger_connector", f"{type(module).__name__} has no `_trainer`"
        ) from None
    if trainer is None:
        return True
    try:
        return bool(trainer._logger_connector.should_update_logs)
    except AttributeError as exc:
        raise LightningInternalError("logger_connector", f"unreadable ({exc})") from None


# --------------------------------------------------------------------------- fabric


def free_network_port() -> int:
    """A free TCP port on this host, as Lightning's own launcher picks one (first use guarded)."""
    try:
        from lightning.fabric.plugins.environments.lightning import find_free_network_port
    except ImportError as exc:
        raise LightningInternalError("free_network_port", f"cannot be imported ({exc})") from None
    return int(find_free_network_port())


# --------------------------------------------------------------------------- import-time checks


def check_import_time() -> None:
    """Every guard that needs no live trainer; run when this module is imported."""
    closure_classes()
    check_step_signature()
    check_hook_name()
    check_logger_connector()


check_import_time()
