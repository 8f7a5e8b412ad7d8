"""Each theory lab runs from its ``experiment=theory/*`` config on a tiny grid and leaves its
CSV, PNG and results.json; bad settings fail before any work with a ConfigError."""

import csv
import json

import pytest
from hydra.utils import call

from tests.conftest import cli_dirs, make_config, run_cli
from unlearning.errors import ConfigError


def _run(tmp_path, experiment, *overrides):
    cfg = make_config([f"experiment=theory/{experiment}", *overrides], tmp_path, tmp_path / "c")
    result = call(cfg.lab, cfg=cfg)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["status"] == result["status"] == "ok"
    assert payload["config"]["lab"]["_target_"].endswith(f"{experiment}.run")
    return result["metrics"], tmp_path


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_stability_frontier_scores_both_theorems(tmp_path):
    metrics, out = _run(
        tmp_path,
        "stability_frontier",
        "lab.batch_sizes=[1,30]",
        "lab.q_values=[1,50]",
        "lab.steps=200",
        "lab.repeats=3",
    )
    rows = _rows(out / "stability_frontier.csv")
    assert len(rows) == 4 and (out / "stability_frontier.png").stat().st_size > 0
    by_cell = {(float(r["batch_size"]), int(r["q"])): r for r in rows}
    assert by_cell[(1.0, 1)]["sampled_diverged"] == "1.0"  # small batch, low coherence
    assert by_cell[(30.0, 50)]["sampled_diverged"] == "0.0"  # large batch, high coherence
    assert metrics["thm36/precision_sampled"] == 1.0
    for key in ("thm37_proof/recall_ms", "thm37_statement/precision_sampled", "n_between_bounds"):
        assert key in metrics


def test_memorization_forgetting_heatmaps_and_correlation(tmp_path):
    metrics, out = _run(
        tmp_path,
        "memorization_forgetting",
        "lab.signal_strengths=[0.5,16]",
        "lab.dims=[200]",
        "lab.repeats=2",
        "lab.n_test=200",
        "lab.unlearn_steps=30",
    )
    rows = {float(r["signal_strength"]): r for r in _rows(out / "memorization_forgetting.csv")}
    # weak signal: the model fits noise (high test error) and F is easy to push away
    assert float(rows[0.5]["test_error"]) > float(rows[16.0]["test_error"])
    assert float(rows[0.5]["forget_loss"]) > float(rows[16.0]["forget_loss"])
    assert metrics["gap_forget_corr"] > 0
    assert (out / "memorization_forgetting.png").exists()


def test_signal_noise_tracks_kappa_zeta_and_lemma_3_1(tmp_path):
    metrics, out = _run(
        tmp_path,
        "signal_noise",
        "lab.n_train=60",
        "lab.n_test=200",
        "lab.dim=100",
        "lab.epochs=4",
        "lab.unlearn_epochs=2",
        "lab.alphas=[0.9,0.5]",
        "lab.seeds=[0]",
    )
    curves = _rows(out / "signal_noise_curves.csv")
    phases = {(r["optimizer"], r["phase"]) for r in curves}
    assert phases == {
        ("sgd", "pretrain"),
        ("sgd", "unlearn"),
        ("sam", "pretrain"),
        ("sam", "unlearn"),
    }
    assert metrics["max_decomposition_residual"] < 1e-5  # 000 eq. 2 is exact
    assert metrics["sgd/kappa_pretrained"] > 0 and metrics["sam/kappa_pretrained"] > 0
    assert 0 <= metrics["lemma31/active_frac_retain"] <= 1
    assert 0 <= metrics["lemma31/active_frac_forget"] <= 1
    tows = _rows(out / "signal_noise_tow.csv")
    assert {float(r["alpha"]) for r in tows} == {0.9, 0.5}


def test_logistic_da_checks_lemma_2_and_lemma_5(tmp_path):
    metrics, out = _run(
        tmp_path, "logistic_da", "lab.alphas=[0.1,0.3,0.9]", "lab.epsilons=[0.5,0.9]",
        "lab.alphas_2d=[0.2,0.6]",
    )  # fmt: skip
    assert metrics["lemma5/max_abs_error"] < 1e-8
    assert 0 <= metrics["lemma2/holds_fraction"] <= 1
    assert len(_rows(out / "logistic_da_2d.csv")) == 4
    assert (out / "logistic_da.png").exists()


@pytest.mark.parametrize(
    ("experiment", "override", "key"),
    [
        ("stability_frontier", "lab.batch_sizes=[0,60]", "lab.batch_sizes"),
        ("stability_frontier", "lab.thm37_reading=paper", "lab.thm37_reading"),
        ("memorization_forgetting", "lab.repeats=0", "lab.repeats"),
        ("signal_noise", "lab.optimizers=[adam]", "lab.optimizers"),
        ("logistic_da", "lab.loss=hinge", "lab.loss"),
    ],
)
def test_bad_lab_settings_raise_config_errors_naming_the_key(tmp_path, experiment, override, key):
    cfg = make_config([f"experiment=theory/{experiment}", override], tmp_path, tmp_path / "c")
    with pytest.raises(Exception) as info:  # hydra's call() wraps it in InstantiationException
        call(cfg.lab, cfg=cfg)
    error = info.value if isinstance(info.value, ConfigError) else info.value.__cause__
    assert isinstance(error, ConfigError) and error.key == key
    assert not (tmp_path / "results.json").exists()


def test_cli_runs_a_lab_end_to_end(tmp_path):
    proc = run_cli(
        [
            "experiment=theory/stability_frontier",
            "lab.batch_sizes=[2,30]",
            "lab.q_values=[2]",
            "lab.steps=100",
            "lab.repeats=3",
            "logger=none",
            *cli_dirs(tmp_path),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stability frontier (003 §4.1)" in proc.stdout
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    assert run_dir.name.endswith("theory_stability_frontier")
    assert {"stability_frontier.csv", "stability_frontier.png", "results.json"} <= {
        p.name for p in run_dir.iterdir()
    }


@pytest.mark.slow
def test_default_stability_grid_theorem_3_6_never_claims_a_convergent_cell(tmp_path):
    metrics, _ = _run(tmp_path, "stability_frontier")
    assert metrics["thm36/precision_sampled"] == 1.0 and metrics["thm36/precision_ms"] == 1.0
    assert metrics["n_claimed_by_both"] == 0
