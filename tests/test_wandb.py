"""``logger=wandb``: offline runs (never the network), one run per job, results.json keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_dirs, run_cli
from unlearning.outputs import wandb_logger
from unlearning.outputs.publish import publish
from unlearning.outputs.results import ACCURACY_SETS, MODELS

BLOCK = 32 * 1024  # the .wandb transaction log: LevelDB-style 32 KiB blocks, 7-byte headers


def wandb_records(path: Path) -> Iterator:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file (what ``wandb sync``
    uploads): a 7-byte file header, then chunks ``crc32(4) length(2 LE) type(1) payload`` of
    type FULL=1 or FIRST=2 / MIDDLE=3 / LAST=4, never crossing a 32 KiB block."""
    from wandb.proto import wandb_internal_pb2

    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(parts)
            parts = b""


def run_summary(run_file: Path) -> tuple[dict, dict, dict]:
    """``(summary, run config, run record fields)`` of an offline run file."""
    summary: dict = {}
    config: dict = {}
    info: dict = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update(
                {
                    u.key or "/".join(u.nested_key): json.loads(u.value_json)
                    for u in record.summary.update
                }
            )
        elif kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            info.update(group=record.run.run_group, tags=list(record.run.tags))
        elif kind == "exit":
            info["exit_code"] = record.exit.exit_code
    return summary, config, info


def offline_env(tmp_path: Path) -> dict[str, str]:
    """W&B offline, every W&B directory inside ``tmp_path``, no credentials."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "",
        "HOME": str(home),
        "NETRC": str(home / ".netrc"),
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_CONSOLE": "off",
    }


def test_wandb_offline_run_holds_the_results_metrics_config_and_accuracy_table(tmp_path):
    args = ["logger=wandb", "eval=none", "pretrain.epochs=1", "method.epochs=1", "alpha=0.95"]
    result = run_cli([*args, *cli_dirs(tmp_path)], tmp_path, env_extra=offline_env(tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    (results,) = (tmp_path / "logs").rglob("results.json")
    payload = json.loads(results.read_text())
    (run_file,) = results.parent.glob("wandb/offline-run-*/run-*.wandb")
    assert f"wandb sync {run_file.parent}" in log  # the upload hint names this run
    summary, config, info = run_summary(run_file)
    metrics = {k: v for k, v in payload["metrics"].items() if v is not None}
    assert metrics and set(metrics) <= set(summary)
    assert all(summary[k] == pytest.approx(v) for k, v in metrics.items())
    assert summary["status"] == "ok"
    assert info["exit_code"] == 0 and info["group"] == "digits/random/sgd"
    assert {"method=neggrad", "optim=sgd", "alpha=0.95", "split=random"} <= set(info["tags"])
    assert {k: config[k] for k in ("method", "optim", "alpha", "split", "seed")} == {
        "method": "neggrad",
        "optim": "sgd",
        "alpha": 0.95,
        "split": "random",
        "seed": 0,
    }
    (table_file,) = run_file.parent.glob("files/media/table/accuracies_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][-3:] == ["model", "set", "accuracy"]
    rows = {(r[-3], r[-2]): r[-1] for r in table["data"]}
    assert rows == pytest.approx(
        {(m, s): payload["metrics"][f"{m}/acc_{s}"] for m in MODELS for s in ACCURACY_SETS}
    )
    # CSV logging stays on next to W&B
    assert (results.parent / "csv" / "metrics.csv").is_file()


def test_publish_logs_the_plots_and_a_failing_job_still_finishes_its_run(tmp_path, monkeypatch):
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import wandb

    plot = tmp_path / "memorization.png"
    plt.figure(figsize=(1, 1))
    plt.savefig(plot)
    plt.close("all")
    metrics = {"tow": 0.7, "ua": 0.2, "unlearned/acc_forget": 0.8, "mia": float("nan")}
    with pytest.raises(RuntimeError, match="boom"), wandb_logger.one_run_per_job():
        logger = wandb_logger.wandb_logger(project="unlearning", save_dir=str(tmp_path))
        publish([logger], metrics, "ok", [plot])
        raise RuntimeError("boom")  # e.g. writing results.json fails after publishing
    assert wandb.run is None  # the next job of a multirun starts its own run
    wandb.teardown()  # stop the W&B service, which writes the run file to its end
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    summary, _, info = run_summary(run_file)
    assert info["exit_code"] == 1  # finished, marked failed
    assert summary["tow"] == 0.7 and summary["status"] == "ok" and "mia" not in summary
    assert list(run_file.parent.glob("files/media/images/plots/memorization_*.png"))


def test_offline_unless_credentials_or_an_explicit_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logger.has_credentials() and wandb_logger.wants_offline(None)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert wandb_logger.has_credentials() and not wandb_logger.wants_offline(None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger.wants_offline(None)  # an explicit WANDB_MODE wins
    assert not wandb_logger.wants_offline(False)  # and logger.wandb.offline wins over both
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert not wandb_logger.wants_offline(None)
