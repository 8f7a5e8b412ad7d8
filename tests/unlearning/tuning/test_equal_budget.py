"""Equal tuning budgets (issue 16): one search rule for every method, a validation objective,
the selection rerun over seeds and named in the report."""

import argparse
import json
from pathlib import Path

import pytest

from unlearning.report.cli import main as report_main
from unlearning.tuning.equal_budget import main, rerun_args, search_args


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    defaults = {"trials": 5, "seeds": "0,1", "objective": "tow_val", "out": tmp_path}
    return argparse.Namespace(overrides=["eval=none"], **{**defaults, **kw})


def test_every_method_gets_the_same_trials_objective_and_lr_range_and_alpha_only_if_it_mixes(
    tmp_path,
):
    neggrad, scrub = (search_args(m, _args(tmp_path)) for m in ("neggrad", "scrub"))
    for args in (neggrad, scrub):
        assert "hparams_search=alpha_lr_optuna" in args and "hydra.sweeper.n_trials=5" in args
        assert "optimized_metric=tow_val" in args and args[-1] == "eval=none"
    assert "~hydra.sweeper.params.alpha" in scrub  # SCRUB has no retain weight α
    assert "~hydra.sweeper.params.alpha" not in neggrad


def test_the_selection_is_rerun_with_every_seed(tmp_path):
    args = rerun_args("neggrad", {"alpha": 0.9, "method.lr": 0.01}, _args(tmp_path))
    assert args[:4] == ["-m", "method=neggrad", "alpha=0.9", "method.lr=0.01"]
    assert "seed=0,1" in args and f"hydra.sweep.dir={tmp_path / 'final' / 'neggrad'}" in args


def test_the_report_names_each_rows_selection_and_shows_validation_beside_test(tmp_path, capsys):
    final = tmp_path / "final"
    for seed in (0, 1):
        job = final / f"neggrad_{seed}"
        job.mkdir(parents=True)
        config = {"method": {"name": "neggrad", "alpha": 0.9}, "optim": {"name": "sgd"},
                  "split": {"name": "random"}, "seed": seed}  # fmt: skip
        metrics = {"tow": 0.9 + seed / 100, "tow_val": 0.95}
        (job / "results.json").write_text(
            json.dumps({"status": "ok", "config": config, "metrics": metrics})
        )
    selection = {"params": {"alpha": 0.9, "method.lr": 0.0123}, "objective": "tow_val",
                 "best_value": 0.95, "trials": 5}  # fmt: skip
    (final / "selection.json").write_text(json.dumps({"neggrad": selection}))
    assert report_main([str(final)]) == 0
    out = capsys.readouterr().out
    assert "validation (what selection reads)" in out and "| tow_val (%) |" in out
    assert "- neggrad: alpha=0.9, method.lr=0.0123 — best tow_val 0.9500 of 5 trials" in out


@pytest.mark.slow  # two Optuna searches of two trials and four reruns (~2 min on 2 cores)
def test_equal_budget_study_runs_end_to_end(tmp_path):
    overrides = [
        *("eval=none", "logger=none", "trainer.enable_progress_bar=false"),
        *(
            "pretrain.epochs=2",
            "trainer.limit_train_batches=4",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ),
    ]
    out = tmp_path / "study"
    args = ["--methods", "neggrad,scrub", "--trials", "2", "--seeds", "0,1", "--out", str(out)]
    assert main([*args, *overrides]) == 0
    selection = json.loads((out / "final" / "selection.json").read_text())
    assert set(selection) == {"neggrad", "scrub"}
    assert set(selection["neggrad"]["params"]) == {"alpha", "method.lr"}
    assert set(selection["scrub"]["params"]) == {"method.lr"}
    finals = list((out / "final").rglob("results.json"))
    assert len(finals) == 4
    report = (out / "report_tow" / "report.md").read_text()
    assert "selected configurations" in report and "scrub: method.lr=" in report
