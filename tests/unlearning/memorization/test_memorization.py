"""The Feldman–Zhang estimator (000 eq. 9, issue #15): the formula, the subsets, members that
are the pretraining recipe on their subset (the same weights as the Lightning stage, through the
fast path or Lightning itself), margins on every sample, resume member by member, score files,
and the behaviour that flipped labels are memorized."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.sources import build_source
from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.evaluation.metrics.features import model_outputs
from unlearning.evaluation.metrics.klom import margins
from unlearning.memorization.estimator import (
    MemorizationResult,
    estimate_memorization,
    load_score_file,
    memorization_from_matrices,
    save_score_file,
    subset_masks,
)
from unlearning.pipeline.stages.scores import (
    MEMBERS_FILE,
    compute_memorization,
    load_members,
    member_recipe,
    member_trainer,
)
from unlearning.pipeline.stages.training import load_model, train_from_scratch

#: members of one epoch of a narrow SmallCNN: ~0.1 s each through the fast path
TINY = ["pretrain.epochs=1", "model.width=8", "trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine a second thread only adds spin-waiting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _estimate(cfg, source=None, **kw) -> MemorizationResult:
    source = source or build_source(cfg.dataset)
    kw = {"members": 4, "fraction": 0.7, "seed": 0, "progress": False, **kw}
    return estimate_memorization(member_trainer(cfg, source), source.targets("train"), **kw)


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


# ------------------------------------------------------------ members = the pretraining recipe


@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_member_k_is_the_pretraining_stage_on_its_subset_seeded_k(config, tmp_path, optim):
    """Member k's margins are those of the Lightning pretraining stage itself trained on S_k (R
    = S_k) with ``pretrain.seed = memorization.seed + k``, bit for bit: optimizer A (here SAM),
    scheduler and augmentation are the stage's."""
    cfg = config(*TINY, f"pretrain/optim={optim}", "memorization.seed=5")
    source = build_source(cfg.dataset)
    mask = subset_masks(len(source.targets("train")), 3, 0.7, seed=5)[2]
    got, correct = member_trainer(cfg, source)(2, mask, tmp_path / "m")

    reference = config(*TINY, f"pretrain/optim={optim}", "pretrain.seed=7")
    train_from_scratch(reference, source, np.flatnonzero(~mask), "retain", tmp_path)
    net = load_model(reference, tmp_path)
    data = UnlearningDataModule(source, None)
    out = model_outputs(net, data.eval_dataloader("train"), embeddings=False)
    np.testing.assert_array_equal(got, margins(out.logits, out.labels).astype(np.float32))
    np.testing.assert_array_equal(correct, (out.logits.argmax(-1) == out.labels).numpy())
    assert got.dtype == np.float32 and correct.dtype == bool


def test_without_the_fast_path_members_train_through_lightning(config, tmp_path, caplog):
    """A setting the fast path does not follow (a batch limit) trains members with the
    Lightning stage; the estimate still records margins for every member."""
    cfg = config(*TINY, "trainer.limit_train_batches=2")
    with caplog.at_level("INFO", logger="unlearning.pipeline.stages.scores"):
        res = _estimate(cfg, members=2)
    assert "fast path off: trainer.limit_train_batches" in caplog.text
    assert res.margins.shape == (2, 1438) and np.isfinite(res.margins).all()


def test_the_stage_saves_members_with_subsets_margins_and_correctness(config, tmp_path):
    cfg = config(*TINY, "split=mem_high", "memorization.members=3", "memorization.workers=1")
    source = build_source(cfg.dataset)
    meta = compute_memorization(cfg, source, tmp_path)
    assert meta["source"] == "estimate" and meta["members"] == 3
    members = load_members(tmp_path)
    assert members is not None and (tmp_path / MEMBERS_FILE).is_file()
    assert members["in_mask"].shape == members["margins"].shape == (3, 1438)
    assert members["margins"].dtype == np.float32 and members["correct"].dtype == bool
    np.testing.assert_array_equal(members["in_mask"], subset_masks(1438, 3, 0.7, seed=0))
    # a member is correct where its margin is positive (the converse need not hold)
    assert members["correct"][members["margins"] > 0].all()
    assert not (tmp_path / "members").exists()  # the per-member files are gone
    assert load_members(tmp_path / "absent") is None


def test_worker_processes_train_the_same_members(config, tmp_path):
    """``memorization.workers=2``: members trained by two spawned processes (each rebuilding the
    member trainer from the config) are the members trained here, saved in the store as they
    finish; one process with its own threads setting is the reference."""
    cfg = config(*TINY, "memorization.members=3", "memorization.workers=2", "split=mem_high")
    compute_memorization(cfg, build_source(cfg.dataset), tmp_path)
    here = _estimate(cfg, members=3)
    members = load_members(tmp_path)
    assert members is not None
    np.testing.assert_array_equal(members["margins"], here.margins)
    np.testing.assert_array_equal(members["correct"], here.correct)


# ------------------------------------------------------------------ resume


def _same(a: MemorizationResult, b: MemorizationResult) -> None:
    np.testing.assert_array_equal(a.in_mask, b.in_mask)
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.margins, b.margins)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.stderr, b.stderr)


