"""Memorization-stratified forget sets through the pipeline (SPEC §3-4)."""

import json

import numpy as np
import pytest

from datamodules.errors import DataConfigError
from tests.conftest import cli_dirs, run_cli
from unlearning.errors import ConfigError
from unlearning.pipeline.run import run


def test_score_file_of_the_wrong_length_fails_naming_the_path(config, tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=np.zeros(100))
    cfg = config(
        "split=mem_high", "memorization=file", f"memorization.path={path}", cache=tmp_path / "c"
    )
    with pytest.raises(DataConfigError) as info:
        run(cfg)
    assert info.value.key == "memorization.path"
    assert "100 scores" in str(info.value) and "1438" in str(info.value)
    assert not (tmp_path / "c").exists(), "the score file is checked before any training"


def test_score_file_missing_key_lists_the_arrays(config, tmp_path):
    path = tmp_path / "scores.npz"
    np.savez(path, other=np.zeros(1438))
    cfg = config(
        "split=mem_high", "memorization=file", f"memorization.path={path}", cache=tmp_path / "c"
    )
    with pytest.raises(ConfigError, match="only \\['other'\\]") as error:
        run(cfg)  # refused by the validation layer, before any stage
    assert error.value.key == "memorization.path"


def test_score_file_selects_the_highest_scores_and_records_mean_and_overlaps(config, tmp_path):
    scores = np.random.default_rng(0).uniform(0, 1, 1438)
    path = tmp_path / "scores.npz"
    np.savez(path, tr_mem=scores)
    common = [
        "memorization=file",
        f"memorization.path={path}",
        "method=finetune",
        "method.epochs=1",
    ]
    result = run(config("split=mem_high", "split.size=0.05", *common))
    m = result["metrics"]
    top = np.sort(scores)[-72:]
    assert m["split/n_forget"] == 72
    assert m["split/mean_mem"] == pytest.approx(top.mean())
    assert {"split/overlap_high_mid", "split/overlap_high_low", "split/overlap_mid_low"} <= set(m)
    assert m["split/overlap_high_low"] == 0
    assert (tmp_path / "run" / "memorization.png").stat().st_size > 1000


@pytest.mark.slow  # a whole sweep or CLI start-up; the default suite keeps one of its kind
def test_mem_levels_sweep_estimates_scores_once(tmp_path):
    result = run_cli(
        [
            "-m",
            "split=mem_high,mem_mid,mem_low",
            "method=finetune",
            "method.epochs=1",
            "pretrain.epochs=2",
            "memorization.members=4",
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("[memorization] computing") == 1
    assert log.count("[memorization] cache hit") == 2
    assert log.count("[pretrain] computing") == 1
    assert log.count("[oracle] computing") == 3  # one oracle per forget set
    payloads = [
        json.loads(p.read_text()) for p in (tmp_path / "logs").glob("multirun/*/*/results.json")
    ]
    means = {p["config"]["split"]["name"]: p["metrics"]["split/mean_mem"] for p in payloads}
    assert means["mem_high"] >= means["mem_mid"] >= means["mem_low"]


def test_learning_speed_proxy_ranks_flipped_labels_as_memorized_and_is_labelled(config, tmp_path):
    cfg = config(
        "split=mem_high",
        "split.size=0.03",
        "memorization=learning_speed",
        "dataset.label_noise=0.03",
        "method=finetune",
        "method.epochs=1",
        cache=tmp_path / "cache",
    )
    m = run(cfg)["metrics"]
    assert m["split/mem_is_proxy"] == 1.0
    # the 43 highest proxy scores are mostly the 43 mislabeled digits
    assert m["split/n_noisy_forget"] >= 0.6 * m["split/n_forget"]
