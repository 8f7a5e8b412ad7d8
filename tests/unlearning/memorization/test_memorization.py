"""Feldman–Zhang memorization estimator (000 eq. 9, SPEC §4): formula, subsets, strategies,
resume and a label-noise behaviour check."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.embedded import Digits
from unlearning.memorization.estimator import (
    MemorizationResult,
    TrainConfig,
    estimate_memorization,
    load_score_file,
    memorization_from_matrices,
    save_score_file,
    subset_masks,
    train_members,
)
from unlearning.models import SmallCNN


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine a second thread only adds spin-waiting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    ds = Digits().dataset("train", augment=False)
    return ds.x, ds.y


def tiny_model(width: int = 8):
    return functools.partial(SmallCNN, num_classes=10, in_channels=1, width=width)


# ------------------------------------------------------------------ the formula (000 eq. 9)


def test_from_matrices_equals_hand_computed_formula() -> None:
    # 4 members, 3 samples.
    in_mask = np.array(
        [
            [1, 1, 0],
            [1, 0, 0],
            [0, 1, 1],
            [1, 0, 1],
        ],
        dtype=bool,
    )
    correct = np.array(
        [
            [1, 1, 1],
            [1, 0, 0],
            [0, 1, 1],
            [0, 1, 0],
        ],
        dtype=bool,
    )
    # sample 0: in = members {0,1,3} → correct 1,1,0 → p_in = 2/3; out = {2} → 0 → p_out = 0
    # sample 1: in = {0,2} → 1,1 → p_in = 1;          out = {1,3} → 0,1 → p_out = 1/2
    # sample 2: in = {2,3} → 1,0 → p_in = 1/2;        out = {0,1} → 1,0 → p_out = 1/2
    expected = np.array([2 / 3 - 0, 1 - 1 / 2, 1 / 2 - 1 / 2])
    expected_se = np.array(
        [
            np.sqrt((2 / 3) * (1 / 3) / 3 + 0.0),
            np.sqrt(0.0 + 0.5 * 0.5 / 2),
            np.sqrt(0.5 * 0.5 / 2 + 0.5 * 0.5 / 2),
        ]
    )
    scores, stderr = memorization_from_matrices(in_mask, correct)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stderr, expected_se, rtol=0, atol=1e-12)


def test_from_matrices_nan_where_never_in_or_out() -> None:
    in_mask = np.array([[1, 0, 1], [1, 0, 0]], dtype=bool)  # sample 0 never out, 1 never in
    correct = np.ones((2, 3), dtype=bool)
    scores, stderr = memorization_from_matrices(in_mask, correct)
    assert np.isnan(scores[:2]).all() and np.isnan(stderr[:2]).all()
    assert scores[2] == 0.0 and stderr[2] == 0.0


def test_from_matrices_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must be equal"):
        memorization_from_matrices(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


# ------------------------------------------------------------------ subsets


def test_subset_masks_exact_size_seeded_and_prefix_stable() -> None:
    n = 101
    masks = subset_masks(n, 6, 0.7, seed=3)
    assert masks.shape == (6, n) and masks.dtype == bool
    assert (masks.sum(1) == round(0.7 * n)).all()
    np.testing.assert_array_equal(masks, subset_masks(n, 6, 0.7, seed=3))
    assert not np.array_equal(masks, subset_masks(n, 6, 0.7, seed=4))
    assert len({row.tobytes() for row in masks}) == 6  # members draw different subsets
    # More members extend fewer members (what makes an estimate extendable / resumable).
    np.testing.assert_array_equal(subset_masks(n, 3, 0.7, seed=3), masks[:3])
    np.testing.assert_array_equal(subset_masks(n, 2, 0.7, seed=3, start=4), masks[4:])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001])
def test_subset_masks_rejects_degenerate_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        subset_masks(100, 2, fraction, seed=0)


# ------------------------------------------------------------------ strategies agree


def test_vmap_ensemble_matches_members_trained_one_at_a_time(digits) -> None:
    x, y = digits[0][:200], digits[1][:200]
    masks = subset_masks(200, 4, 0.7, seed=0)
    cfg = TrainConfig(epochs=2, seed=0)
    seq = torch.cat([o for _, o in train_members(tiny_model(), x, y, range(4), masks, cfg)])
    ids, outs = [], []
    # chunk_size=3: one full chunk and one of a single member
    for chunk_ids, out in train_members(
        tiny_model(), x, y, range(4), masks, cfg, strategy="vmap", chunk_size=3
    ):
        ids += chunk_ids
        outs.append(out)
    vm = torch.cat(outs)
    assert ids == [0, 1, 2, 3]
    assert vm.shape == seq.shape == (4, 200, 10)
    torch.testing.assert_close(vm, seq, rtol=1e-4, atol=1e-4)
    assert torch.equal(vm.argmax(-1), seq.argmax(-1))
    # The members really differ (own init, own subset, own batch order) ...
    assert not torch.allclose(seq[0], seq[1], atol=1e-2)
    # ... and each is reproducible from (seed, k) alone.
    again = next(iter(train_members(tiny_model(), x, y, [2], masks[2:3], cfg)))[1]
    torch.testing.assert_close(again[0], seq[2], rtol=0, atol=0)


def test_vmap_and_sequential_estimates_agree(digits) -> None:
    x, y = digits[0][:150], digits[1][:150]
    kw = dict(members=4, epochs=2, seed=1, progress=False)
    a = estimate_memorization(tiny_model(), x, y, strategy="sequential", **kw)
    b = estimate_memorization(tiny_model(), x, y, strategy="vmap", chunk_size=4, **kw)
    assert a.strategy == "sequential" and b.strategy == "vmap"
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_processes_match_sequential(digits) -> None:
    x, y = digits[0][:120], digits[1][:120]
    masks = subset_masks(120, 3, 0.7, seed=0)
    cfg = TrainConfig(epochs=1, seed=0)
    seq = dict(
        (ids[0], out[0]) for ids, out in train_members(tiny_model(), x, y, range(3), masks, cfg)
    )
    proc = dict(
        (ids[0], out[0])
        for ids, out in train_members(
            tiny_model(), x, y, range(3), masks, cfg, strategy="processes", workers=2
        )
    )
    assert sorted(proc) == [0, 1, 2]
    for k in range(3):
        torch.testing.assert_close(proc[k], seq[k], rtol=1e-4, atol=1e-4)


def test_unknown_strategy_is_rejected(digits) -> None:
    with pytest.raises(ValueError, match="strategy"):
        estimate_memorization(tiny_model(), digits[0][:50], digits[1][:50], strategy="gpu")


# ------------------------------------------------------------------ resume


def _same(a: MemorizationResult, b: MemorizationResult) -> None:
    np.testing.assert_array_equal(a.in_mask, b.in_mask)
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.stderr, b.stderr)


def test_resume_trains_only_missing_members(digits, tmp_path: Path) -> None:
    x, y = digits[0][:150], digits[1][:150]
    kw = dict(epochs=1, seed=0, progress=False, strategy="sequential")
    full = estimate_memorization(tiny_model(), x, y, members=4, **kw)
    first = estimate_memorization(tiny_model(), x, y, members=2, work_dir=tmp_path, **kw)
    assert first.trained == 2 and len(list(tmp_path.glob("member_*.npy"))) == 2
    more = estimate_memorization(tiny_model(), x, y, members=4, work_dir=tmp_path, **kw)
    assert more.trained == 2 and len(list(tmp_path.glob("member_*.npy"))) == 4
    _same(more, full)
    np.testing.assert_array_equal(first.correct, full.correct[:2])
    again = estimate_memorization(tiny_model(), x, y, members=4, work_dir=tmp_path, **kw)
    assert again.trained == 0
    _same(again, full)


class Interrupt(Exception):
    pass


def test_interrupted_estimate_resumes_to_the_uninterrupted_result(digits, tmp_path: Path) -> None:
    x, y = digits[0][:150], digits[1][:150]
    kw = dict(members=5, epochs=1, seed=2, progress=False, strategy="vmap", chunk_size=2)
    full = estimate_memorization(tiny_model(), x, y, **kw)

    def stop_after_first_chunk(done: int, total: int) -> None:
        assert total == 5
        if done >= 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        estimate_memorization(
            tiny_model(), x, y, work_dir=tmp_path, callback=stop_after_first_chunk, **kw
        )
    assert sorted(p.name for p in tmp_path.glob("member_*.npy")) == [
        "member_000000.npy",
        "member_000001.npy",
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    resumed = estimate_memorization(tiny_model(), x, y, work_dir=tmp_path, **kw)
    assert resumed.trained == 3
    _same(resumed, full)


def test_work_dir_of_other_settings_is_refused(digits, tmp_path: Path) -> None:
    x, y = digits[0][:100], digits[1][:100]
    kw = dict(members=2, seed=0, progress=False, work_dir=tmp_path)
    estimate_memorization(tiny_model(), x, y, epochs=1, **kw)
    with pytest.raises(ValueError, match="epochs"):
        estimate_memorization(tiny_model(), x, y, epochs=2, **kw)
    with pytest.raises(ValueError, match="fingerprint"):
        estimate_memorization(tiny_model(), x, (y + 1) % 10, epochs=1, **kw)


# ------------------------------------------------------------------ score files


def test_score_file_round_trip_and_checks(digits, tmp_path: Path) -> None:
    x, y = digits[0][:100], digits[1][:100]
    res = estimate_memorization(tiny_model(), x, y, members=3, epochs=1, progress=False)
    path = save_score_file(tmp_path / "mem.npz", res, y.numpy())
    np.testing.assert_array_equal(load_score_file(path, 100, y.numpy()), res.scores)
    with pytest.raises(ValueError, match="has 100 scores but the training set has 99"):
        load_score_file(path, 99)
    with pytest.raises(ValueError, match="tr_labels"):
        load_score_file(path, 100, (y.numpy() + 1) % 10)
    np.savez(tmp_path / "public.npz", tr_mem=np.linspace(0, 1, 100))  # scores only
    assert load_score_file(tmp_path / "public.npz", 100, y.numpy()).shape == (100,)
    with pytest.raises(ValueError, match="no key 'tr_mem'"):
        np.savez(tmp_path / "other.npz", mem=np.zeros(100))
        load_score_file(tmp_path / "other.npz", 100)


# ------------------------------------------------------------------ behaviour: label noise


def _noisy(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Flip ``fraction`` of the labels to a different random class; returns labels, flip mask."""
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.choice(n, size=int(round(fraction * n)), replace=False)
    noisy = y.clone()
    noisy[idx] = (y[idx] + torch.from_numpy(rng.integers(1, 10, size=len(idx)))) % 10
    flipped = np.zeros(n, dtype=bool)
    flipped[idx] = True
    assert (noisy[idx] != y[idx]).all()
    return noisy, flipped