def test_resume_trains_only_missing_members(config, tmp_path: Path) -> None:
    cfg = config(*TINY)
    source = build_source(cfg.dataset)
    meta = member_recipe(cfg)
    full = _estimate(cfg, source, members=4)
    first = _estimate(cfg, source, members=2, work_dir=tmp_path, meta=meta)
    assert first.trained == 2 and len(list(tmp_path.glob("member_*.npz"))) == 2
    more = _estimate(cfg, source, members=4, work_dir=tmp_path, meta=meta)
    assert more.trained == 2 and len(list(tmp_path.glob("member_*.npz"))) == 4
    _same(more, full)
    np.testing.assert_array_equal(first.margins, full.margins[:2])
    again = _estimate(cfg, source, members=4, work_dir=tmp_path, meta=meta)
    assert again.trained == 0
    _same(again, full)


class Interrupt(Exception):
    pass


def test_interrupted_estimate_resumes_to_the_uninterrupted_result(config, tmp_path: Path) -> None:
    cfg = config(*TINY, "pretrain/optim=sam")
    source = build_source(cfg.dataset)
    kw = {"members": 4, "seed": 2, "meta": member_recipe(cfg)}
    full = _estimate(cfg, source, **kw)

    def stop_after_two(done: int, total: int) -> None:
        assert total == 4
        if done >= 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _estimate(cfg, source, work_dir=tmp_path, callback=stop_after_two, **kw)
    assert sorted(p.name for p in tmp_path.glob("member_*.npz")) == [
        "member_000000.npz",
        "member_000001.npz",
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files
    resumed = _estimate(cfg, source, work_dir=tmp_path, **kw)
    assert resumed.trained == 2
    _same(resumed, full)


def test_work_dir_of_another_recipe_is_refused(config, tmp_path: Path) -> None:
    cfg = config(*TINY)
    source = build_source(cfg.dataset)
    _estimate(cfg, source, members=2, work_dir=tmp_path, meta=member_recipe(cfg))
    other = config(*TINY, "pretrain/optim=sam")
    with pytest.raises(ValueError, match="pretrain"):
        _estimate(other, source, members=2, work_dir=tmp_path, meta=member_recipe(other))
    with pytest.raises(ValueError, match="fraction"):
        _estimate(cfg, source, members=2, fraction=0.5, work_dir=tmp_path, meta=member_recipe(cfg))


# ------------------------------------------------------------------ score files


def test_score_file_round_trip_and_checks(config, tmp_path: Path) -> None:
    cfg = config(*TINY)
    source = build_source(cfg.dataset)
    y = source.targets("train")
    res = _estimate(cfg, source, members=3)
    path = save_score_file(tmp_path / "mem.npz", res, y)
    np.testing.assert_array_equal(load_score_file(path, 1438, y), res.scores)
    with pytest.raises(ValueError, match="has 1438 scores but the training set has 99"):
        load_score_file(path, 99)
    with pytest.raises(ValueError, match="tr_labels"):
        load_score_file(path, 1438, (y + 1) % 10)
    np.savez(tmp_path / "public.npz", tr_mem=np.linspace(0, 1, 100))  # scores only
    assert load_score_file(tmp_path / "public.npz", 100).shape == (100,)
    with pytest.raises(ValueError, match="no key 'tr_mem'"):
        np.savez(tmp_path / "other.npz", mem=np.zeros(100))
        load_score_file(tmp_path / "other.npz", 100)


# ------------------------------------------------------------------ behaviour: label noise


@pytest.mark.slow
def test_flipped_labels_are_memorized_more(config) -> None:
    """With 10% of the labels flipped, members fit a wrong label only when they train on it: the
    flipped samples get high scores and dominate the top of the ranking (16 members). The
    default digits recipe (15 epochs at batch 64) does not fit the flipped labels (measured
    0.09 vs 0.04); 30 epochs at batch 32 do."""
    cfg = config(
        "dataset.label_noise=0.1",
        "pretrain.epochs=30",
        "pretrain.batch_size=32",
        "trainer.enable_progress_bar=false",
    )
    source = build_source(cfg.dataset)
    res = _estimate(cfg, source, members=16)
    flipped = np.zeros(len(res.scores), dtype=bool)
    flipped[source.flipped] = True
    assert res.undefined < 20  # with K=16, 0.7^16 + 0.3^16 ≈ 0.3% of samples are never out
    assert np.nanmean(res.scores[flipped]) > np.nanmean(res.scores[~flipped]) + 0.5
    top = np.argsort(-np.nan_to_num(res.scores, nan=-1.0))[: flipped.sum()]
    assert flipped[top].mean() > 0.7
    assert np.all(np.isnan(res.stderr) | (res.stderr >= 0))


def test_members_of_a_ddp_job_train_in_one_process_with_the_global_batch(config):
    """The memorization stage runs on rank 0 alone: a DDP trainer's members are one process with
    the same global batch, so the fast path applies to them on the CPU."""
    from unlearning.pipeline.stages.fast_training import fast_path_reason
    from unlearning.pipeline.stages.scores import member_config

    cfg = config("trainer=ddp_cpu", "memorization.seed=3")
    member = member_config(cfg, 2)
    assert member.pretrain.seed == 5 and member.pretrain.batch_size == cfg.pretrain.batch_size
    assert member.trainer.devices == 1 and fast_path_reason(member) is None
    assert cfg.trainer.devices == 2  # the job's own config is untouched
