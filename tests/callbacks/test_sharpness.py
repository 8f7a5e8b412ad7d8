"""Sharpness-aware callback (SPEC §1): one real Lightning step vs the formulas computed by hand.

The tiny model is Linear -> BatchNorm1d -> Tanh -> Linear in float64; the reference
implementation below re-derives g, ê, g' with ``torch.autograd`` on a copy and applies the SGD
(momentum + weight decay) update by hand, independently of ``callbacks.sharpness``.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.sharpness import (
    ASAM,
    SAM,
    SharpnessAwareCallback,
    SharpnessMax,
    from_mode,
    frozen_running_stats,
    perturbation,
    perturbed,
    sharpness_aware_grad,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
BATCH = 8


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def make_data(n: int = 16, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=gen
    )


class Tiny(pl.LightningModule):
    """An ordinary LightningModule that knows nothing about SAM."""

    def __init__(
        self,
        net: nn.Module,
        data: tuple[Tensor, Tensor],
        lr: float = LR,
        scheduler: bool = False,
        rank_slices: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.data = data
        self.lr = lr
        self.scheduler = scheduler
        self.rank_slices = rank_slices
        self.loss_sum = torchmetrics.SumMetric()
        self.step_calls = 0
        self.log_calls: list[float] = []
        self.batch_end_losses: list[float] = []

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:  # counts calls
        self.log_calls.append(float(value.detach() if isinstance(value, Tensor) else value))
        super().log(name, value, *args, **kwargs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.step_calls += 1
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.loss_sum.update(loss.detach())
        self.log("train_loss", loss, on_step=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if outputs:  # {} when training_step returned None
            self.batch_end_losses.append(float(outputs["loss"]))

    def train_dataloader(self) -> DataLoader:
        x, y = self.data
        if self.rank_slices:  # DDP test: rank r trains on its own consecutive slice
            n = len(x) // self.trainer.world_size
            r = self.trainer.global_rank
            x, y = x[r * n : (r + 1) * n], y[r * n : (r + 1) * n]
        return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=MOMENTUM, weight_decay=WD)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(
    module: pl.LightningModule, callbacks: list[pl.Callback], steps: int = 1, **trainer_kwargs: Any
) -> pl.Trainer:
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **trainer_kwargs,
    }
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(module)
    return trainer


def batches(data: tuple[Tensor, Tensor], steps: int) -> list[tuple[Tensor, Tensor]]:
    x, y = data
    return [(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]) for i in range(steps)]


def hand_perturbation(
    net: nn.Module, grads: Sequence[Tensor], rho: float, adaptive: bool, eta: float, scope: str
) -> list[Tensor]:
    """ê = ρ T² g / (‖T g‖ + 1e-12), T = |w| + η on adaptive params (ASAM), else 1 (SAM)."""
    scales = []
    for (name, p), _ in zip(net.named_parameters(), grads, strict=True):
        use = adaptive and (scope == "all" or "weight" in name)
        scales.append(p.detach().abs() + eta if use else torch.ones_like(p))
    norm = math.sqrt(sum(float(((t * g) ** 2).sum()) for t, g in zip(scales, grads, strict=True)))
    return [rho * t * t * g / (norm + 1e-12) for t, g in zip(scales, grads, strict=True)]


def reference(
    net0: nn.Module,
    data_batches: list[tuple[Tensor, Tensor]],
    *,
    rho: float,
    objective: str = "minimize",
    adaptive: bool = False,
    eta: float = 0.0,
    scope: str = "weight",
    clip: float | None = None,
) -> nn.Module:
    """SAM/ASAM/sharpness-max + SGD(momentum, weight decay) computed by hand (SPEC §1)."""
    net = copy.deepcopy(net0)
    params = list(net.parameters())
    bufs: list[Tensor | None] = [None] * len(params)
    for x, y in data_batches:
        g = torch.autograd.grad(F.cross_entropy(net(x), y), params)  # BN stats: updated once
        e = hand_perturbation(net, g, rho, adaptive, eta, scope)
        twin = copy.deepcopy(net)  # second pass on a copy: its BN updates are thrown away
        sign = -1.0 if objective == "maximize_neg" else 1.0
        with torch.no_grad():
            for q, ei in zip(twin.parameters(), e, strict=True):
                q.add_(sign * ei)
        gp = torch.autograd.grad(F.cross_entropy(twin(x), y), list(twin.parameters()))
        if objective == "maximize":
            d = [2 * gi - gpi for gi, gpi in zip(g, gp, strict=True)]  # 000 eq. 8, first order
        else:
            d = list(gp)
        if clip is not None:  # Lightning's gradient_clip_val (norm), torch's clip_grad_norm_
            total = math.sqrt(sum(float((di**2).sum()) for di in d))
            d = [di * min(1.0, clip / (total + 1e-6)) for di in d]
        with torch.no_grad():
            for i, p in enumerate(params):
                di = d[i] + WD * p
                bufs[i] = di.clone() if bufs[i] is None else MOMENTUM * bufs[i] + di
                p.sub_(LR * bufs[i])
    return net


def assert_params_close(
    a: nn.Module, b: nn.Module, rtol: float = 1e-9, atol: float = 1e-12
) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=f"parameter {name}")


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available.*")
        yield


# --------------------------------------------------------------------- one step vs the formula

CASES = {
    "sam": (SAM(rho=0.1), {"rho": 0.1}),
    "asam_weight": (ASAM(rho=1.0, eta=0.01), {"rho": 1.0, "adaptive": True, "eta": 0.01}),
    "asam_all": (
        ASAM(rho=0.5, eta=0.0, adaptive_params="all"),
        {"rho": 0.5, "adaptive": True, "eta": 0.0, "scope": "all"},
    ),
    "sharpmax": (SharpnessMax(rho=0.1), {"rho": 0.1, "objective": "maximize"}),
    "sharpmax_neg": (
        SharpnessMax(rho=0.1, variant="negative_rho"),
        {"rho": 0.1, "objective": "maximize_neg"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_steps_match_hand_computation(case: str) -> None:
    """Two steps (momentum buffer exercised, BN updated in between) equal the formula."""
    callback, ref_kwargs = CASES[case]
    callback = copy.deepcopy(callback)
    data = make_data()
    module = Tiny(make_net(), data)
    net0 = copy.deepcopy(module.net)
    fit(module, [callback], steps=2)
    expected = reference(net0, batches(data, 2), **ref_kwargs)
    assert module.step_calls == 4  # two passes per step
    assert_params_close(module.net, expected)
    bn, bn_ref = module.net[1], expected[1]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(bn_ref, name), rtol=1e-9, atol=0)


def test_asam_scope_changes_the_step() -> None:
    """The η-on-'weight'-only default (official ASAM) differs from davda54's all-params mode."""
    data = make_data()
    net0 = make_net()
    a = reference(net0, batches(data, 1), rho=1.0, adaptive=True, eta=0.01, scope="weight")
    b = reference(net0, batches(data, 1), rho=1.0, adaptive=True, eta=0.01, scope="all")
    assert not torch.allclose(a[3].bias, b[3].bias)  # (a[0].bias feeds BN: zero gradient)


