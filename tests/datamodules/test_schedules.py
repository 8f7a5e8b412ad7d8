"""How a training epoch walks R and F: in-memory batches, drivers, chained passes, sample ids."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import CombinedLoader

from datamodules.embedded import Digits
from datamodules.splits import random_forget_set
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.methods.random_label import RandomLabel, per_sample_offsets
from unlearning.methods.scrub import SCRUB
from unlearning.methods.ugradsl import UGradSL, UGradSLPlus
from unlearning.models import SmallCNN

B = 64


@pytest.fixture(scope="module")
def digits():
    source = Digits()
    return source, random_forget_set(source.targets("train"), 0.1, seed=0)


def _batches(data, shuffle_seed=0):
    torch.manual_seed(shuffle_seed)
    loader = data.train_dataloader()
    if isinstance(loader, CombinedLoader):  # yields (batch, batch_idx, dataloader_idx)
        return [b for b, _, _ in iter(loader)]
    return list(loader)


def test_in_memory_batches_equal_per_sample_batches_under_the_same_rng(digits):
    """Batch-level fetches change nothing but speed: same samples, order and RNG stream."""
    source, forget = digits
    fast, slow = (
        UnlearningDataModule(source, forget, ("retain", "forget"), B, in_memory=flag)
        for flag in (True, False)
    )
    a, b = _batches(fast), _batches(slow)
    assert len(a) == len(b) == math.ceil(fast.set_size("retain") / B)
    for x, y in zip(a, b):
        for name in ("retain", "forget"):
            assert torch.equal(x[name][0], y[name][0]) and torch.equal(x[name][1], y[name][1])
    assert torch.equal(torch.rand(3), (torch.manual_seed(0), _batches(slow), torch.rand(3))[2])
    for name in ("forget", "test"):
        fast_eval = [y for _, y in fast.eval_dataloader(name, 100)]
        slow_eval = [y for _, y in slow.eval_dataloader(name, 100)]
        assert all(torch.equal(p, q) for p, q in zip(fast_eval, slow_eval))


def test_forget_driver_makes_an_epoch_one_pass_over_f(digits):
    source, forget = digits
    data = UnlearningDataModule(source, forget, ("retain", "forget"), B, driver="forget")
    batches = _batches(data)
    assert len(batches) == math.ceil(len(forget) / B)
    seen = torch.cat([b["forget"][1] for b in batches])
    assert len(seen) == len(forget)  # each forget sample once: no cycling
    assert sorted(np.concatenate([b["retain"][0].shape[:1] for b in batches])) == [B] * len(
        batches
    )  # every forget batch gets a full retain batch


def test_chained_passes_follow_the_epoch_plan_and_ids_index_s(digits):
    source, forget = digits
    data = UnlearningDataModule(
        source,
        forget,
        ("retain", "forget"),
        B,
        passes=lambda epoch: ("forget", "retain") if epoch == 0 else ("retain",),
        with_ids=("forget",),
    )
    assert data.reload_every_epoch
    batches = _batches(data)
    n_f, n_r = math.ceil(len(forget) / B), math.ceil(data.set_size("retain") / B)
    assert [next(iter(b)) for b in batches] == ["forget"] * n_f + ["retain"] * n_r
    ids = torch.cat([b["forget"][2] for b in batches[:n_f]])
    assert sorted(ids.tolist()) == sorted(forget.tolist())
    x, y, _ = batches[0]["forget"]
    train = source.dataset("train", augment=False)
    first = int(batches[0]["forget"][2][0])
    assert torch.equal(x[0], train[first][0]) and int(y[0]) == train[first][1]


def _fit(module, data, epochs):
    class Record(Callback):
        def __init__(self):
            self.steps = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.steps.append((trainer.current_epoch, tuple(sorted(batch))))

    record = Record()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
        reload_dataloaders_every_n_epochs=int(data.reload_every_epoch),
    )  # fmt: skip
    trainer.fit(module, data)
    return record.steps, trainer


def _data(digits, module):
    source, forget = digits
    return UnlearningDataModule(
        source, forget, module.train_sets, B, **module.epoch_schedule()
    )  # fmt: skip


def test_scrub_epochs_are_a_full_forget_pass_then_a_full_retain_pass(digits):
    torch.manual_seed(0)
    module = SCRUB(SmallCNN(10, width=8), lr=0.01, epochs=3, msteps=2)
    data = _data(digits, module)
    steps, _ = _fit(module, data, 3)
    n_f, n_r = math.ceil(data.set_size("forget") / B), math.ceil(data.set_size("retain") / B)
    expected = []
    for epoch in range(3):
        plan = [("forget",)] * n_f + [("retain",)] * n_r if epoch < 2 else [("retain",)] * n_r
        expected += [(epoch, sets) for sets in plan]
    assert steps == expected


@pytest.mark.parametrize(("cls", "driver"), [(UGradSL, "forget"), (UGradSLPlus, "retain")])
def test_ugradsl_iterates_over_f_and_plus_over_r(digits, cls, driver):
    torch.manual_seed(0)
    module = cls(SmallCNN(10, width=8), lr=0.01, epochs=2, alpha=0.9)
    data = _data(digits, module)
    steps, trainer = _fit(module, data, 2)
    assert trainer.global_step == 2 * math.ceil(data.set_size(driver) / B)
    assert all(sets == ("forget", "retain") for _, sets in steps)


def test_rl_epoch_is_one_pass_over_s_with_one_wrong_label_per_forget_sample(digits):
    """Each sample of S appears once per epoch; F samples carry a wrong label, redrawn at the
    next epoch; R samples keep theirs."""
    torch.manual_seed(0)
    module = RandomLabel(SmallCNN(10, width=8), num_classes=10)
    data = _data(digits, module)
    module.forget_ids = torch.as_tensor(digits[1])
    labels = {}
    for epoch in (0, 1):
        batches = _batches(data, shuffle_seed=epoch)
        assert len(batches) == math.ceil(data.set_size("train") / B)
        for batch in batches:
            _, y_new = module.relabel(batch, epoch)["train"]
            _, y, ids = batch["train"]
            in_f = torch.isin(ids, module.forget_ids)
            assert not (y_new[in_f] == y[in_f]).any() and torch.equal(y_new[~in_f], y[~in_f])
            labels.update({(epoch, i): c for i, c in zip(ids.tolist(), y_new.tolist())})
        assert len([k for k in labels if k[0] == epoch]) == data.set_size("train")
    changed = [labels[(0, i)] != labels[(1, i)] for i in digits[1].tolist()]
    assert np.mean(changed) > 0.7  # redrawn among 9 wrong classes: 8/9 expected to change


def test_per_sample_offsets_are_uniform_over_wrong_classes():
    ids = torch.arange(40_000)
    offsets = per_sample_offsets(ids, seed=3, epoch=0, num_classes=5)
    assert offsets.min() == 1 and offsets.max() == 4
    freq = torch.bincount(offsets, minlength=5)[1:].float() / len(ids)
    assert torch.allclose(freq, torch.tensor(0.25), atol=0.01)
    assert torch.equal(offsets, per_sample_offsets(ids, seed=3, epoch=0, num_classes=5))
    assert (offsets != per_sample_offsets(ids, seed=3, epoch=1, num_classes=5)).float().mean() > 0.7
    assert (offsets != per_sample_offsets(ids, seed=4, epoch=0, num_classes=5)).float().mean() > 0.7


@pytest.mark.parametrize("in_memory", [True, False])
def test_eval_positions_load_only_those_samples_in_that_order(digits, in_memory):
    source, forget = digits
    data = UnlearningDataModule(source, forget, in_memory=in_memory)
    (x_all, y_all), positions = next(iter(data.eval_dataloader("retain", 10_000))), [7, 0, 3]
    x, y = next(iter(data.eval_dataloader("retain", positions=np.array(positions))))
    assert torch.equal(x, x_all[positions]) and torch.equal(y, y_all[positions])
