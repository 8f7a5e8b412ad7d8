"""The method protocol: what a stage may ask of a method is declared on the base class with
defaults, and :class:`MaskedMethod` owns the mask intake."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from callbacks.sharpness import SAM
from unlearning.methods import (
    ERM,
    InfluenceUnlearning,
    MaskedMethod,
    NegGrad,
    Retrain,
    SalUn,
    SharpMinMax,
    UnlearningMethod,
)
from unlearning.methods.base import method_class

PROTOCOL = {
    "from_scratch": False,
    "owns_sharpness": False,
    "needs_forget_mask": False,
    "mask_keys": {},
    "train_sets": ("retain",),
    "epoch_driver": None,
    "sample_id_sets": (),
}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _masks(net, share=0.5):
    return {name: torch.rand(p.shape) < share for name, p in net.named_parameters()}


def test_the_base_class_declares_every_capability_with_its_default():
    for name, default in PROTOCOL.items():
        assert name in vars(UnlearningMethod), name
        assert getattr(UnlearningMethod, name) == default, name
    for name in ("set_forget_mask", "use_sharpness", "mask_settings", "epoch_schedule"):
        assert name in vars(UnlearningMethod), name


def test_methods_declare_what_they_differ_in():
    assert Retrain.from_scratch and not ERM.from_scratch
    assert SharpMinMax.owns_sharpness and InfluenceUnlearning.owns_sharpness
    assert not NegGrad.owns_sharpness and not SalUn.owns_sharpness
    assert issubclass(SharpMinMax, MaskedMethod) and issubclass(SalUn, MaskedMethod)
    assert SharpMinMax.needs_forget_mask and SalUn.needs_forget_mask
    assert not NegGrad.needs_forget_mask


def test_mask_settings_read_the_declared_keys_of_the_method_config():
    cfg = OmegaConf.create({"fraction": 0.3, "batch_size": "${size}", "lr": 0.1, "size": 32})
    assert SharpMinMax.mask_settings(cfg) == {"fraction": 0.3, "batch_size": 32}
    assert NegGrad.mask_settings(cfg) == {}


def test_a_method_without_a_mask_refuses_one_and_keeps_sharpness_settings():
    module = NegGrad(_net())
    with pytest.raises(TypeError, match="needs_forget_mask"):
        module.set_forget_mask(_masks(module.net))
    sam = SAM(rho=0.05)
    module.use_sharpness(sam)
    assert module.sharpness is sam


@pytest.mark.parametrize("method", [SharpMinMax, SalUn])
def test_the_mask_intake_checks_names_and_shapes_and_stores_booleans(method):
    module = method(_net())
    with pytest.raises(RuntimeError, match="set_forget_mask"):
        module.require_forget_mask()
    masks = _masks(module.net)
    with pytest.raises(ValueError, match=r"missing: \['2.bias'\]"):
        module.set_forget_mask({k: v for k, v in masks.items() if k != "2.bias"})
    with pytest.raises(ValueError, match=r"0\.weight has shape"):
        module.set_forget_mask({**masks, "0.weight": torch.ones(2, 2, dtype=torch.bool)})
    module.set_forget_mask({k: v.float() for k, v in masks.items()})
    assert list(module.forget_masks) == [n for n, _ in module.net.named_parameters()]
    assert all(m.dtype == torch.bool for m in module.forget_masks.values())
    assert all(torch.equal(module.forget_masks[k], masks[k]) for k in masks)
    for name, p, mask in module.masked_parameters():
        assert p is dict(module.net.named_parameters())[name] and mask.shape == p.shape


def test_frozen_parameters_are_not_part_of_the_mask():
    net = _net()
    net[0].weight.requires_grad_(False)
    module = SharpMinMax(net)
    masks = _masks(net)
    with pytest.raises(ValueError, match=r"unknown: \['0.weight'\]"):
        module.set_forget_mask(masks)
    module.set_forget_mask({k: v for k, v in masks.items() if k != "0.weight"})


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, True, "0.3"])
def test_the_mask_fraction_must_lie_strictly_between_zero_and_one(fraction):
    with pytest.raises(ValueError, match=r"method\.fraction"):
        SharpMinMax(_net(), fraction=fraction)


def test_salun_anchors_the_weights_it_had_when_the_mask_arrived():
    module = SalUn(_net(), num_classes=3)
    masks = _masks(module.net)
    module.set_forget_mask(masks)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(1.0)
    module.restore_frozen()
    torch.manual_seed(0)
    reference = _net()
    for (name, p), q in zip(module.net.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p[~masks[name]], q[~masks[name]])
        assert torch.equal(p[masks[name]], q[masks[name]] + 1.0)


def test_method_class_resolves_targets_and_refuses_other_classes():
    assert method_class("unlearning.methods.minmax.SharpMinMax") is SharpMinMax
    with pytest.raises(TypeError, match="UnlearningMethod"):
        method_class("torch.nn.Linear")
