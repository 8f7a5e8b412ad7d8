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
from unlearning.methods.saliency import forget_gradient_saliency, top_fraction_mask
from unlearning.pipeline.run import run

K = 3


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, K))


def _batch(seed=1, n=9, forget_ids=(101, 103, 104, 107)):
    """A batch of S = R ∪ F with sample ids 100…100+n−1; ``forget_ids`` are in F."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, K, (n,), generator=g)
    return {"train": (x, y, torch.arange(100, 100 + n))}, torch.tensor(forget_ids)


def test_rl_loss_is_mean_cross_entropy_over_the_batch_with_f_relabelled():
    net = _net()
    module = RandomLabel(net, num_classes=K)
    batch, module.forget_ids = _batch()
    relabelled = module.relabel(batch, epoch=2)
    x, y, ids = batch["train"]
    x_new, y_new = relabelled["train"]
    is_forget = torch.isin(ids, module.forget_ids)
    assert torch.equal(relabelled["is_forget"], is_forget) and int(is_forget.sum()) == 4
    assert torch.equal(x_new, x) and torch.equal(y_new[~is_forget], y[~is_forget])
    assert not (y_new[is_forget] == y[is_forget]).any()
    loss, parts = module.loss(relabelled)
    logits = net(x)  # one forward pass over the batch of R ∪ F (BatchNorm sees all of it)
    by_hand = sum(F.cross_entropy(logits[i : i + 1], y_new[i : i + 1]) for i in range(9)) / 9
    assert torch.allclose(loss, by_hand)
    assert torch.allclose(
        parts["loss_forget"], F.cross_entropy(logits[is_forget], y_new[is_forget])
    )
    assert RandomLabel.train_sets == ("train",) and RandomLabel.sample_id_sets == ("train",)
    assert RandomLabel(_net()).num_classes == K  # inferred from the last nn.Linear


def test_random_labels_are_wrong_uniform_and_fixed_per_sample_and_epoch():
    module = RandomLabel(_net(), num_classes=5)
    y = torch.arange(5).repeat(4000)
    ids = torch.randperm(len(y))
    module.forget_ids = ids  # the whole batch is F
    batch = {"train": (torch.zeros(len(y), 4), y, ids)}
    labels = module.relabel(batch, epoch=0)["train"][1]
    assert not (labels == y).any() and labels.min() >= 0 and labels.max() < 5
    # uniform over the 4 wrong classes: each (true, new) pair has frequency 1/4 (n = 4000 each)
    for c in range(5):
        counts = torch.bincount(labels[y == c], minlength=5).float() / 4000
        assert counts[c] == 0 and torch.allclose(
            counts[torch.arange(5) != c], torch.tensor(0.25), atol=0.03
        )
    # the same samples in the same epoch (SAM's two passes) keep their labels in any batch
    # order; another epoch redraws them
    order = torch.randperm(len(y))
    shuffled = {"train": tuple(t[order] for t in batch["train"])}
    assert torch.equal(labels[order], module.relabel(shuffled, 0)["train"][1])
    assert (labels != module.relabel(batch, 1)["train"][1]).float().mean() > 0.5


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
    module.forget_ids = torch.arange(40, 52)  # S = R (ids 0…39) ∪ F (ids 40…51)
    x, y = torch.cat([x_r, x_f]), torch.cat([y_r, y_f])
    loaders = CombinedLoader(
        {"train": DataLoader(TensorDataset(x, y, torch.arange(52)), batch_size=8, shuffle=True)}
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
    """14 steps of SGD with momentum 0.9 and (large) weight decay: only the mask moves."""
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
    # digits preset (conf/dataset_method/digits_<method>.yaml), seed 0: F falls below the
    # oracle's 97.2% (by >= 5 points for RL, >= 3 for SalUn); R stays within 1.5 points of f_A
    # for RL, 1 for SalUn (the sweeps in docs/methods/; margins cover 1 vs 2 CPU threads)
    min_drop, tolerance = {"rl": (0.05, 0.015), "salun": (0.03, 0.01)}[method]
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= min_drop
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= tolerance


@pytest.mark.parametrize("method", ["rl", "salun"])
def test_composes_with_sam(config, method):
    result = run(config(f"method={method}", "optim=sam", "method.epochs=1"))
    assert result["status"] == "ok"
    assert result["config"]["optim"]["name"] == "sam"
