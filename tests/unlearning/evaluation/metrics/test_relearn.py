"""Relearn time (Golatkar et al. 2020): steps of fine-tuning until F is recognised again."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from unlearning.evaluation.families.relearn import RelearnTime
from unlearning.evaluation.family import Context, Evaluation
from unlearning.evaluation.metrics.relearn import RelearnSettings, accuracy, relearn_steps


def _task(n=64, seed=0):
    """A linearly separable two-class task in 5 dimensions."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen)
    return x, (x[:, 0] > 0).long()


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(5, 2)


def test_a_model_already_at_the_target_needs_no_steps_and_is_left_unchanged():
    x, y = _task()
    model = _model()
    before = [p.clone() for p in model.parameters()]
    assert relearn_steps(model, x, y, x, y, accuracy(model, x, y), RelearnSettings()) == 0
    assert relearn_steps(model, x, y, x, y, 1.0, RelearnSettings(max_steps=50)) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_relearning_is_counted_in_steps_and_gives_up_at_the_cap():
    x, y = _task()
    steps = relearn_steps(_model(), x, y, x, y, 0.95, RelearnSettings(lr=0.1, max_steps=200))
    assert steps is not None and 1 <= steps <= 200
    slower = relearn_steps(_model(), x, y, x, y, 0.95, RelearnSettings(lr=0.01, max_steps=2000))
    assert slower is not None and slower > steps  # a smaller lr relearns more slowly
    assert relearn_steps(_model(), x, y, x, y, 0.95, RelearnSettings(lr=0.0, max_steps=20)) is None


def _context(models, tmp_path: Path) -> Context:
    x, y = _task(96)
    sets = {"forget": (x[:32], y[:32]), "retain": (x[32:], y[32:])}
    store = SimpleNamespace(models=models, sample=lambda s, n, seed: sets[s])
    return Context(store, tmp_path, {}, seed=0)


def test_an_unlearned_model_equal_to_the_oracle_relearns_in_the_same_steps(tmp_path):
    """Ratio 1: the same weights see the same batches (retraining's value)."""
    result = Evaluation()
    models = {"original": _model(1), "unlearned": _model(2), "oracle": _model(2)}
    with torch.no_grad():  # the original model fits F
        models["original"].weight.copy_(torch.tensor([[-5.0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0]]))
    RelearnTime(lr=0.1, max_steps=300).run(_context(models, tmp_path), result)
    assert result.metrics["relearn/steps"] == result.metrics["oracle/relearn/steps"] > 0
    assert result.metrics["relearn/ratio"] == 1.0


def test_a_model_that_kept_f_relearns_at_once_and_a_stuck_one_is_capped(tmp_path):
    result = Evaluation()
    original = _model(1)
    with torch.no_grad():
        original.weight.copy_(torch.tensor([[-5.0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0]]))
    models = {"original": original, "unlearned": original, "oracle": _model(2)}
    RelearnTime(lr=0.1, max_steps=300).run(_context(models, tmp_path), result)
    assert result.metrics["relearn/steps"] == 0 and result.metrics["relearn/ratio"] == 0.0
    stuck = Evaluation()
    RelearnTime(lr=0.0, max_steps=5).run(
        _context(models | {"unlearned": _model(3)}, tmp_path), stuck
    )
    assert stuck.metrics["relearn/steps"] == 5 and "lower bound" in stuck.notes["relearn/steps"]


@pytest.mark.parametrize("method", ["retrain"])
def test_retrain_relearns_exactly_as_the_oracle(config, method):
    from unlearning.pipeline.run import run

    m = run(config(f"method={method}", "eval=none", "eval.relearn.enabled=true"))["metrics"]
    assert m["relearn/steps"] == m["oracle/relearn/steps"] > 0 and m["relearn/ratio"] == 1.0
