"""The influence stage and split=influence_pc through the pipeline (002 App. M)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.errors import DataConfigError
from datamodules.sources import build_source
from unlearning.errors import USER_ERRORS
from unlearning.memorization import influence as influence_module
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.run import run
from unlearning.pipeline.stages import influence as stage
from unlearning.pipeline.stages.split import FORGET_FILE, select_forget_set


class _Source:
    """What the influence and split stages read from a data source here: the training labels."""

    def targets(self, part: str) -> np.ndarray:
        return np.zeros(200, dtype=np.int64)


KEYS = {"memorization": {"stage": "fake members"}, "influence": {"stage": "fake influence"}}


def _members(n: int, members: int = 48, group: int = 12) -> dict[str, np.ndarray]:
    """Members whose margins on a group of ``group`` samples rise together when any of them is
    trained on (a coherent subpopulation), plus noise."""
    rng = np.random.default_rng(0)
    in_mask = rng.uniform(size=(members, n)) < 0.7
    margins = rng.normal(0, 0.05, (members, n)).astype(np.float32)
    margins[:, :group] += in_mask[:, :group].sum(axis=1, keepdims=True) * 0.5
    return {"in_mask": in_mask, "margins": margins}


def _memorization_entry(cache: StageCache, arrays: dict[str, np.ndarray] | None):
    def write(work_dir):
        if arrays is not None:
            np.savez(work_dir / stage.MEMBERS_FILE, **arrays)
        return {"source": "estimate"}

    return cache.get_or_compute("memorization", KEYS["memorization"], write)


def test_datamodel_influence_is_cached_and_its_first_pc_finds_the_coherent_group(
    config, tmp_path, monkeypatch
):
    cfg = config("split=influence_pc", "split.attribution=datamodel", "split.size=12")
    source, n = _Source(), 200
    cache = StageCache(tmp_path / "cache")
    _memorization_entry(cache, _members(n))
    calls = []
    original = influence_module.datamodel_influence
    monkeypatch.setattr(stage, "datamodel_influence", lambda *a: calls.append(1) or original(*a))
    entry = stage.influence_entry(cfg, source, cache, KEYS, pretrained=tmp_path)
    again = stage.influence_entry(cfg, source, cache, KEYS, pretrained=tmp_path)
    assert entry == again and len(calls) == 1, "the second job reads the cached matrix"
    meta = StageCache.meta(entry)
    assert meta["attribution"] == "datamodel" and meta["models"] == 48
    assert stage.load_projections(entry).shape == (n, 2)
    summary = select_forget_set(cfg, source, None, tmp_path, entry)
    assert np.load(tmp_path / FORGET_FILE).tolist() == list(range(12))
    assert summary["influence_models"] == 48
    assert summary["influence_explained"] == pytest.approx(meta["explained_pc1"])


def test_datamodel_influence_without_the_members_record_names_the_fix(config, tmp_path):
    cfg = config("split=influence_pc", "split.attribution=datamodel")
    cache = StageCache(tmp_path / "cache")
    _memorization_entry(cache, None)
    with pytest.raises(DataConfigError) as info:
        stage.influence_entry(cfg, build_source(cfg.dataset), cache, KEYS, pretrained=tmp_path)
    assert info.value.key == "split.attribution"
    assert "members.npz" in str(info.value) and "split.attribution=trak" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("split.component=3", "split.component"),
        ("split.ends=middle", "split.ends"),
        ("split.attribution=shapley", "split.attribution"),
        ("split.size=2000", "split.size"),
        ("split.proj_dim=0", "split.proj_dim"),
        ("split.attribution=trak split.proj_dim=1438", "split.proj_dim"),
        ("split.min_size=1438", "split.min_size"),
        ("split.attribution=datamodel memorization=learning_speed", "split.attribution"),
    ],
)
def test_bad_influence_values_fail_at_start_up_in_one_line(config, tmp_path, override, key):
    cfg = config("split=influence_pc", *override.split(), cache=tmp_path / "cache")
    with pytest.raises(USER_ERRORS) as info:
        run(cfg)
    assert info.value.key == key and str(info.value).startswith(f"{key}=")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists(), "nothing is computed before the check"


@pytest.mark.slow
def test_trak_influence_split_end_to_end_records_the_construction_and_plots(config, tmp_path):
    cfg = config(
        "split=influence_pc",
        "split.attribution=trak",
        "split.proj_dim=128",
        "split.component=2",
        "split.ends=both",
        "split.size=20",
        "method=finetune",
        "method.epochs=1",
    )
    result = run(cfg)
    metrics = result["metrics"]
    assert metrics["split/n_forget"] == 20
    assert metrics["split/influence_models"] == 1
    assert 0 < metrics["split/influence_explained"] < 1
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["split"]["attribution"] == "trak"
    assert (tmp_path / "run" / "influence.png").stat().st_size > 0


@pytest.mark.slow
def test_datamodel_influence_split_end_to_end_reads_the_memorization_members(config, tmp_path):
    """Needs the memorization stage's members.npz (in_mask, margins)."""
    cfg = config(
        "split=influence_pc",
        "split.attribution=datamodel",
        "split.size=10",
        "memorization.members=16",
        "method=finetune",
        "method.epochs=1",
    )
    metrics = run(cfg)["metrics"]
    assert metrics["split/n_forget"] == 10
    assert metrics["split/influence_models"] == 16
    assert (tmp_path / "run" / "influence.png").is_file()
