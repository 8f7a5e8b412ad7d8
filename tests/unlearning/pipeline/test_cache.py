"""The stage cache: keys track exactly the determining config; entries are atomic and reused."""

import threading

import pytest

from unlearning.pipeline.cache import META_FILE, StageCache
from unlearning.pipeline.keys import stage_configs


def _keys(config, *overrides):
    return {
        stage: StageCache("/x").path(stage, c).name
        for stage, c in stage_configs(config(*overrides)).items()
    }


def test_cache_keys_ignore_method_optim_alpha_seed_and_paths(config, tmp_path):
    base = _keys(config)
    for overrides in (
        ["method=ga"],
        ["method=finetune", "alpha=0.5"],
        ["seed=3", "method.lr=0.5", "method.epochs=2"],
        [f"paths.data_dir={tmp_path}", "trainer.enable_progress_bar=true", "num_workers=2"],
    ):
        assert _keys(config, *overrides) == base, overrides


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("pretrain.lr=0.05", {"pretrain", "oracle", "memorization"}),  # members train like f_A
        ("pretrain.seed=1", {"pretrain", "oracle"}),
        # optimizer A and the trainer numerics are the members' recipe too (issue 15)
        ("pretrain.optim.optimizer.momentum=0.5", {"pretrain", "oracle", "memorization"}),
        ("model.width=16", {"pretrain", "oracle", "memorization"}),
        ("memorization.members=64", {"memorization"}),
        ("split=mem_high", {"split", "oracle"}),
        ("trainer.limit_train_batches=3", {"pretrain", "oracle", "memorization"}),
        ("split.size=0.1", {"split", "oracle"}),
        ("split.seed=7", {"split", "oracle"}),
        ("dataset.test_fraction=0.3", {"pretrain", "split", "oracle", "memorization"}),
        ("dataset.label_noise=0.1", {"pretrain", "split", "oracle", "memorization"}),
    ],
)
def test_cache_key_changes_when_and_only_when_a_determining_value_changes(
    config, override, changed
):
    base, new = _keys(config), _keys(config, override)
    if changed & {"pretrain", "split"}:
        changed = changed | {"mask"}  # the saliency mask is computed on f_A and F
    assert {stage for stage in base if base[stage] != new[stage]} == changed


def test_mask_key_tracks_the_mask_fraction_only_among_method_settings(config):
    base = _keys(config, "method=minmax")
    assert _keys(config, "method=minmax", "alpha=0.5", "method.lr=1", "optim=asam") == base
    changed = _keys(config, "method=minmax", "method.fraction=0.1")
    assert {stage for stage in base if base[stage] != changed[stage]} == {"mask"}


def test_get_or_compute_computes_once_then_hits(tmp_path):
    cache, calls = StageCache(tmp_path), []

    def compute(work):
        calls.append(work)
        (work / "artefact.txt").write_text("done")
        return {"answer": 42}

    first = cache.get_or_compute("stage", {"a": 1}, compute)
    second = cache.get_or_compute("stage", {"a": 1}, compute)
    assert first == second and len(calls) == 1
    assert (first / "artefact.txt").read_text() == "done"
    assert StageCache.meta(first)["answer"] == 42
    cache.get_or_compute("stage", {"a": 2}, compute)
    assert len(calls) == 2


def test_failed_compute_leaves_no_entry_and_the_next_call_resumes_from_partial(tmp_path):
    cache = StageCache(tmp_path)

    def crash(work):
        (work / "checkpoint").write_text("epoch 3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("stage", {"a": 1}, crash)
    assert not cache.has("stage", {"a": 1})
    seen = {}

    def resume(work):
        seen["checkpoint"] = (work / "checkpoint").read_text()

    entry = cache.get_or_compute("stage", {"a": 1}, resume)
    assert seen["checkpoint"] == "epoch 3"
    assert (entry / META_FILE).is_file()
    assert not entry.with_name(entry.name + ".partial").exists()


def test_concurrent_callers_compute_a_stage_exactly_once(tmp_path):
    cache, calls, barrier = StageCache(tmp_path), [], threading.Barrier(4)

    def compute(work):
        calls.append(1)
        (work / "x").write_text("1")

    def job():
        barrier.wait()
        cache.get_or_compute("stage", {"k": "v"}, compute)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