def test_gradient_clipping_applies_to_the_stepped_gradient() -> None:
    data = make_data()
    module = Tiny(make_net(), data)
    net0 = copy.deepcopy(module.net)
    fit(module, [SAM(rho=0.1)], gradient_clip_val=1e-3)
    assert_params_close(module.net, reference(net0, batches(data, 1), rho=0.1, clip=1e-3))


def run_pytorch_optimizer_sam(
    po: Any, net: nn.Module, data: tuple[Tensor, Tensor], rho: float, adaptive: bool
) -> None:
    """Two steps of ``pytorch_optimizer.SAM`` around SGD(momentum, weight decay), in place."""
    opt = po.SAM(
        net.parameters(),
        torch.optim.SGD,
        rho=rho,
        adaptive=adaptive,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
    )
    for x, y in batches(data, 2):

        def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss

        closure()
        opt.step(closure)


def test_matches_pytorch_optimizer_sam() -> None:
    """Test-only reference: pytorch_optimizer.SAM (plain and adaptive = davda54's ASAM, η=0)."""
    po = pytest.importorskip("pytorch_optimizer")
    data = make_data()
    for callback, adaptive in ((SAM(rho=0.2), False), (ASAM(0.5, 0.0, "all"), True)):
        module = Tiny(make_net(), data)
        net = copy.deepcopy(module.net)
        fit(module, [callback], steps=2)
        run_pytorch_optimizer_sam(po, net, data, callback.rho, adaptive)
        # pytorch_optimizer accumulates the gradient norm in float32: agreement to ~1e-9 only
        assert_params_close(module.net, net, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------- side effects


def test_restore_is_bit_identical_with_lr_zero() -> None:
    module = Tiny(make_net(), make_data(), lr=0.0)
    before = copy.deepcopy(module.net.state_dict())
    fit(module, [ASAM(rho=2.0)], steps=2)
    for name, p in module.net.named_parameters():
        assert torch.equal(p, before[name]), name


def test_perturbed_restores_exactly_where_subtraction_does_not() -> None:
    torch.manual_seed(0)
    w = [torch.randn(1000, dtype=torch.float32)]
    e = [torch.randn(1000, dtype=torch.float32) * 7.3]
    saved = w[0].clone()
    assert not torch.equal((w[0] + e[0]) - e[0], saved)  # why we copy instead of subtracting
    with perturbed(w, e):
        assert torch.equal(w[0], saved + e[0])
    assert torch.equal(w[0], saved)
    with pytest.raises(RuntimeError), perturbed(w, e, sign=-1.0):
        raise RuntimeError("boom")
    assert torch.equal(w[0], saved)


def test_batchnorm_stats_equal_one_forward() -> None:
    data = make_data()
    module = Tiny(make_net(), data)
    twin = copy.deepcopy(module.net).train()
    fit(module, [SAM(rho=0.5)])
    twin(batches(data, 1)[0][0])  # one forward on the batch at w
    bn, ref = module.net[1], twin[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def test_logged_once_from_first_pass() -> None:
    data = make_data()
    module = Tiny(make_net(), data)
    x, y = batches(data, 1)[0]
    with torch.no_grad():
        first = float(F.cross_entropy(copy.deepcopy(module.net).train()(x), y))
    trainer = fit(module, [SAM(rho=0.5)])
    assert module.step_calls == 2
    assert module.log_calls == pytest.approx([first], rel=1e-12)
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(first, rel=1e-12)
    assert float(module.loss_sum.compute()) == pytest.approx(first, rel=1e-6)  # float32 state
    assert module.batch_end_losses == pytest.approx([first], rel=1e-12)
    assert "log" not in module.__dict__ and "log_dict" not in module.__dict__


def test_lr_scheduler_acts_on_base_optimizer() -> None:
    module = Tiny(make_net(), make_data(), scheduler=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, [SAM(rho=0.1)], steps=2)
    opt = trainer.optimizers[0]
    assert type(opt) is torch.optim.SGD
    assert trainer.lr_scheduler_configs[0].scheduler.optimizer is opt
    assert opt.param_groups[0]["lr"] == pytest.approx(LR * 0.25)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert "optimizer_step" not in trainer.strategy.__dict__  # uninstalled after fit


# --------------------------------------------------------------------- refused set-ups


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SAM(rho=0.0), r"optim\.sharpness\.rho.*top-level `rho`.*\(0, inf\).*0\.0"),
        (lambda: SAM(rho=-0.1), r"optim\.sharpness\.rho.*-0\.1"),
        (lambda: ASAM(rho=float("nan")), r"optim\.sharpness\.rho"),
        (lambda: ASAM(rho="big"), r"optim\.sharpness\.rho.*'big'"),
        (lambda: ASAM(eta=-0.01), r"optim\.sharpness\.eta.*\[0, inf\).*-0\.01"),
        (lambda: ASAM(adaptive_params="bias"), r"optim\.sharpness\.adaptive_params.*'bias'"),
        (lambda: SharpnessMax(variant="second"), r"optim\.sharpness\.variant.*'second'"),
        (lambda: from_mode("adam"), r"optim\.sharpness\.mode.*sam, asam, sharpmax.*'adam'"),
        (lambda: from_mode("sam", rho=-1), r"optim\.sharpness\.rho.*-1"),
    ],
)
def test_bad_configuration_raises(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_gradient_accumulation_is_refused() -> None:
    module = Tiny(make_net(), make_data())
    with pytest.raises(ValueError, match=r"trainer\.accumulate_grad_batches=1 \(got 2\)"):
        fit(module, [SAM()], accumulate_grad_batches=2)


def test_manual_optimization_is_refused() -> None:
    module = Tiny(make_net(), make_data())
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="automatic optimization"):
        fit(module, [SAM()])


