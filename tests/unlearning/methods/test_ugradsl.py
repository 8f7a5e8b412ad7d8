"""UGradSL / UGradSL+ (004 §4, Alg. 1, eq. 6, eq. 8, App. D): objective, adaptive rates, epochs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.methods.ugradsl import UGradSL, UGradSLPlus
from unlearning.pipeline.run import run


class Tiny(nn.Module):
    """A backbone whose features are its input (``embed``) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 3)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@pytest.fixture
def batch():
    retain = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    forget = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    return {
        "retain": (retain, torch.tensor([0, 1, 2])),
        "forget": (forget, torch.tensor([2, 0, 1])),
    }


def _eq6(logits, y, a):
    """004 eq. 6: (1 + (1−K)/K·a)·ℓ(x, y) + (a/K)·Σ_{y'≠y} ℓ(x, y'), per sample."""
    K = logits.shape[1]
    nll = -F.log_softmax(logits, 1)  # ℓ(x, k) for every class k
    own = nll.gather(1, y[:, None]).squeeze(1)
    others = nll.sum(1) - own
    return (1 + (1 - K) / K * a) * own + a / K * others


def test_objective_is_eq8_with_eq6_smoothed_forget_loss(batch):
    torch.manual_seed(0)
    net = Tiny()
    loss, parts = UGradSLPlus(net, alpha=0.8, smoothing=-0.4).loss(batch)
    assert set(parts) == {"loss_retain", "loss_forget_smoothed"}
    xr, yr = batch["retain"]
    xf, yf = batch["forget"]
    expected = 0.8 * F.cross_entropy(net(xr), yr) - 0.2 * _eq6(net(xf), yf, -0.4).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # a = 0 is NegGrad (plain cross-entropy on F)
    plain, _ = UGradSL(net, alpha=0.8, smoothing=0.0).loss(batch)
    assert torch.allclose(
        plain, 0.8 * F.cross_entropy(net(xr), yr) - 0.2 * F.cross_entropy(net(xf), yf)
    )


@pytest.mark.parametrize(("sign", "factor"), [("positive", 1.0), ("negative", -1.0)])
def test_adaptive_rate_counts_retain_neighbours_within_beta(batch, sign, factor):
    """App. D: a_j = c_j/|B| with c_j = #{retain i: 1 − cos(z_i, z_j) < β} (β = 0.1 here)."""
    torch.manual_seed(0)
    net = Tiny()
    module = UGradSLPlus(net, alpha=0.8, adaptive=True, beta=0.1, adaptive_sign=sign)
    rates = module.adaptive_rates(batch)
    expected = factor * torch.tensor([2 / 3, 1 / 3, 0.0])  # [1,0]: 2 close; [0,1]: 1; [-1,0]: 0
    assert torch.allclose(rates, expected)
    loss, _ = module.loss(batch)
    xr, yr = batch["retain"]
    xf, yf = batch["forget"]
    manual = 0.8 * F.cross_entropy(net(xr), yr) - 0.2 * _eq6(net(xf), yf, expected).mean()
    assert torch.allclose(loss, manual, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"smoothing": 1.0}, "method.smoothing"),
        ({"smoothing": 2.0}, "method.smoothing"),
        ({"beta": 0.0}, "method.beta"),
        ({"adaptive_sign": "up"}, "method.adaptive_sign"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        UGradSLPlus(Tiny(), **kwargs)


@pytest.mark.parametrize(
    ("method", "extra"), [("ugradsl", []), ("ugradsl_plus", ["method.epochs=5"])]
)
def test_forgets_on_digits_and_keeps_retain(config, method, extra):
    """Digits presets (docs/methods/ugradsl.md; UGradSL+ shortened to 5 of its 10 epochs to keep
    the test fast): F falls by at least 3 points, R stays within 1.5 points of f_A."""
    m = run(config(f"method={method}", *extra))["metrics"]
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 0.03
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.015


def test_adaptive_ugradsl_composes_with_sam(config):
    result = run(config("method=ugradsl", "optim=sam", "method.epochs=1", "method.adaptive=true"))
    assert result["metrics"]["unlearned/acc_retain"] > 0.5
