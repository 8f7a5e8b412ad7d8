"""Sharp MinMax (000 §3.2): the mask, and the two parts' steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from callbacks.sharpness import ASAM, SAM
from unlearning.methods import SharpMinMax
from unlearning.methods.saliency import forget_gradient_saliency, top_fraction_mask


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "retain": (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)),
        "forget": (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)),
    }


def _one_step(batch, masks, sharpness=None, alpha=0.9, lr=0.1):
    """Parameters after one MinMax step with plain SGD (no momentum/decay) as base optimizer."""
    net = _net()
    module = SharpMinMax(net, optimizer=torch.optim.SGD, lr=lr, alpha=alpha, forget_rho=0.05)
    module.set_forget_mask(masks)
    module.use_sharpness(sharpness)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    module.optimizers = lambda: optimizer
    module.log = lambda *args, **kwargs: None
    module.training_step(batch, 0)
    return dict(net.named_parameters())


@pytest.fixture
def masks():
    net = _net()
    x, y = _batch(0)["forget"]
    return top_fraction_mask(forget_gradient_saliency(net, [(x, y)]), 0.3)


def test_mask_selects_the_requested_fraction_of_largest_forget_gradients():
    net = _net()
    x, y = _batch(0)["forget"]
    saliency = forget_gradient_saliency(net, [(x[:4], y[:4]), (x[4:], y[4:])])
    # saliency is |sum over batches of the batch-mean gradient|
    net.zero_grad()
    (F.cross_entropy(net.eval()(x[:4]), y[:4]) + F.cross_entropy(net(x[4:]), y[4:])).backward()
    for name, p in net.named_parameters():
        assert torch.allclose(saliency[name], p.grad.abs(), atol=1e-6)
    masks = top_fraction_mask(saliency, 0.3)
    total = sum(m.numel() for m in masks.values())
    chosen = sum(int(m.sum()) for m in masks.values())
    assert chosen == round(0.3 * total)
    threshold = min(float(saliency[n][m].min()) for n, m in masks.items() if m.any())
    assert all(float(saliency[n][~m].max()) <= threshold for n, m in masks.items() if (~m).any())
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mask(saliency, 1.0)


def test_each_part_moves_only_by_its_own_objective(masks):
    base = _one_step(_batch(1), masks)
    new_retain = {**_batch(1), "retain": _batch(2)["retain"]}
    new_forget = {**_batch(1), "forget": _batch(3)["forget"]}
    other_retain, other_forget = _one_step(new_retain, masks), _one_step(new_forget, masks)
    for name, mask in masks.items():
        # the forget part ignores the retain batch, the retain part ignores the forget batch
        assert torch.equal(base[name][mask], other_retain[name][mask])
        assert torch.equal(base[name][~mask], other_forget[name][~mask])


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_steps_equal_sam_on_retain_and_sharpness_max_on_forget(masks, adaptive):
    batch, alpha, lr, rho_r, rho_f, eta = _batch(1), 0.9, 0.1, 0.2, 0.05, 0.01
    settings = ASAM(rho=rho_r, eta=eta) if adaptive else SAM(rho=rho_r)
    after = _one_step(batch, masks, sharpness=settings, alpha=alpha, lr=lr)
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    # ASAM (official code): T_w = |w| + eta on parameters named *weight*, 1 elsewhere
    scale = [
        p.detach().abs() + eta if adaptive and "weight" in n else torch.ones_like(p)
        for n, p in zip(names, params)
    ]

    def perturbation(g, rho):
        norm = torch.sqrt(sum(((t * gi) ** 2).sum() for t, gi in zip(scale, g)))
        return [rho * t * t * gi / norm for t, gi in zip(scale, g)]

    def grad_at(loss_fn, shift):
        with torch.no_grad():
            for p, e in zip(params, shift):
                p.add_(e)
        grads = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            for p, e in zip(params, shift):
                p.sub_(e)
        return grads

    zero = [torch.zeros_like(p) for p in params]
    fm = [masks[n].float() for n in names]
    rm = [1 - m for m in fm]

    def retain():
        return alpha * F.cross_entropy(net(batch["retain"][0]), batch["retain"][1])

    def forget():
        return -(1 - alpha) * F.cross_entropy(net(batch["forget"][0]), batch["forget"][1])

    g_r = [g * m for g, m in zip(grad_at(retain, zero), rm)]
    e_r = perturbation(g_r, rho_r)
    d_r = [g * m for g, m in zip(grad_at(retain, e_r), rm)]  # SAM/ASAM: grad at w + e_R
    g_f = [g * m for g, m in zip(grad_at(forget, zero), fm)]
    e_f = perturbation(g_f, rho_f)
    d_f = [(2 * g - gp) * m for g, gp, m in zip(g_f, grad_at(forget, e_f), fm)]  # 000 eq. 8
    for name, p, a, b in zip(names, params, d_r, d_f):
        assert torch.allclose(after[name], p - lr * (a + b), atol=1e-6), name


def test_bad_minmax_settings_name_their_key():
    with pytest.raises(ValueError, match=r"method\.fraction"):
        SharpMinMax(_net(), fraction=0.0)
    with pytest.raises(ValueError, match=r"method\.forget_objective"):
        SharpMinMax(_net(), forget_objective="minimize")
