"""Boundary Shrink and Boundary Expand (SPEC §2, 004 App. E.1, Chen et al. 2023)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.methods.boundary import BoundaryExpand, BoundaryShrink
from unlearning.models import SmallCNN, TwoLayerCNN
from unlearning.pipeline.run import run


def _net():
    torch.manual_seed(0)
    net = SmallCNN(num_classes=4, width=4)
    return net


def _forget(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_shrink_trains_towards_the_fgsm_prediction_of_the_frozen_original():
    net = _net()
    module = BoundaryShrink(net, epsilon=0.5)
    x, y = _forget()
    # by hand: one FGSM step on f_A (eval mode), label = f_A's argmax there
    reference = SmallCNN(num_classes=4, width=4)
    reference.load_state_dict(net.state_dict())
    reference.eval()
    x_adv = x.clone().requires_grad_(True)
    F.cross_entropy(reference(x_adv), y).backward()
    labels = reference(x + 0.5 * x_adv.grad.sign()).argmax(1)
    net.train()
    loss, parts = module.loss({"forget": (x, y)})
    assert torch.allclose(loss, F.cross_entropy(net(x), labels))
    assert torch.allclose(parts["flipped"], (labels != y).float().mean())
    assert BoundaryShrink.train_sets == ("forget",)
    # the labels come from the frozen copy: changing the trained backbone does not move them
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    x2 = x.clone()  # a new batch tensor: labels recomputed
    assert torch.equal(module.nearest_labels(x2, y), labels)
    # the same batch tensor (a SAM second pass) reuses the cached labels
    assert module._labels(x2, y) is module._labels(x2, y)


def test_expand_adds_a_shadow_class_and_prunes_it_after_unlearning():
    net = _net()
    head = net.head
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    module = BoundaryExpand(net)
    assert net.head.out_features == 5
    # the original units are copied, the new bias is 0 (reference: Xavier-normal + zero bias)
    assert torch.equal(net.head.weight[:4], w) and torch.equal(net.head.bias[:4], b)
    assert net.head.bias[4] == 0
    x, y = _forget()
    loss, _ = module.loss({"forget": (x, y)})
    assert torch.allclose(loss, F.cross_entropy(net(x), torch.full_like(y, 4)))
    with torch.no_grad():
        net.head.weight.add_(0.5)
    trained = net.head.weight.detach().clone()
    module.on_fit_end()
    module.prune()  # idempotent
    assert net.head.out_features == 4 and torch.equal(net.head.weight, trained[:4])
    assert net(x).shape == (6, 4)


def test_bad_boundary_settings_name_their_key():
    with pytest.raises(ValueError, match=r"method\.epsilon"):
        BoundaryShrink(_net(), epsilon=0.0)
    with pytest.raises(ValueError, match=r"model.*TwoLayerCNN.*Identity"):
        BoundaryExpand(TwoLayerCNN(dim=4))
    with pytest.raises(ValueError, match="model"):
        BoundaryExpand(nn.Linear(3, 2))  # no head at all


@pytest.mark.parametrize(
    ("method", "margin"), [("boundary_shrink", 0.03), ("boundary_expand", 0.02)]
)
def test_boundary_lowers_forget_accuracy_on_digits(config, method, margin):
    """Embedded default with the digits presets (conf/dataset_method/digits_<method>.yaml):
    forget accuracy falls by ≥ ``margin`` (shrink 100 → 95.8, expand 100 → 97.2 at seed 0),
    retain accuracy stays within 1 point."""
    m = run(config(f"method={method}"))["metrics"]
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= margin
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.01


@pytest.mark.parametrize("method", ["boundary_shrink", "boundary_expand"])
def test_boundary_composes_with_sam(config, method):
    result = run(config(f"method={method}", "optim=sam", "method.epochs=1"))
    assert result["config"]["optim"]["name"] == "sam"
    assert result["status"] == "ok"