def test_two_sharpness_callbacks_are_refused() -> None:
    module = Tiny(make_net(), make_data())
    with pytest.raises(ValueError, match="only one sharpness-aware callback"):
        fit(module, [SAM(), ASAM()])


class SkipsFirstBatch(Tiny):
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx == 0 else loss


def test_skipped_step_runs_one_pass_and_keeps_weights() -> None:
    module = SkipsFirstBatch(make_net(), make_data())
    before = copy.deepcopy(module.net.state_dict())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*returned `None`.*")
        fit(module, [SAM(rho=0.5)])
    assert module.step_calls == 1
    assert all(torch.equal(p, before[n]) for n, p in module.net.named_parameters())


def test_from_mode_builds_each_class() -> None:
    assert [from_mode(m).mode for m in ("sam", "asam", "sharpmax", "sharpmax_neg")] == [
        "sam",
        "asam",
        "sharpmax",
        "sharpmax_neg",
    ]
    assert isinstance(from_mode("asam", rho=0.1), ASAM) and from_mode("asam", rho=0.1).rho == 0.1


# --------------------------------------------------------------------- pure functions


def test_sharpness_aware_grad_with_masks_and_frozen_bn() -> None:
    """Sharp MinMax building block: SAM on one part, 2g − g' on the other, grads untouched."""
    net = make_net()
    x, y = batches(make_data(), 1)[0]
    params = list(net.parameters())
    masks = [(torch.rand_like(p) < 0.5).double() for p in params]
    bn_before = net[1].running_mean.clone()
    w_before = [p.detach().clone() for p in params]

    def loss_fn() -> Tensor:
        return F.cross_entropy(net(x), y)

    loss, d = sharpness_aware_grad(
        loss_fn, params, 0.3, objective="maximize", masks=masks, module=net
    )
    # by hand: g masked, ê on the masked part, g' at w + ê, direction (2g − g') masked
    twin = copy.deepcopy(net)
    twin[1].running_mean.copy_(bn_before)
    twin[1].num_batches_tracked.zero_()
    g = torch.autograd.grad(F.cross_entropy(twin(x), y), list(twin.parameters()))
    gm = [gi * m for gi, m in zip(g, masks, strict=True)]
    norm = math.sqrt(sum(float((gi**2).sum()) for gi in gm))
    e = [0.3 * gi / (norm + 1e-12) for gi in gm]
    with torch.no_grad():
        for q, ei in zip(twin.parameters(), e, strict=True):
            q.add_(ei)
    gp = torch.autograd.grad(F.cross_entropy(twin(x), y), list(twin.parameters()))
    for di, gi, gpi, m in zip(d, gm, gp, masks, strict=True):
        torch.testing.assert_close(di, (2 * gi - gpi) * m, rtol=1e-9, atol=1e-12)
        assert torch.all(di[m == 0] == 0)
    assert all(torch.equal(p, w) for p, w in zip(params, w_before, strict=True))
    assert all(p.grad is None for p in params)
    assert int(net[1].num_batches_tracked) == 1  # only the first pass counted
    assert loss.requires_grad is False


