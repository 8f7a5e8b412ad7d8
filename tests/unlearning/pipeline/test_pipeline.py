"""End-to-end behaviour of the pipeline on the embedded default (real Trainer, real data)."""

import json
import math

import pytest

from unlearning.outputs.results import ACCURACY_SETS, MODELS, SETS, accuracy_key
from unlearning.pipeline.run import run

DOCUMENTED_KEYS = {
    *(accuracy_key(m, s) for m in MODELS for s in ACCURACY_SETS),
    "tow", "tow_abs", "ua", "ra", "ta", "rte_s", "oracle_s", "split/n_forget", "split/n_retain",
    "tow_val", "tow_abs_val", "ta_val", "split/n_val", "split/n_test",
}  # fmt: skip


@pytest.fixture(scope="module")
def neggrad_results(tmp_path_factory, shared_cache):
    """One NegGrad run with the digits preset (alpha 0.9, lr 0.02, 10 epochs)."""
    from tests.conftest import make_config

    out = tmp_path_factory.mktemp("neggrad")
    return run(make_config(["method=neggrad"], out, shared_cache)), out


def test_neggrad_lowers_forget_accuracy_and_keeps_retain_accuracy(neggrad_results):
    metrics = neggrad_results[0]["metrics"]
    assert metrics["original/acc_forget"] - metrics["unlearned/acc_forget"] >= 0.03
    assert metrics["original/acc_retain"] - metrics["unlearned/acc_retain"] <= 0.03
    assert metrics["original/acc_test"] - metrics["unlearned/acc_test"] <= 0.05


def test_results_json_follows_the_documented_schema(neggrad_results):
    out = neggrad_results[1]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "ok"
    assert on_disk["config"]["method"]["name"] == "neggrad"
    assert on_disk["config"]["alpha"] == 0.9
    assert set(on_disk["metrics"]) == DOCUMENTED_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in on_disk["metrics"].values())
    m = on_disk["metrics"]
    assert m["ua"] == pytest.approx(1 - m["unlearned/acc_forget"])
    assert m["ra"] == m["unlearned/acc_retain"] and m["ta"] == m["unlearned/acc_test"]
    assert m["split/n_forget"] == round(0.05 * (m["split/n_forget"] + m["split/n_retain"]))
    assert m["rte_s"] > 0 and m["oracle_s"] > 0


def test_retrain_is_the_oracle_with_tow_one(config):
    metrics = run(config("method=retrain"))["metrics"]
    for s in SETS:
        assert metrics[accuracy_key("unlearned", s)] == metrics[accuracy_key("oracle", s)]
    assert metrics["tow"] == 1.0 and metrics["tow_abs"] == 1.0


def test_original_model_fits_the_forget_set_and_oracle_generalises(neggrad_results):
    m = neggrad_results[0]["metrics"]
    assert m["original/acc_forget"] >= 0.99  # f_A was trained on F
    assert m["oracle/acc_test"] >= 0.9  # the oracle is a good model


def test_summary_table_is_printed(config, capsys):
    run(config("method=finetune", "method.epochs=1"))
    out = capsys.readouterr().out
    assert (
        "method=finetune" in out and "unlearned" in out and "ToW" in out and "results.json" in out
    )


def test_signal_noise_data_with_the_two_layer_cnn_runs_end_to_end(config, tmp_path):
    cfg = config(
        "dataset=signal_noise",
        "model=two_layer_cnn",
        "method=neggrad",
        "pretrain.epochs=20",
        "method.epochs=3",
        "dataset.n_train=200",
        cache=tmp_path / "cache",
    )
    result = run(cfg)
    assert result["status"] == "ok"
    assert result["metrics"]["original/acc_test"] > 0.9  # the signal is learnable (000 §2.1)


def test_class_split_forgets_a_whole_class_and_drops_it_from_the_test_set(config, shared_cache):
    metrics = run(config("split=class", "split.label=3", "method=finetune"))["metrics"]
    assert metrics["split/n_forget"] == 146  # every training 3 (182 digits, 80% in S)
    assert metrics["oracle/acc_forget"] <= 0.05  # the oracle never saw a 3
    assert metrics["original/acc_forget"] >= 0.99


def test_minmax_lowers_forget_accuracy_and_keeps_retain_accuracy(config):
    """Sharp MinMax with its digits preset (alpha 0.95, SAM on the retain part)."""
    result = run(config("method=minmax"))
    m = result["metrics"]
    assert result["config"]["optim"]["name"] == "sam"
    assert m["original/acc_forget"] - m["unlearned/acc_forget"] >= 0.03
    assert m["original/acc_retain"] - m["unlearned/acc_retain"] <= 0.02


def test_same_config_and_seed_give_identical_metrics(neggrad_results, tmp_path, shared_cache):
    from tests.conftest import make_config

    again = run(make_config(["method=neggrad"], tmp_path / "again", shared_cache))["metrics"]
    first = neggrad_results[0]["metrics"]
    assert {k: v for k, v in again.items() if k != "rte_s"} == {
        k: v for k, v in first.items() if k != "rte_s"
    }
