"""The Lightning/torchmetrics internals of callbacks/lightning_compat.py: present with the shape
the framework relies on (on the installed versions), and each guard raises when one is taken away.

A Lightning or torchmetrics upgrade that moves an internal makes these tests fail by name, and
the framework itself raise ``LightningInternalError``, rather than change SAM or logging quietly.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import lightning_compat as compat
from callbacks.sharpness import SAM

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        yield


class Probe(pl.LightningModule):
    """A tiny module that records what the compat accessors see during a fit."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 2)
        self.acc = torchmetrics.SumMetric()
        self.logged: list[bool] = []
        self.hooks: list[str] = []
        self.batch_end_losses: list[float] = []

    def __setattr__(self, name: str, value: Any) -> None:
        if name == compat.HOOK_NAME_ATTRIBUTE and isinstance(value, str):
            self.__dict__.setdefault("hooks", []).append(value)
        super().__setattr__(name, value)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.logged.append(compat.logs_this_step(self))
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.acc.update(loss.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_end_losses.append(float(outputs["loss"]))

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g))
        return DataLoader(data, batch_size=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module: pl.LightningModule, callbacks: list[pl.Callback], steps: int = 4) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        log_every_n_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module)
    return trainer


def raises(key: str, match: str = "") -> Any:
    """``pytest.raises`` for the compat error of internal ``key``, checking the message names
    the internal and the installed versions."""
    internal, version = compat.INTERNALS[key].name, lightning.__version__
    return pytest.raises(
        compat.LightningInternalError,
        match=rf"(?s)^{re.escape(internal)}: .*{match}.*lightning {re.escape(version)}",
    )


# --------------------------------------------------------------------- the registry and errors


def test_import_time_checks_pass_on_the_installed_versions() -> None:
    compat.check_import_time()
    assert set(compat.CHECKED_ON) == {"lightning", "torchmetrics"}


def test_the_error_names_internal_versions_consequence_and_the_fix() -> None:
    error = compat.LightningInternalError("metric_state", "something moved")
    text = str(error)
    assert text.startswith(compat.INTERNALS["metric_state"].name + ": something moved.")
    assert f"lightning {lightning.__version__}" in text
    assert f"torchmetrics {torchmetrics.__version__}" in text
    assert f"checked on lightning {compat.CHECKED_ON['lightning']}" in text
    assert "count every batch twice" in text and "callbacks/lightning_compat.py" in text
    assert error.key == "metric_state"


# --------------------------------------------------------------------- Closure and _result


