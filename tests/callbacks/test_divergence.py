"""The divergence guard stops a diverging fit and keeps the last weights with a finite loss."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.divergence import DivergenceGuard


class Ascent(L.LightningModule):
    """Gradient *ascent* on a squared loss (GA in miniature): diverges at a large lr. Records
    the weights every step sees, so a test can tell which state the guard kept."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.lr = lr
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(self.net.weight.detach().clone())
        x, y = batch
        loss = -((self.net(x) - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fit(
    lr: float, guard: DivergenceGuard, epochs: int = 3, module: Ascent | None = None
) -> tuple[Ascent, L.Trainer]:
    """Fit ``module`` (default ``Ascent(lr)``) on 64 fixed samples, 8 steps an epoch."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
    module = module if module is not None else Ascent(lr)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[guard],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    return module, trainer


def test_a_stable_fit_runs_to_the_end():
    guard = DivergenceGuard(max_abs_loss=1e6)
    _, trainer = _fit(1e-3, guard)
    assert guard.diverged_at_step is None and trainer.current_epoch == 3
    assert trainer.global_step == 24


def test_exploding_loss_stops_the_fit_and_keeps_the_last_weights_with_a_bounded_loss():
    guard = DivergenceGuard(max_abs_loss=1e3)
    module, trainer = _fit(10.0, guard)
    step = guard.diverged_at_step
    assert step is not None and step < 24 and trainer.global_step == step
    assert "max_abs_loss" in guard.reason
    # the step that detected it reported the loss of module.seen[step - 1]; those weights are
    # rejected and the ones before them (the last with a bounded loss) are back in place
    kept = module.seen[step - 2] if step >= 2 else module.seen[0]
    assert torch.equal(module.net.weight, kept)


def test_non_finite_weights_are_caught_even_without_a_loss_threshold():
    guard = DivergenceGuard(max_abs_loss=None)
    module, _ = _fit(1e30, guard)
    assert guard.diverged_at_step is not None
    assert guard.reason in ("the weights are no longer finite", "loss is -inf", "loss is nan")
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_state_survives_a_checkpoint_so_a_resumed_fit_stops_at_once():
    guard = DivergenceGuard(max_abs_loss=1e3)
    _fit(10.0, guard)
    resumed = DivergenceGuard(max_abs_loss=1e3)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.diverged_at_step == guard.diverged_at_step


def test_a_non_positive_threshold_is_refused():
    with pytest.raises(ValueError, match="max_abs_loss"):
        DivergenceGuard(max_abs_loss=0)


@pytest.mark.parametrize("lr,threshold", [(10.0, 1e3), (1e30, None)])
def test_a_lagged_verdict_keeps_the_same_weights_and_step_as_an_immediate_one(lr, threshold):
    """lag = 1 (the CUDA default, forced here on CPU) reads each step's verdict one step late,
    but puts back the same weights and reports the same step as lag = 0."""
    now, late = DivergenceGuard(threshold, lag=0), DivergenceGuard(threshold, lag=1)
    module_now, _ = _fit(lr, now)
    module_late, trainer_late = _fit(lr, late)
    assert now.diverged_at_step is not None
    assert (late.diverged_at_step, late.reason) == (now.diverged_at_step, now.reason)
    assert torch.equal(module_late.net.weight, module_now.net.weight)
    assert torch.equal(module_late.net.bias, module_now.net.bias)
    # it noticed one step late: one more step ran, then the weights were put back
    assert trainer_late.global_step == now.diverged_at_step + 1


class BlowsUpAt(Ascent):
    """A stable fit whose loss jumps past any threshold from optimizer step ``at`` on."""

    def __init__(self, at: int) -> None:
        super().__init__(lr=1e-3)
        self.at = at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e9 if self.trainer.global_step + 1 >= self.at else loss


def test_a_divergence_in_the_last_step_of_an_epoch_is_judged_before_the_epoch_ends():
    """With lag = 1 the last step's verdict is still in flight when the epoch ends (8 steps an
    epoch here): it is read then, so the checkpoint written at the epoch's end never holds
    unjudged weights and no step of the next epoch runs."""
    for lag in (0, 1):
        guard = DivergenceGuard(1e3, lag=lag)
        module, trainer = _fit(1e-3, guard, module=BlowsUpAt(at=8))
        assert guard.diverged_at_step == 8 and "max_abs_loss" in guard.reason
        assert trainer.global_step == 8 and trainer.current_epoch == 1
        assert torch.equal(module.net.weight, module.seen[6])  # W_6: the last with a good loss
