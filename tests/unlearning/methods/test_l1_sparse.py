"""ℓ1-sparse unlearning (SPEC §2): CE(R) + γ_t‖w‖₁ with γ_t = γ(1 − t/T)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.methods.l1_sparse import L1Sparse
from unlearning.pipeline.run import run


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"retain": (torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 0, 1]))}


def test_loss_is_retain_cross_entropy_plus_decayed_l1_of_all_weights():
    net, batch = _net(), _batch()
    module = L1Sparse(net, epochs=4, gamma=0.01)
    l1 = sum(p.abs().sum() for p in net.parameters())  # weights, biases, BatchNorm affine
    ce = F.cross_entropy(net(batch["retain"][0]), batch["retain"][1])
    for epoch, factor in enumerate([1.0, 0.75, 0.5, 0.25]):  # γ_t = γ(1 − t/T), t 0-based
        module.trainer = type("T", (), {"current_epoch": epoch})()  # stands in for the Trainer
        loss, parts = module.loss(batch)
        assert module.gamma_at(epoch) == pytest.approx(0.01 * factor)
        assert torch.allclose(loss, ce + 0.01 * factor * l1)
        assert torch.allclose(parts["l1"], l1) and torch.allclose(parts["loss_retain"], ce)
    assert module.gamma_at(4) == 0.0 and module.gamma_at(9) == 0.0
    assert L1Sparse.train_sets == ("retain",)


def test_gradient_includes_the_l1_subgradient():
    net, batch = _net(), _batch()
    module = L1Sparse(net, epochs=2, gamma=0.5)
    module.loss(batch)[0].backward()
    with_l1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    F.cross_entropy(net(batch["retain"][0]), batch["retain"][1]).backward()
    for p, g in zip(net.parameters(), with_l1):
        assert torch.allclose(g, p.grad + 0.5 * torch.sign(p.detach()), atol=1e-6)


@pytest.mark.parametrize("gamma", [-1e-4, float("nan"), float("inf")])
def test_bad_gamma_names_its_key(gamma):
    with pytest.raises(ValueError, match=r"method\.gamma"):
        L1Sparse(_net(), gamma=gamma)
    with pytest.raises(ValueError, match=r"method\.epochs"):
        L1Sparse(_net(), epochs=0)


def test_forgets_on_the_embedded_default(config):
    m = run(config("method=l1sparse"))["metrics"]
    # digits preset (conf/dataset_method/digits_l1sparse.yaml, docs/methods/l1sparse.md)
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 0.02
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.015


def test_composes_with_sam(config):
    result = run(config("method=l1sparse", "optim=sam", "method.epochs=1"))
    assert result["status"] == "ok" and result["config"]["optim"]["name"] == "sam"
