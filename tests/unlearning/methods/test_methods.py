"""Each method's objective on a hand-made batch equals its formula (SPEC §2)."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.methods import ERM, Finetune, GradientAscent, NegGrad, Retrain


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Linear(4, 3)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {
        "retain": (torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 0, 1])),
        "forget": (torch.randn(2, 4, generator=g), torch.tensor([2, 2])),
    }


def _ce(net, pair):
    return F.cross_entropy(net(pair[0]), pair[1])


def test_neggrad_is_alpha_retain_minus_one_minus_alpha_forget(net, batch):
    loss, parts = NegGrad(net, alpha=0.8).loss(batch)
    expected = 0.8 * _ce(net, batch["retain"]) - 0.2 * _ce(net, batch["forget"])
    assert torch.allclose(loss, expected)
    assert torch.allclose(parts["loss_forget"], _ce(net, batch["forget"]))
    assert NegGrad.train_sets == ("retain", "forget")


def test_gradient_ascent_is_negative_forget_cross_entropy(net, batch):
    loss, _ = GradientAscent(net).loss(batch)
    assert torch.allclose(loss, -_ce(net, batch["forget"]))
    assert GradientAscent.train_sets == ("forget",)


def test_finetune_and_oracle_train_on_retain_only(net, batch):
    assert torch.allclose(Finetune(net).loss(batch)[0], _ce(net, batch["retain"]))
    assert Retrain(net).train_sets == ("retain",) and Retrain.from_scratch
    assert ERM(net, train_set="train").train_sets == ("train",)


@pytest.mark.parametrize("alpha", [1.01, -0.5])
def test_neggrad_refuses_alpha_outside_unit_interval(net, alpha):
    with pytest.raises(ValueError, match="alpha"):
        NegGrad(net, alpha=alpha)


def test_cosine_schedule_anneals_over_the_epochs(net):
    cosine = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4)
    module = NegGrad(net, lr=0.1, epochs=4, scheduler=cosine)
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "epoch"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_without_a_scheduler_the_learning_rate_is_constant(net):
    optimizer = NegGrad(net, lr=0.1, scheduler=None).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.1