class KeepsResult(pl.Callback):
    """Wraps the step like SAM does and replaces the stored result by a marked copy."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        base = trainer.strategy.optimizer_step

        def step(optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
            loss = closure()
            result = compat.closure_result(closure)
            self.results.append((loss, result))
            marked = type(result)(closure_loss=torch.tensor(42.0))
            compat.set_closure_result(closure, marked)
            return base(optimizer, lambda: loss, model, **kwargs)

        self.restore = compat.install_optimizer_step(trainer.strategy, step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore()


def test_a_called_closure_holds_its_result_and_the_loop_reads_it_back() -> None:
    module, keep = Probe(), KeepsResult()
    trainer = fit(module, [keep], steps=2)
    _, closure_result_class = compat.closure_classes()
    assert len(keep.results) == 2
    for loss, result in keep.results:
        assert isinstance(result, closure_result_class)
        assert torch.equal(result.loss, loss)
    assert module.batch_end_losses == [42.0, 42.0]  # the loop's outputs come from `_result`
    assert "optimizer_step" not in trainer.strategy.__dict__


def test_closure_result_ignores_other_callables() -> None:
    assert compat.closure_result(lambda: None) is None
    compat.set_closure_result(lambda: None, None)  # nothing to store, nothing raised


def test_a_moved_closure_class_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.pytorch.loops.optimization.automatic as automatic

    monkeypatch.delattr(automatic, "Closure")
    with raises("closure", "cannot be imported"):
        compat.closure_classes()


def test_a_closure_that_no_longer_stores_its_result_stops_sam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closure_class, _ = compat.closure_classes()
    monkeypatch.setattr(closure_class, "__call__", lambda self, *a, **k: self.closure().loss)
    with raises("closure_result", "holds NoneType in `_result`"):
        fit(Probe(), [SAM(rho=0.1)], steps=1)


# --------------------------------------------------------------------- strategy.optimizer_step


def test_optimizer_step_has_the_wrapped_signature() -> None:
    compat.check_step_signature()
    names = list(inspect.signature(Strategy.optimizer_step).parameters)
    assert names[:4] == ["self", "optimizer", "closure", "model"] and names[-1] == "kwargs"


def test_a_changed_optimizer_step_signature_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def optimizer_step(self: Any, optimizer: Any, step_fn: Any, **kwargs: Any) -> None: ...

    monkeypatch.setattr(Strategy, "optimizer_step", optimizer_step)
    with raises("optimizer_step", r"expected \['self', 'optimizer', 'closure', 'model'\]"):
        compat.check_step_signature()
    monkeypatch.delattr(Strategy, "optimizer_step")
    with raises("optimizer_step", "Strategy has none"):
        compat.check_step_signature()


def test_install_and_restore_nest() -> None:
    strategy = SimpleNamespace()
    first, second = (lambda *a: 1), (lambda *a: 2)
    undo_first = compat.install_optimizer_step(strategy, first)  # type: ignore[arg-type]
    undo_second = compat.install_optimizer_step(strategy, second)  # type: ignore[arg-type]
    assert strategy.optimizer_step is second
    undo_first()  # not installed any more: leaves the newer step alone
    assert strategy.optimizer_step is second
    undo_second()
    assert strategy.optimizer_step is first
    undo_first()
    assert "optimizer_step" not in vars(strategy)


def test_lightning_routes_every_step_through_the_strategy_instance() -> None:
    calls: list[int] = []

    class Counts(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            base = trainer.strategy.optimizer_step

            def step(*args: Any, **kwargs: Any) -> Any:
                calls.append(trainer.global_step)
                return base(*args, **kwargs)

            compat.install_optimizer_step(trainer.strategy, step)

    fit(Probe(), [Counts()], steps=3)
    assert calls == [0, 1, 2]


def test_a_step_that_bypasses_the_strategy_instance_stops_sam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If Lightning stopped calling ``strategy.optimizer_step`` on the instance, SAM would never
    run; the first batch's end raises instead of training with plain SGD."""
    original = LightningOptimizer.step

    def bypassing_step(self: Any, closure: Any = None, **kwargs: Any) -> Any:
        strategy = self._strategy
        instance_step = strategy.__dict__.pop("optimizer_step", None)
        try:
            return original(self, closure, **kwargs)
        finally:
            if instance_step is not None:
                strategy.optimizer_step = instance_step

    monkeypatch.setattr(LightningOptimizer, "step", bypassing_step)
    with raises("optimizer_step", "first training batch ended without calling"):
        fit(Probe(), [SAM(rho=0.1)], steps=1)


# --------------------------------------------------------------------- torchmetrics states


def test_metric_state_snapshot_restores_states_and_bookkeeping() -> None:
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    state = compat.metric_state(metric)
    assert set(state) == {*metric._defaults, *compat.METRIC_BOOKKEEPING}
    before = float(metric.compute())
    metric.update(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 0]))
    metric(torch.tensor([2]), torch.tensor([2]))  # forward: touches _forward_cache too
    assert metric._update_count == 3
    compat.restore_metric_state(metric, state)
    assert metric._update_count == 1 and metric._forward_cache is None
    assert float(metric.compute()) == before == 0.5


def test_metric_state_copies_tensors_and_lists() -> None:
    metric = torchmetrics.CatMetric()
    metric.update(torch.tensor([1.0]))
    state = compat.metric_state(metric)
    metric.update(torch.tensor([2.0]))
    assert len(state["value"]) == 1  # the list was copied, not shared
    summed = torchmetrics.SumMetric()
    summed.update(torch.tensor(3.0))
    saved = compat.metric_state(summed)
    summed.update(torch.tensor(4.0))
    assert float(saved["sum_value"]) == 3.0  # the tensor was cloned


@pytest.mark.parametrize("name", compat.METRIC_BOOKKEEPING)
def test_missing_metric_bookkeeping_is_reported(name: str) -> None:
    metric = torchmetrics.SumMetric()
    delattr(metric, name)
    with raises("metric_state", f"SumMetric has no attribute '{name}'"):
        compat.metric_state(metric)


def test_a_metric_without_its_state_registry_is_reported() -> None:
    metric = torchmetrics.SumMetric()
    object.__setattr__(metric, "_defaults", None)
    with raises("metric_state", "_defaults is NoneType"):
        compat.metric_state(metric)


def test_sam_restores_metric_states_through_the_compat_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = Probe()
    fit(module, [SAM(rho=0.1)], steps=2)
    assert module.acc._update_count == 2  # two steps, each counted once despite two passes
    monkeypatch.setattr(compat, "METRIC_BOOKKEEPING", ("_no_such_bookkeeping",))
    with raises("metric_state", "_no_such_bookkeeping"):
        fit(Probe(), [SAM(rho=0.1)], steps=1)


# --------------------------------------------------------------------- hook name and logging


