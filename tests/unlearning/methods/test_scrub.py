"""SCRUB (SPEC §2, 000 App. C.2): objectives, schedule, bad settings, behaviour on digits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.methods.scrub import SCRUB
from unlearning.pipeline.run import run


@pytest.fixture
def student_and_teacher():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    module = SCRUB(net, epochs=10, msteps=8, kd_T=2.0, beta=0.3, gamma=0.7)
    with torch.no_grad():  # move the student away from the frozen copy f_A
        net.weight.add_(0.5 * torch.randn_like(net.weight))
    return module


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {
        "retain": (torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 0, 1])),
        "forget": (torch.randn(3, 4, generator=g), torch.tensor([2, 2, 1])),
    }


def _kl_by_hand(student, teacher, T):
    """T² · (1/n) Σ_i Σ_k p_t log(p_t / p_s) at temperature T."""
    p_t = torch.softmax(teacher / T, 1)
    p_s = torch.softmax(student / T, 1)
    return T**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()


def test_max_and_min_objectives_equal_their_formulas(student_and_teacher, batch):
    module = student_and_teacher
    xf, _ = batch["forget"]
    xr, yr = batch["retain"]
    loss, _ = module.loss({"forget": batch["forget"]})  # a batch of the forget pass
    assert module.phase == "max"
    expected = -_kl_by_hand(module.net(xf), module.teacher(xf), 2.0)
    assert torch.allclose(loss, expected, atol=1e-6) and expected < 0
    loss, parts = module.loss({"retain": batch["retain"]})  # a batch of the retain pass
    assert module.phase == "min"
    kl = _kl_by_hand(module.net(xr), module.teacher(xr), 2.0)
    expected = 0.7 * F.cross_entropy(module.net(xr), yr) + 0.3 * kl
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(parts["kl_retain"], kl, atol=1e-6)


def test_teacher_is_a_frozen_eval_copy(student_and_teacher):
    module = student_and_teacher
    module.train()
    assert not module.teacher.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(p.requires_grad for p in module.trainable_parameters())
    assert not torch.equal(module.teacher.weight, module.net.weight)


def test_epochs_before_msteps_pass_over_f_then_r_and_later_over_r():
    """The epoch plan (tests/datamodules/test_schedules.py runs it through a Trainer)."""
    module = SCRUB(nn.Linear(4, 3), epochs=10, msteps=8)
    assert [module.epoch_passes(e) for e in (0, 7, 8, 9)] == [
        ("forget", "retain"),
        ("forget", "retain"),
        ("retain",),
        ("retain",),
    ]
    assert module.epoch_schedule()["passes"] is not None


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kd_T": -1.0}, "method.kd_T"),
        ({"kd_T": 0.0}, "method.kd_T"),
        ({"msteps": 11}, "method.msteps"),
        ({"msteps": -1}, "method.msteps"),
        ({"gamma": -0.1}, "method.gamma"),
        ({"beta": float("nan")}, "method.beta"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SCRUB(nn.Linear(4, 3), epochs=10, **kwargs)


def test_scrub_forgets_on_digits_and_keeps_retain(config):
    """Digits preset (docs/methods/scrub.md): F falls, R within 1.5 points of f_A."""
    m = run(config("method=scrub"))["metrics"]
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 0.03
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.015


def test_scrub_composes_with_sam(config):
    result = run(config("method=scrub", "optim=sam", "method.epochs=1", "method.msteps=1"))
    assert result["metrics"]["unlearned/acc_retain"] > 0.5
