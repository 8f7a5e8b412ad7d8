"""The ensemble engine (issue 15, 002 App. M): member k of a job is an entry of the training
stage it belongs to, keyed by the job's config with ``pretrain.seed + k`` and ``seed + k`` and
the job's forget set, trained by that stage itself; member 0 is the job's own model; a killed
ensemble resumes at its first untrained member; ``retrain`` gets an unlearned ensemble of
further oracles. One slow test runs KLoM as ``eval=klom`` does on the embedded default."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.evaluation.family import EVAL_SETS, EnsembleNeed
from unlearning.evaluation.store import OutputStore
from unlearning.pipeline import stages
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs
from unlearning.pipeline.run import cached_stages, check_inputs, unlearning_stage
from unlearning.pipeline.stages.ensembles import EnsembleEngine, member_config

# one epoch of 4 batches: a member costs little more than Lightning's start-up
FAST = ["pretrain.epochs=1", "method.epochs=1", "trainer.limit_train_batches=4"]


def _engine(cfg, unlearned: bool = False, **seams) -> tuple[EnsembleEngine, object]:
    """The engine as the pipeline builds it for ``cfg`` (its cached stages computed first; the
    job's own unlearned model only when ``unlearned``), and the job's artefacts."""
    source = check_inputs(cfg)
    cache = StageCache(cfg.paths.cache_dir)
    art = cached_stages(cfg, source, cache)
    models = {
        "original": stages.load_model(cfg, art.pretrained),
        "oracle": stages.load_model(cfg, art.oracle),
    }
    if unlearned:
        out = Path(cfg.paths.output_dir)
        models["unlearned"] = unlearning_stage(cfg, source, cache, art, [], out).net
    data = UnlearningDataModule(
        source,
        art.forget_indices,
        eval_batch_size=cfg.eval_batch_size,
        test_indices=art.test_indices,
    )
    store = OutputStore(models, data, source.num_classes)
    engine = EnsembleEngine(
        cfg, source, cache, store, art.forget_indices, torch.device("cpu"), **seams
    )
    return engine, art


def _weights(entry: Path) -> dict[str, torch.Tensor]:
    return torch.load(entry / stages.MODEL_FILE, weights_only=True)


@pytest.mark.parametrize("optim", ["sgd", "sam"])
def test_member_zero_is_the_jobs_model_and_member_k_is_the_single_model_stage_with_seed_k(
    config, tmp_path, optim
):
    """Member 0 of ``original`` and ``oracle`` is the job's own cache entry (nothing trained);
    pretraining member 1 trained by the engine has exactly the weights of the single-model
    pipeline run with ``pretrain.seed=1``, for SGD and for SAM as optimizer A."""
    overrides = [*FAST, f"pretrain/optim={optim}"]
    cfg = config(*overrides, cache=tmp_path / "engine")

    def no_training(*args):
        pytest.fail("member 0 is the job's own model: nothing to train")

    engine, art = _engine(cfg, train_from_scratch=no_training)
    assert engine.member_entry("original", 0) == art.pretrained
    assert engine.member_entry("oracle", 0) == art.oracle
    engine.train_from_scratch = stages.train_from_scratch
    member = engine.member_entry("original", 1)

    # the pretraining stage of the job with pretrain.seed=1, as cached_stages runs it
    single_cfg = config(*overrides, "pretrain.seed=1", cache=tmp_path / "single")
    key = stage_configs(single_cfg)["pretrain"]
    single = StageCache(tmp_path / "single").get_or_compute(
        "pretrain",
        key,
        lambda d: stages.train_from_scratch(single_cfg, check_inputs(single_cfg), None, "train", d),
    )
    assert member.name == single.name  # the same key: shared with that job
    assert stage_configs(member_config(cfg, 1))["pretrain"] == key
    ours, theirs = _weights(member), _weights(single)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert not torch.equal(ours["head.weight"], _weights(art.pretrained)["head.weight"])


def test_a_killed_ensemble_resumes_at_its_first_untrained_member_with_the_same_margins(
    config, tmp_path
):
    """A kill while member 2 trains (raised from the trainer seam) leaves member 1 in the
    cache; the rerun trains member 2 only and ends with the margins of an uninterrupted build
    (in a copy of the cache taken before any member was trained)."""
    trained: list[int] = []

    def killed_at_second(cfg, *args):
        if len(trained) == 1:
            raise KeyboardInterrupt("killed")
        trained.append(int(cfg.pretrain.seed))
        return stages.train_from_scratch(cfg, *args)

    def counted(cfg, *args):
        trained.append(int(cfg.pretrain.seed))
        return stages.train_from_scratch(cfg, *args)

    cfg = config(*FAST, cache=tmp_path / "killed")
    need = EnsembleNeed("original", 3)
    engine, _ = _engine(cfg, train_from_scratch=killed_at_second)
    shutil.copytree(tmp_path / "killed", tmp_path / "fresh")  # the job's stages, no member
    with pytest.raises(KeyboardInterrupt):
        engine.build(need)
    assert trained == [1] and not engine.is_cached("original", 2)
    trained.clear()
    resumed = _engine(cfg, train_from_scratch=counted)[0].build(need)
    assert trained == [2]

    fresh = _engine(config(*FAST, cache=tmp_path / "fresh"))[0].build(need)
    for s in EVAL_SETS:
        assert resumed.margins[s].shape == (3, fresh.margins[s].shape[1])
        assert np.array_equal(resumed.margins[s], fresh.margins[s])
    assert np.ptp(resumed.margins["test"], axis=0).max() > 1e-3  # the members differ


def test_retrain_gets_an_unlearned_ensemble_of_further_oracles_with_a_note(config, tmp_path):
    """``method=retrain``: the unlearned ensemble is oracles N … 2N − 1 (their own stage
    entries), not the oracle ensemble, so its KLoM is not 0 by construction."""
    cfg = config(*FAST, "method=retrain", cache=tmp_path / "cache")
    engine, _ = _engine(cfg)
    unlearned = engine.build(EnsembleNeed("unlearned", 2))
    assert "retrain" in unlearned.note and "pretrain.seed + 2" in unlearned.note
    assert engine.is_cached("oracle", 2) and engine.is_cached("oracle", 3)
    assert not engine.is_cached("oracle", 1)  # not the oracle ensemble's members
    job_oracle = engine.member_margins("oracle", 0)
    assert not np.array_equal(unlearned.margins["forget"][0], job_oracle["forget"])


@pytest.mark.slow
def test_unlearned_members_run_the_jobs_method_from_their_own_pretrained_model(config, tmp_path):
    """Unlearned member k is the unlearning stage run from pretraining member k with run seed
    ``seed + k``, an entry of the shared cache; member 0 is the job's own unlearned model; a
    masked method gets the mask stage of member k."""
    cfg = config(*FAST, "method=salun", cache=tmp_path / "cache")
    engine, _ = _engine(cfg, unlearned=True)
    ensemble = engine.build(EnsembleNeed("unlearned", 2))
    assert ensemble.note is None
    own = engine.store.outputs("unlearned", "forget")
    from unlearning.evaluation.metrics.klom import margins

    assert np.array_equal(ensemble.margins["forget"][0], margins(own.logits, own.labels))
    keys = engine.member_keys(1)
    assert keys["unlearn"]["seed"] == cfg.seed + 1
    assert keys["unlearn"]["pretrain"]["seed"] == cfg.pretrain.seed + 1
    assert engine.cache.has("mask", keys["mask"]) and engine.is_cached("original", 1)


#: the forget sets of the slow KLoM test: random, and 002 App. M's PC-1 set of both ends (the 36
#: highest and 36 lowest projections, TRAK on f_A), both |F| = 72
KLOM_FORGET_SETS = {
    "random": ["split=random", "split.size=72"],
    "influence_pc": [
        "split=influence_pc",
        "split.attribution=trak",
        "split.ends=both",
        "split.size=72",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("forget_set", list(KLOM_FORGET_SETS))
def test_klom_on_the_embedded_default_separates_f_from_held_out_data(config, forget_set):
    """``eval=klom`` with N = 10 members (not the preset's 100: 2 CPU cores) and 3 histogram
    bins for NegGrad on a random and on an influence-PC forget set of the embedded default
    (digits, SmallCNN, 15 pretraining epochs, |F| = 72). 002's 20 bins suit N = 100 (5 members
    a bin); with N = 10 they saturate: identical distributions give a 95th percentile of ~8
    (docs/evaluation.md), and the run measured klom_original = 7.84 / 9.14 / 7.79 on R / F /
    D_test. With 3 bins (~3 members a bin) the same margins give (measured 2026-12-05, R / F /
    D_test): random F: klom_original 0.78 / 5.90 / 0.49, klom 5.94 / 9.42 / 4.82; PC-1 F (both
    ends): klom_original 1.09 / 10.74 / 0.73, klom 11.01 / 10.90 / 10.90 (NegGrad moved the
    models away from the oracles everywhere, on the PC set most). The test asserts that the
    pretrained models' KLoM is close to 0 on D_test and R and clearly not on F."""
    from unlearning.pipeline.run import run

    cfg = config(
        "method=neggrad",
        "eval=klom",
        "eval.klom.models=10",
        "eval.klom.bins=3",
        "eval.ulira.models=10",
        "eval.forgetting_quality.models=10",
        *KLOM_FORGET_SETS[forget_set],
    )
    payload = run(cfg)
    metrics, notes = payload["metrics"], payload["notes"]
    for name in ("klom", "klom_original"):
        assert all(math.isfinite(metrics[f"{name}/{s}"]) for s in EVAL_SETS)
    assert metrics["klom/models"] == 10.0 and "N = 10" in notes["klom/models"]
    assert metrics["klom_original/test"] < 1.5 and metrics["klom_original/retain"] < 1.5
    assert metrics["klom_original/forget"] > 3.0
    assert metrics["klom/forget"] > 3.0  # one NegGrad setting does not unlearn F


def test_the_pipeline_trains_members_by_the_fast_path_with_the_lightning_stages_weights(
    config, tmp_path
):
    """Where the fast path applies, the pipeline's engine trains pretraining and oracle members
    with it (issue 15); each is the entry the Lightning stage would have written, bit for bit."""
    from unlearning.pipeline.run import member_trainer
    from unlearning.pipeline.stages.fast_training import fast_train_from_scratch

    overrides = ["pretrain.epochs=1", "method.epochs=1", "model.width=8", "pretrain/optim=sam"]
    cfg = config(*overrides, cache=tmp_path / "engine")
    assert member_trainer(cfg) is fast_train_from_scratch
    assert member_trainer(config(*FAST)) is stages.train_from_scratch  # a batch limit: Lightning
    engine, art = _engine(cfg, train_from_scratch=member_trainer(cfg))
    for kind, train_set in (("original", "train"), ("oracle", "retain")):
        member = engine.member_entry(kind, 1)
        lightning = tmp_path / f"lightning-{kind}"
        lightning.mkdir()
        forget = None if kind == "original" else art.forget_indices
        stages.train_from_scratch(
            member_config(cfg, 1), check_inputs(cfg), forget, train_set, lightning
        )
        ours, theirs = _weights(member), _weights(lightning)
        assert all(torch.equal(ours[name], theirs[name]) for name in ours), kind
