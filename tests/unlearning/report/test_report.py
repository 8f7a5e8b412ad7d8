"""``python -m unlearning.report`` aggregates results.json files into tables and plots."""

import csv
import json
import subprocess
import sys

import pytest
from scipy import stats

from unlearning.report.cli import main
from unlearning.report.plots import alpha_curves, forget_set_labels, klom_runs, relative_cost
from unlearning.report.tables import load_jobs, mean_ci95

ROWS = {  # (method, optim, split) -> ToW per seed
    ("neggrad", "sgd", "mem_high"): [0.80, 0.84, 0.82],
    ("neggrad", "sgd", "mem_low"): [0.90, 0.92, 0.94],
    ("minmax", "sam", "mem_high"): [0.88, 0.90, 0.92],
    ("minmax", "sam", "mem_low"): [0.95, 0.95, 0.95],
}


def _write(root, method, optim, split, seed, tow, alpha=0.99, status="ok"):
    job = root / f"{method}_{optim}_{split}_{seed}_{alpha}"
    job.mkdir(parents=True)
    config = {
        "method": {"name": method, "alpha": alpha},
        "optim": {"name": optim},
        "pretrain": {"optim": {"name": "sgd"}},
        "split": {"name": split},
        "alpha": alpha,
        "seed": seed,
    }
    (job / "results.json").write_text(
        json.dumps({"status": status, "config": config, "metrics": {"tow": tow}})
    )


@pytest.fixture
def sweep(tmp_path):
    for (method, optim, split), values in ROWS.items():
        for seed, tow in enumerate(values):
            _write(tmp_path / "sweep", method, optim, split, seed, tow)
    _write(tmp_path / "sweep", "neggrad", "sgd", "mem_high", 9, None, status="diverged")
    return tmp_path / "sweep"


def test_mean_ci95_is_the_t_interval():
    mean, half = mean_ci95([0.80, 0.84, 0.82])
    assert mean == pytest.approx(0.82)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * 0.02 / 3**0.5)
    assert mean_ci95([0.5]) == (0.5, 0.0)


def test_report_writes_table_csv_and_plots_and_skips_failed_jobs(sweep, capsys):
    assert main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    assert "| tow (%) | mem_high | mem_low | avg |" in table
    half = 100 * stats.t.ppf(0.975, 2) * 0.02 / 3**0.5
    assert f"| neggrad + sgd | 82.00 ± {half:.2f} | 92.00 ± {half:.2f} | 87.00 |" in table
    assert "| minmax + sam | 90.00 ± " in table and "95.00 ± 0.00" in table
    assert "13 jobs, 1 not ok" in table and "diverged" in table
    with (sweep / "report.csv").open() as handle:
        records = {(r["row"], r["split"]): r for r in csv.DictReader(handle)}
    assert int(records[("neggrad + sgd", "mem_high")]["n"]) == 3  # the diverged job is not averaged
    assert float(records[("minmax + sam", "avg")]["mean"]) == pytest.approx(0.925)
    assert (sweep / "bars.png").stat().st_size > 1000
    assert not (sweep / "alpha_curve.png").exists()  # one alpha only
    assert "neggrad + sgd" in capsys.readouterr().out


def test_alpha_sweep_gets_alpha_rows_and_an_alpha_curve(tmp_path):
    for alpha, tow in ((0.9, 0.7), (0.95, 0.8), (0.99, 0.9)):
        for seed in range(2):
            _write(tmp_path, "neggrad", "sam", "random", seed, tow + 0.01 * seed, alpha=alpha)
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "neggrad + sam α=0.95" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "alpha_curve.png").stat().st_size > 1000


def test_alpha_curves_keep_swept_methods_and_usable_jobs_only(tmp_path):
    for alpha in (0.9, 0.99):
        _write(tmp_path, "neggrad", "sam", "random", 0, alpha / 2, alpha=alpha)
        _write(tmp_path, "neggrad", "sam", "random", 1, None, alpha=alpha, status="diverged")
    _write(tmp_path, "minmax", "sam", "random", 0, 0.5, alpha=0.9)  # one alpha: no curve
    _write(tmp_path, "ga", "sgd", "random", 0, 0.3, alpha=None)  # no alpha at all
    curves = alpha_curves(load_jobs([tmp_path]), "tow")
    assert curves == {("neggrad", "sam", "random"): {0.9: [0.45], 0.99: [0.495]}}


def test_cli_refuses_a_directory_without_results(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "unlearning.report", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no results.json" in result.stderr


def _write_klom(root, name, method, split, klom, original, rte_s=1.0, status="ok"):
    """A job with KLoM keys: ``klom`` and ``original`` are ``(forget, test, retain)``."""
    job = root / name
    job.mkdir(parents=True)
    metrics = {"rte_s": rte_s, "oracle_s": 10.0}
    for prefix, values in (("klom", klom), ("klom_original", original)):
        metrics.update({f"{prefix}/{s}": v for s, v in zip(("forget", "test", "retain"), values)})
    config = {"method": {"name": method}, "optim": {"name": "sgd"}, "split": split, "seed": 0}
    (job / "results.json").write_text(
        json.dumps({"status": status, "config": config, "metrics": metrics})
    )


def test_klom_figure_has_every_run_one_panel_per_forget_set(tmp_path):
    """002 Fig. 1: every finished run with KLoM is a point; panels are told apart by the split
    settings that differ (the PC), not by what all share."""
    pc1 = {"name": "influence_pc", "component": 1, "size": 10}
    pc2 = {"name": "influence_pc", "component": 2, "size": 10}
    _write_klom(tmp_path, "a", "ga", pc1, (3.0, 0.5, 0.4), (4.0, 0.1, 0.1), rte_s=0.5)
    _write_klom(tmp_path, "b", "neggrad", pc1, (2.0, 0.3, 0.2), (4.0, 0.1, 0.1), rte_s=2.0)
    _write_klom(tmp_path, "c", "ga", pc2, (1.0, 0.2, 0.1), (3.0, 0.1, 0.1))
    _write_klom(tmp_path, "d", "ga", pc2, (None, None, None), (3.0, 0.1, 0.1), status="diverged")
    jobs = load_jobs([tmp_path])
    runs = klom_runs(jobs)
    assert sorted(j.path.parent.name for j in runs) == ["a", "b", "c"]
    assert sorted(set(forget_set_labels(runs).values())) == [
        "influence_pc component=1",
        "influence_pc component=2",
    ]
    assert [relative_cost(j) for j in runs] == [0.05, 0.2, 0.1]
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "klom.png").stat().st_size > 0
    assert (tmp_path / "klom_retain.png").stat().st_size > 0


def test_no_klom_figure_without_klom_keys(sweep):
    assert main([str(sweep)]) == 0
    assert not (sweep / "klom.png").exists()