def test_perturbation_asam_flags_and_zero_gradient() -> None:
    w = [torch.tensor([2.0, -1.0]), torch.tensor([3.0])]
    g = [torch.tensor([1.0, 1.0]), torch.tensor([1.0])]
    e = perturbation(w, g, 1.0, adaptive=True, eta=0.5, flags=[True, False])
    t = [torch.tensor([2.5, 1.5]), torch.tensor([1.0])]
    norm = math.sqrt(2.5**2 + 1.5**2 + 1.0)
    for ei, ti, gi in zip(e, t, g, strict=True):
        torch.testing.assert_close(ei, ti * ti * gi / (norm + 1e-12))
    zero = perturbation(w, [torch.zeros(2), torch.zeros(1)], 0.1)
    assert all(torch.equal(z, torch.zeros_like(z)) for z in zero)


def test_frozen_running_stats_restores_after_forward() -> None:
    net = make_net()
    before = net[1].running_var.clone()
    with frozen_running_stats(net):
        net(torch.randn(8, 4, dtype=torch.float64))
        assert not torch.equal(net[1].running_var, before)
    assert torch.equal(net[1].running_var, before) and int(net[1].num_batches_tracked) == 0


# --------------------------------------------------------------------- Hydra presets


def test_presets_compose_and_instantiate() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sam = compose("config", overrides=["optim=sam", "rho=0.05"])
        asam = compose("config", overrides=["optim=asam", "pretrain/optim=asam"])
        smax = compose("config", overrides=["optim=sharpmax", "pretrain/optim=sam"])
    for cfg in (sam, asam, smax):  # sgd's optimizer block is reused through the defaults list
        assert cfg.optim.optimizer.momentum == 0.9 and cfg.optim.optimizer._partial_
    cb = instantiate(sam.optim.sharpness, rho=sam.rho)
    assert isinstance(cb, SAM) and cb.rho == 0.05
    assert sam.pretrain.optim.sharpness is None
    cb = instantiate(asam.optim.sharpness)
    assert isinstance(cb, ASAM) and (cb.rho, cb.eta, cb.adaptive_params) == (1.0, 0.01, "weight")
    assert isinstance(instantiate(asam.pretrain.optim.sharpness), ASAM)
    cb = instantiate(smax.optim.sharpness)
    assert isinstance(cb, SharpnessMax) and cb.variant == "first_order" and cb.rho == 0.1
    assert instantiate(smax.pretrain.optim.sharpness).rho == 0.1
    assert isinstance(cb, SharpnessAwareCallback)


