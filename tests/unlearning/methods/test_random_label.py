"""Random Label and SalUn (SPEC §2): objective, label draws, the frozen part, the pipeline."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.sharpness import SAM
from unlearning.methods.random_label import RandomLabel, SalUn
from unlearning.pipeline import run
from unlearning.saliency import forget_gradient_saliency, top_fraction_mask

K = 3


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, K))


def _batch(seed=1, n_retain=5, n_forget=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "retain": (
            torch.randn(n_retain, 4, generator=g),
            torch.randint(0, K, (n_retain,), generator=g),
        ),
        "forget": (
            torch.randn(n_forget, 4, generator=g),
            torch.randint(0, K, (n_forget,), generator=g),
        ),
    }


def test_rl_loss_is_mean_cross_entropy_over_retain_and_relabelled_forget():
    net = _net()
    module = RandomLabel(net, num_classes=K)
    batch = _batch()
    relabelled = module.relabel(batch, epoch=2, batch_idx=7)
    (x_r, y_r), (x_f, y_f) = batch["retain"], relabelled["forget"]
    assert torch.equal(relabelled["retain"][1], y_r) and torch.equal(relabelled["forget"][0], x_f)
    loss, parts = module.loss(relabelled)
    logits = net(torch.cat([x_r, x_f]))  # one forward pass over the union (BatchNorm sees it)
    by_hand = (
        sum(F.cross_entropy(logits[i : i + 1], y_r[i : i + 1]) for i in range(5))
        + sum(F.cross_entropy(logits[5 + i : 6 + i], y_f[i : i + 1]) for i in range(4))
    ) / 9
    assert torch.allclose(loss, by_hand)
    assert torch.allclose(parts["loss_forget"], F.cross_entropy(logits[5:], y_f))
    assert RandomLabel.train_sets == ("retain", "forget")
    assert RandomLabel(_net()).num_classes == K  # inferred from the last nn.Linear


def test_random_labels_are_wrong_uniform_and_fixed_per_step():
    module = RandomLabel(_net(), num_classes=5)
    y = torch.arange(5).repeat(4000)
    batch = {"retain": (torch.zeros(1, 4), y[:1]), "forget": (torch.zeros(len(y), 4), y)}
    labels = module.relabel(batch, epoch=0, batch_idx=3)["forget"][1]
    assert not (labels == y).any() and labels.min() >= 0 and labels.max() < 5
    # uniform over the 4 wrong classes: each (true, new) pair has frequency 1/4 (n = 4000 each)
    for c in range(5):
        counts = torch.bincount(labels[y == c], minlength=5).float() / 4000
        assert counts[c] == 0 and torch.allclose(
            counts[torch.arange(5) != c], torch.tensor(0.25), atol=0.03
        )
    # the same step draws the same labels (SAM's two passes); another epoch or step redraws them
    assert torch.equal(labels, module.relabel(batch, 0, 3)["forget"][1])
    assert (labels != module.relabel(batch, 1, 3)["forget"][1]).float().mean() > 0.5
    assert (labels != module.relabel(batch, 0, 4)["forget"][1]).float().mean() > 0.5


def _fit_salun(sharpness, epochs=2):
    net = _net()
    g = torch.Generator().manual_seed(5)
    x_r, y_r = torch.randn(40, 4, generator=g), torch.randint(0, K, (40,), generator=g)
    x_f, y_f = torch.randn(12, 4, generator=g), torch.randint(0, K, (12,), generator=g)
    masks = top_fraction_mask(forget_gradient_saliency(net, [(x_f, y_f)]), 0.3)
    optimizer = partial(torch.optim.SGD, momentum=0.9, weight_decay=5e-2)
    module = SalUn(net, optimizer=optimizer, lr=0.1, epochs=epochs, num_classes=K, fraction=0.3)
    module.set_forget_mask(masks)
    f_a = {n: p.detach().clone() for n, p in net.named_parameters()}
    loaders = CombinedLoader(
        {
            "retain": DataLoader(TensorDataset(x_r, y_r), batch_size=8, shuffle=True),
            "forget": DataLoader(TensorDataset(x_f, y_f), batch_size=8, shuffle=True),
        },
        mode="max_size_cycle",
    )
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[sharpness] if sharpness else [],
    )
    trainer.fit(module, loaders)
    return net, masks, f_a


@pytest.mark.parametrize("sharpness", [None, SAM(rho=0.1)], ids=["sgd", "sam"])
def test_salun_keeps_non_salient_entries_bit_exactly_at_f_a(sharpness):
    """10 steps of SGD with momentum 0.9 and (large) weight decay: only the mask moves."""
    net, masks, f_a = _fit_salun(sharpness)
    moved = 0
    for name, p in net.named_parameters():
        mask = masks[name]
        assert torch.equal(p.detach()[~mask], f_a[name][~mask]), name
        moved += int((p.detach()[mask] != f_a[name][mask]).sum())
    assert moved == sum(int(m.sum()) for m in masks.values())  # every salient entry moved


def test_bad_settings_name_their_key():
    with pytest.raises(ValueError, match=r"method\.num_classes"):
        RandomLabel(_net(), num_classes=1)
    with pytest.raises(ValueError, match=r"method\.num_classes"):
        RandomLabel(nn.Conv2d(1, 2, 3))  # nothing to infer K from
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"method\.fraction"):
            SalUn(_net(), fraction=bad)
    with pytest.raises(RuntimeError, match="set_forget_mask"):
        SalUn(_net()).on_after_backward()


@pytest.mark.parametrize("method", ["rl", "salun"])
def test_forgets_on_the_embedded_default(config, method):
    m = run(config(f"method={method}"))["metrics"]
    # digits preset (conf/dataset_method/digits_<method>.yaml), seed 0: F falls by >= 5 points;
    # R stays within 1.5 points of f_A for RL, 2.5 for SalUn (the sweeps in docs/methods/)
    tolerance = {"rl": 0.015, "salun": 0.025}[method]
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 0.05
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= tolerance


@pytest.mark.parametrize("method", ["rl", "salun"])
def test_composes_with_sam(config, method):
    result = run(config(f"method={method}", "optim=sam", "method.epochs=1"))
    assert result["status"] == "ok"
    assert result["config"]["optim"]["name"] == "sam"