def test_lightning_writes_the_hook_name_around_every_hook() -> None:
    module = Probe()
    compat.check_hook_name()
    assert vars(pl.LightningModule())[compat.HOOK_NAME_ATTRIBUTE] is None
    fit(module, [], steps=2)
    assert module.hooks.count("training_step") == 2
    assert {"on_train_batch_start", "optimizer_step", "backward"} <= set(module.hooks)


def test_a_module_without_the_hook_name_is_reported() -> None:
    class Renamed(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            del self.__dict__[compat.HOOK_NAME_ATTRIBUTE]

    with raises("hook_name", "Renamed has no _current_fx_name = None"):
        compat.check_hook_name(Renamed)


def test_logs_this_step_follows_log_every_n_steps() -> None:
    module = Probe()
    assert compat.logs_this_step(module)  # no trainer: everything is logged
    fit(module, [], steps=4)
    assert module.logged == [False, True, False, True]  # log_every_n_steps=2
    compat.check_logger_connector()


def test_a_trainer_without_the_logger_connector_is_reported() -> None:
    module = Probe()
    module._trainer = SimpleNamespace()  # a trainer that lost `_logger_connector`
    with raises("logger_connector", "unreadable"):
        compat.logs_this_step(module)
    module._trainer = SimpleNamespace(_logger_connector=SimpleNamespace())
    with raises("logger_connector", "should_update_logs"):
        compat.logs_this_step(module)
    del module.__dict__["_trainer"]
    with raises("logger_connector", "Probe has no `_trainer`"):
        compat.logs_this_step(module)


def test_a_logger_connector_without_the_property_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning.pytorch.trainer.connectors.logger_connector import _LoggerConnector

    monkeypatch.delattr(_LoggerConnector, "should_update_logs")
    with raises("logger_connector", "not a property"):
        compat.check_logger_connector()


# --------------------------------------------------------------------- fabric's free port


def test_free_network_port_is_a_port() -> None:
    assert 0 < compat.free_network_port() < 65536


def test_a_moved_free_port_function_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.fabric.plugins.environments.lightning as environment

    monkeypatch.delattr(environment, "find_free_network_port")
    with raises("free_network_port", "cannot be imported"):
        compat.free_network_port()


# --------------------------------------------------------------------- nobody else spells them

#: Lightning/torchmetrics private names; only callbacks/lightning_compat.py may use them.
PRIVATE_NAMES = {
    "_result",
    "_trainer",
    "_logger_connector",
    "should_update_logs",
    "_current_fx_name",
    "_defaults",
    "_update_count",
    "_computed",
    "_forward_cache",
    "find_free_network_port",
}
LIBRARY = ("callbacks", "datamodules", "unlearning", "bench", "train.py")


def _private_uses(source: str) -> set[str]:
    """Private Lightning/torchmetrics names or private module paths used by ``source``
    (attributes, names, imports and string constants that are exactly such a name; comments and
    docstrings do not count)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in PRIVATE_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_NAMES:
            found.add(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in {"lightning", "pytorch_lightning", "torchmetrics"}:
                parts = node.module.split(".")
                if any(p.startswith("_") or p in {"loops", "connectors"} for p in parts):
                    found.add(node.module)
                found |= {a.name for a in node.names if a.name.startswith("_")}
                found |= {a.name for a in node.names if a.name in PRIVATE_NAMES}
                if node.module == "lightning.fabric.plugins.environments.lightning":
                    found.add(node.module)
    return found


def test_no_other_module_touches_a_lightning_internal() -> None:
    uses = set()
    for top in LIBRARY:
        paths = [ROOT / top] if top.endswith(".py") else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            rel = path.relative_to(ROOT).as_posix()
            if rel == "callbacks/lightning_compat.py":
                continue
            uses |= {(rel, name) for name in _private_uses(path.read_text())}
    assert uses == set(), "use callbacks/lightning_compat.py for these"


def test_the_scan_finds_what_the_old_sharpness_code_did() -> None:
    old = """
from lightning.pytorch.loops.optimization.automatic import Closure
from lightning.pytorch.trainer.connectors.logger_connector import _LoggerConnector
first = closure._result
names = [*getattr(metric, "_defaults", {}), "_update_count"]
connector = getattr(self._trainer, "_logger_connector", None)
"""
    assert _private_uses(old) == {
        "lightning.pytorch.loops.optimization.automatic",
        "lightning.pytorch.trainer.connectors.logger_connector",
        "_LoggerConnector",
        "_result",
        "_defaults",
        "_update_count",
        "_trainer",
        "_logger_connector",
    }
    assert _private_uses('"""Mentions `_current_fx_name` in prose."""  # and _result') == set()