# --------------------------------------------------------------------- DDP (m-sharpness)


@pytest.mark.slow
def test_ddp_replicas_perturb_with_their_own_gradient() -> None:
    """2 CPU processes (gloo): ê_r from rank r's own gradient; the step averages g'_r."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    data = make_data(n=2 * BATCH)
    for callback, objective in ((SAM(rho=0.3), "minimize"), (SharpnessMax(rho=0.3), "maximize")):
        module = Tiny(make_net(), data, rank_slices=True)
        net0 = copy.deepcopy(module.net)
        fit(module, [callback], strategy="ddp_spawn", devices=2, use_distributed_sampler=False)
        # by hand: per-rank ê and g', then the mean over ranks (DDP averages gradients)
        params = list(net0.parameters())
        d_sum = [torch.zeros_like(p) for p in params]
        for x, y in batches(data, 2):
            net = copy.deepcopy(net0)
            g = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
            e = hand_perturbation(net, g, 0.3, False, 0.0, "weight")
            with torch.no_grad():
                for q, ei in zip(net.parameters(), e, strict=True):
                    q.add_(ei)
            gp = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
            d = gp if objective == "minimize" else [2 * a - b for a, b in zip(g, gp, strict=True)]
            d_sum = [s + di for s, di in zip(d_sum, d, strict=True)]
        expected = copy.deepcopy(net0)
        with torch.no_grad():
            for p, s in zip(expected.parameters(), d_sum, strict=True):
                p.sub_(LR * (s / 2 + WD * p))
        assert_params_close(module.net, expected)
