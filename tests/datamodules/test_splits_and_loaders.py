"""Forget-set selection and the joint retain/forget loaders."""

import math

import numpy as np
import pytest

from datamodules.embedded import Digits, SignalNoise
from datamodules.errors import DataConfigError
from datamodules.splits import forget_count, random_forget_set
from datamodules.unlearning_datamodule import UnlearningDataModule


def test_forget_count_accepts_fractions_and_counts():
    assert forget_count(0.05, 1000) == 50
    assert forget_count(72, 1000) == 72
    for bad in (0, 1000, 1500, -3, 0.0001, 2.5, "a"):
        with pytest.raises(DataConfigError, match=r"split\.size"):
            forget_count(bad, 1000)


def test_stratified_random_split_keeps_class_proportions_and_is_seeded():
    targets = np.repeat(np.arange(4), [400, 300, 200, 100])
    forget = random_forget_set(targets, 0.1, seed=3)
    assert len(forget) == 100 and len(np.unique(forget)) == 100
    assert np.bincount(targets[forget]).tolist() == [40, 30, 20, 10]
    assert np.array_equal(forget, random_forget_set(targets, 0.1, seed=3))
    assert not np.array_equal(forget, random_forget_set(targets, 0.1, seed=4))
    plain = random_forget_set(targets, 37, seed=0, stratified=False)
    assert len(plain) == 37


def test_joint_loader_draws_retain_and_forget_each_step_and_cycles_forget():
    source = Digits()
    forget = random_forget_set(source.targets("train"), 0.05, seed=0)
    data = UnlearningDataModule(source, forget, ("retain", "forget"), batch_size=64)
    n_retain, n_forget = data.set_size("retain"), data.set_size("forget")
    assert n_retain + n_forget == len(source.targets("train")) and n_forget == len(forget)
    loader = data.train_dataloader()
    batches = list(iter(loader))
    assert len(batches) == math.ceil(n_retain / 64)  # |R|/B steps per epoch (000 §2.2)
    forget_seen = 0
    for batch, _, _ in batches:
        assert set(batch) == {"retain", "forget"}
        x, y = batch["forget"]
        assert x.shape[1:] == (1, 8, 8)
        forget_seen += len(y)
    assert forget_seen > n_forget  # F was cycled
    forget_labels = set(source.targets("train")[forget].tolist())
    assert (
        set(data.eval_dataloader("forget").dataset[i][1] for i in range(n_forget)) <= forget_labels
    )


def test_digits_split_is_fixed_and_standardised():
    a, b = Digits(), Digits()
    assert np.array_equal(a.targets("test"), b.targets("test"))
    x = a.dataset("train", augment=False)
    assert len(x) == 1438 and len(a.dataset("test", augment=False)) == 359
    stacked = x.x
    assert abs(float(stacked.mean())) < 1e-4 and abs(float(stacked.std()) - 1) < 1e-3


def test_signal_noise_images_hold_one_signal_patch_and_repeated_noise():
    source = SignalNoise(n_train=20, n_test=5, patches=3, dim=16, signal_strength=2.0)
    data = source.dataset("train", augment=False)
    for i in range(len(data)):
        x, y = data[i]
        patches = x[0]  # (P, d)
        sign = 1.0 if y == 1 else -1.0
        is_signal = [bool((p == sign * source.phi).all()) for p in patches]
        assert sum(is_signal) == 1
        noise = patches[[j for j, s in enumerate(is_signal) if not s]]
        assert (noise == source.noise[i]).all()


def test_memorization_levels_pick_highest_lowest_and_closest_to_half():
    from datamodules.splits import (
        level_overlaps,
        memorization_levels,
        mixed_memorization_forget_set,
    )

    scores = np.array([0.9, 0.1, 0.5, 0.45, 0.0, 1.0, np.nan, 0.6, 0.2, 0.55])
    levels = memorization_levels(scores, 3)
    assert levels["high"].tolist() == [0, 5, 7]
    assert levels["low"].tolist() == [1, 4, 8]
    assert levels["mid"].tolist() == [2, 3, 9]
    assert 6 not in np.concatenate(list(levels.values()))  # NaN scores are never chosen
    overlapping = memorization_levels(scores, 4)
    assert overlapping["high"].tolist() == [0, 5, 7, 9]
    assert overlapping["mid"].tolist() == [2, 3, 7, 9]  # 0.6 and 0.55 are both high and mid
    assert level_overlaps(overlapping)["high_mid"] == 0.5
    disjoint = memorization_levels(np.append(scores, [0.5, 0.52, 0.3]), 4, disjoint=True)
    assert not set(disjoint["mid"]) & set(disjoint["high"])
    assert not set(disjoint["low"]) & (set(disjoint["high"]) | set(disjoint["mid"]))
    mix = mixed_memorization_forget_set(scores, 3)
    assert mix.tolist() == [2, 4, 5]  # one each of high (5), mid (2), low (4)


def test_disjoint_levels_that_run_out_of_samples_name_the_key():
    from datamodules.splits import memorization_levels

    with pytest.raises(DataConfigError, match=r"split\.size"):
        memorization_levels(np.linspace(0, 1, 10), 4, disjoint=True)


def test_class_forget_set_takes_the_whole_class():
    from datamodules.splits import class_forget_set

    targets = np.array([0, 1, 2, 1, 1, 0])
    assert class_forget_set(targets, 1).tolist() == [1, 3, 4]
    with pytest.raises(DataConfigError, match=r"split\.label"):
        class_forget_set(targets, 7)


def test_label_noise_flips_a_fixed_fraction_to_other_classes():
    from datamodules.sources import build_source

    config = {"_target_": "datamodules.embedded.Digits", "label_noise": 0.1, "label_noise_seed": 3}
    source = build_source(config)
    clean = Digits().targets("train")
    noisy = source.targets("train")
    changed = np.flatnonzero(noisy != clean)
    assert changed.tolist() == source.flipped.tolist()
    assert len(changed) == round(0.1 * len(clean))
    data = source.dataset("train", augment=False)
    assert all(data[i][1] == noisy[i] for i in changed[:20])
    assert np.array_equal(source.targets("test"), Digits().targets("test"))
    assert np.array_equal(build_source(config).flipped, source.flipped)  # seeded
    assert build_source({**config, "label_noise": 0.0}).__class__ is Digits


def test_group_split_forgets_one_fine_class_of_cifar20_and_drops_it_from_test(tmp_path):
    from datamodules.real_datasets import CIFAR20
    from datamodules.splits import select_split
    from tests.datamodules.test_real_datasets import write_cifar100

    write_cifar100(tmp_path)  # fine labels: train [0, 99, 5, 42, 42, 7], test [99, 3, 64, 0]
    source = CIFAR20(root=str(tmp_path))
    split = select_split({"name": "group", "fine_label": 42}, source)
    assert split.forget.tolist() == [3, 4] and split.test.tolist() == [0, 1, 2, 3]
    split = select_split({"name": "group", "fine_label": 99}, source)
    assert split.forget.tolist() == [1] and split.test.tolist() == [1, 2, 3]
    with pytest.raises(DataConfigError, match="cifar20"):
        select_split({"name": "group", "fine_label": 1}, Digits())


def test_class_split_keeps_the_other_classes_in_the_test_set():
    from datamodules.splits import select_split

    source = Digits()
    split = select_split({"name": "class", "label": 4}, source)
    assert set(source.targets("train")[split.forget]) == {4}
    assert 4 not in set(source.targets("test")[split.test])
    assert len(split.test) == (source.targets("test") != 4).sum()
