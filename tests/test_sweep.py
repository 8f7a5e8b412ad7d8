"""Sweeps as users run them: ``python train.py -m ...`` shares the cached stages."""

import json

import pytest

from tests.conftest import cli_dirs, run_cli


def test_multirun_over_methods_pretrains_once_and_retrains_the_oracle_once(tmp_path):
    result = run_cli(
        [
            "-m",
            "method=finetune,ga,neggrad",
            "pretrain.epochs=3",
            "method.epochs=2",
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    for stage in ("pretrain", "split", "oracle"):
        assert log.count(f"[{stage}] computing") == 1, stage
        assert log.count(f"[{stage}] cache hit") == 2, stage
    results = sorted((tmp_path / "logs" / "multirun").glob("*/*/results.json"))
    assert len(results) == 3
    payloads = [json.loads(p.read_text()) for p in results]
    assert {p["config"]["method"]["name"] for p in payloads} == {"finetune", "ga", "neggrad"}
    assert all(p["status"] == "ok" for p in payloads)
    # the original model and the oracle are shared, so their accuracies agree across jobs
    assert len({p["metrics"]["original/acc_forget"] for p in payloads}) == 1
    assert len({p["metrics"]["oracle/acc_test"] for p in payloads}) == 1
    # the CSV logger wrote training curves next to results.json
    assert all((p.parent / "csv" / "metrics.csv").is_file() for p in results)


@pytest.mark.slow  # a whole sweep or CLI start-up; the default suite keeps one of its kind
def test_second_run_changing_only_alpha_reuses_every_stage(tmp_path):
    common = [
        "pretrain.epochs=2",
        "method.epochs=1",
        *cli_dirs(tmp_path),
    ]
    first = run_cli(["method=neggrad", "alpha=0.99", *common], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(["method=neggrad", "alpha=0.9", *common], tmp_path)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    for stage in ("pretrain", "split", "oracle"):  # the job's own unlearning is computed
        assert f"[{stage}] computing" not in log
    assert log.count("cache hit") == 3


@pytest.mark.slow  # a whole sweep or CLI start-up; the default suite keeps one of its kind
def test_method_by_optimizer_sweep_shares_one_pretraining_and_one_oracle(tmp_path):
    result = run_cli(
        [
            "-m",
            "method=neggrad,minmax",
            "optim=sgd,sam,asam",
            "rho=1.0",
            "pretrain.epochs=2",
            "method.epochs=1",
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("[pretrain] computing") == 1 and log.count("[oracle] computing") == 1
    assert log.count("[mask] computing") == 1  # the MinMax mask is shared by its three jobs
    payloads = [
        json.loads(p.read_text()) for p in (tmp_path / "logs").glob("multirun/*/*/results.json")
    ]
    assert len(payloads) == 6
    combos = {(p["config"]["method"]["name"], p["config"]["optim"]["name"]) for p in payloads}
    assert combos == {(m, o) for m in ("neggrad", "minmax") for o in ("sgd", "sam", "asam")}
    assert all(p["config"]["rho"] == 1.0 and "tow" in p["metrics"] for p in payloads)
