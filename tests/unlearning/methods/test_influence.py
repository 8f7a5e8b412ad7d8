"""Influence unlearning (SPEC §2, 004 App. E.1): the WoodFisher inverse, the one-shot update, and
the method in the pipeline."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from callbacks.sharpness import SAM
from unlearning.methods.influence import (
    InfluenceUnlearning,
    per_sample_gradients,
    woodfisher_inverse_product,
)
from unlearning.models import SmallCNN
from unlearning.pipeline.run import run


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _pairs(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _flat_grad(net, x, y, reduction="mean"):
    params = list(net.parameters())
    loss = F.cross_entropy(net(x), y, reduction=reduction)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def test_per_sample_gradients_match_autograd_one_sample_at_a_time():
    net = _net()
    x, y = _pairs(1, 7)
    grads = per_sample_gradients(net, x, y, chunk=3)
    expected = torch.stack([_flat_grad(net, x[i : i + 1], y[i : i + 1]) for i in range(7)])
    assert torch.allclose(grads, expected, atol=1e-12)


@pytest.mark.parametrize("block", [1, 4, 64])
def test_woodfisher_recursion_equals_dense_inverse_of_damped_fisher(block):
    net = _net()
    x, y = _pairs(2, 10)
    grads = per_sample_gradients(net, x, y)  # 10 × 31: fewer samples than parameters
    d = grads.shape[1]
    v = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    damping = 0.05
    fisher = damping * torch.eye(d, dtype=torch.float64) + grads.T @ grads / len(grads)
    dense = torch.linalg.inv(fisher) @ v
    assert torch.allclose(woodfisher_inverse_product(grads, v, damping, block=block), dense)
    # several right-hand sides at once
    vs = torch.stack([v, 2 * v], dim=1)
    assert torch.allclose(
        woodfisher_inverse_product(grads, vs, damping, block=block)[:, 1], 2 * dense
    )


def test_update_is_scale_times_inverse_fisher_times_forget_minus_retain_gradient():
    net = _net()
    retain, forget = _pairs(4, 9), _pairs(5, 3)
    w0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    scale, damping, n_fisher = 0.7, 0.1, 6
    # by hand: v = (n_F/n)(mean grad F − mean grad R); H = λI + mean g gᵀ over the first 6 of R
    n_f, n_r = 3, 9
    v = n_f / (n_f + n_r) * (_flat_grad(net, *forget) - _flat_grad(net, *retain))
    g = torch.stack([_flat_grad(net, retain[0][i : i + 1], retain[1][i : i + 1]) for i in range(6)])
    fisher = damping * torch.eye(len(w0), dtype=torch.float64) + g.T @ g / n_fisher
    expected = w0 + scale * torch.linalg.inv(fisher) @ v

    module = InfluenceUnlearning(net, scale=scale, damping=damping, num_samples=n_fisher)
    # R arrives in two batches, F in one: the sums do not depend on batching
    module.influence_update(
        [(retain[0][:5], retain[1][:5]), (retain[0][5:], retain[1][5:])], [forget]
    )
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert torch.allclose(after, expected, atol=1e-10)
    assert module.stats["fisher_samples"] == n_fisher
    # the objective logged per batch is CE on F
    loss, _ = module.loss({"forget": forget})
    assert torch.allclose(loss, F.cross_entropy(net(forget[0]), forget[1]))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"scale": 0.0}, "method.scale"),
        ({"damping": -1.0}, "method.damping"),
        ({"num_samples": 0}, "method.num_samples"),
        ({"epochs": 3}, "method.epochs"),
        ({"max_params": 1000}, "method.max_params"),  # SmallCNN has ~20k
    ],
)
def test_bad_iu_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        InfluenceUnlearning(SmallCNN(10), **kwargs)


def test_sharpness_settings_are_ignored_with_a_warning(caplog):
    module = InfluenceUnlearning(_net())
    with caplog.at_level(logging.WARNING, logger="unlearning.methods.influence"):
        module.use_sharpness(SAM(rho=0.1))
    assert "optim" in caplog.text and "ignored" in caplog.text
    module.use_sharpness(None)  # plain SGD: nothing to say


def test_iu_lowers_forget_accuracy_on_digits_and_composes_with_sam(config):
    """Embedded default with the digits preset (conf/dataset_method/digits_iu.yaml)."""
    m = run(config("method=iu"))["metrics"]
    # scale 10 at seed 0: forget 100 -> 98.6 (one of 72 samples; oracle 97.2), retain 99.2
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 1 / 72 - 1e-6
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.01
    # optim=sam: IU takes no optimizer step, so the result is the same update
    sam = run(config("method=iu", "optim=sam"))
    assert sam["config"]["optim"]["name"] == "sam"
    assert sam["metrics"]["unlearned/acc_forget"] == m["unlearned/acc_forget"]
    assert sam["metrics"]["unlearned/acc_retain"] == m["unlearned/acc_retain"]