def test_flipped_labels_are_memorized_more(digits) -> None:
    x, y = digits[0][:300], digits[1][:300]
    noisy, flipped = _noisy(y, 0.1, seed=0)
    res = estimate_memorization(
        tiny_model(32),
        x,
        noisy,
        members=16,
        epochs=20,
        batch_size=32,
        seed=0,
        strategy="vmap",
        chunk_size=16,
        progress=False,
    )
    assert res.undefined <= 3
    mem_flipped = np.nanmean(res.scores[flipped])
    mem_clean = np.nanmean(res.scores[~flipped])
    # measured: ≈0.79 vs ≈0.08 (members fit the wrong label only when they see it)
    assert mem_flipped > mem_clean + 0.3
    assert np.all(np.isnan(res.stderr) | (res.stderr >= 0))


@pytest.mark.slow
def test_flipped_labels_are_memorized_more_on_all_digits(digits) -> None:
    # At the estimator's defaults (10 epochs, batch 64) SmallCNN does not fit the flipped labels
    # of the full digits set (in-subset accuracy ≈ 0.89, flipped ≈ clean ≈ 0.035); 30 epochs at
    # batch 32 do (measured ≈ 0.88 vs 0.06, ~30 s).
    x, y = digits
    noisy, flipped = _noisy(y, 0.1, seed=1)
    res = estimate_memorization(
        tiny_model(32),
        x,
        noisy,
        members=16,
        epochs=30,
        batch_size=32,
        seed=0,
        strategy="vmap",
        chunk_size=16,
        progress=False,
    )
    assert res.undefined < 20  # with K=16, 0.7^16 + 0.3^16 ≈ 0.3% of samples are never out
    assert np.nanmean(res.scores[flipped]) > np.nanmean(res.scores[~flipped]) + 0.5
    # mislabeled points dominate the top of the ranking
    top = np.argsort(-np.nan_to_num(res.scores, nan=-1.0))[: flipped.sum()]
    assert flipped[top].mean() > 0.7
