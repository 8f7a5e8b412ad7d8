"""Sweep launchers (``conf/hydra/launcher/``) as users run them, sweep directories and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf

from tests.conftest import CONF, cli_dirs, run_cli
from unlearning.config import sweep
from unlearning.config.validation import validate_config

# tiny digits jobs without the evaluation suite: the launchers, not the models, are under test
SHRUNK = ["pretrain.epochs=1", "method.epochs=1", "eval=none"]
SHARED_STAGES = ("pretrain", "split", "oracle")


def _sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "logs" / "multirun").iterdir() if p.is_dir())


def _payloads(sweep_dir: Path) -> dict[str, dict]:
    """``{job subdir: results.json payload}`` of one sweep."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def _job_logs(sweep_dir: Path) -> str:
    """Every job's own log file (``<job dir>/train.log``), whichever process ran the job."""
    return "".join(p.read_text() for p in sorted(sweep_dir.glob("*/train.log")))


def _assert_each_shared_stage_computed_once(log: str, jobs: int) -> None:
    for stage in SHARED_STAGES:
        assert log.count(f"[{stage}] computing") == 1, (stage, log[-3000:])
        assert log.count(f"[{stage}] cache hit") == jobs - 1, (stage, log[-3000:])


def _assert_rerun_skips_ok_jobs_and_runs_the_rest(tmp_path: Path, sweep_dir: Path) -> None:
    """Rerun the sweep into its directory with one more job (basic launcher): the finished jobs
    are skipped (results untouched), the new one runs."""
    done = _payloads(sweep_dir)
    stamps = {k: (sweep_dir / k / "results.json").stat().st_mtime_ns for k in done}
    rerun = run_cli(
        [
            "-m",
            "method=neggrad,ga,finetune",
            f"hydra.sweep.dir={sweep_dir}",
            *SHRUNK,
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert out.count("skipped:") == len(done) and out.count("already says ok") == len(done)
    assert _sweep_dirs(tmp_path) == [sweep_dir]
    after = _payloads(sweep_dir)
    assert len(after) == len(done) + 1 and after.keys() > done.keys()
    assert {p["config"]["method"]["name"] for p in after.values()} == {"neggrad", "ga", "finetune"}
    assert all((sweep_dir / k / "results.json").stat().st_mtime_ns == stamps[k] for k in done)


def test_joblib_sweep_on_a_cold_cache_computes_each_shared_stage_once(tmp_path):
    result = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "method=neggrad,ga",
            *SHRUNK,
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in log
    (sweep_dir,) = _sweep_dirs(tmp_path)
    # two jobs started together on an empty cache: one computed each stage, the other reused it
    _assert_each_shared_stage_computed_once(_job_logs(sweep_dir), jobs=2)
    done = _payloads(sweep_dir)
    assert sorted(k[: k.rindex("_")] for k in done) == ["ga_sgd", "neggrad_sgd"]
    assert all(p["status"] == "ok" for p in done.values())


@pytest.mark.slow  # four interpreters (~40 s on 2 cores); the default suite runs joblib
def test_submitit_local_sweep_runs_two_jobs_and_a_rerun_into_its_dir_skips_them(tmp_path):
    result = run_cli(
        ["-m", "hydra/launcher=submitit_local", "method=neggrad,ga", *SHRUNK, *cli_dirs(tmp_path)],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Submitit 'local' sweep output dir" in log
    (sweep_dir,) = _sweep_dirs(tmp_path)
    payloads = _payloads(sweep_dir)
    assert {p["config"]["method"]["name"] for p in payloads.values()} == {"neggrad", "ga"}
    assert all(p["status"] == "ok" for p in payloads.values())
    # each job ran in its own submitit process, which pickled its result back
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2
    _assert_each_shared_stage_computed_once(_job_logs(sweep_dir), jobs=2)
    # resuming the sweep (after preemption, scancel, ...) skips both finished jobs
    _assert_rerun_skips_ok_jobs_and_runs_the_rest(tmp_path, sweep_dir)


def test_slurm_launcher_without_sbatch_fails_at_start_up_naming_what_is_missing(tmp_path):
    # a PATH with no Slurm client: the same path where Slurm is installed (.ci/slurm-up, CI)
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    result = run_cli(
        ["-m", "hydra/launcher=slurm", "method=neggrad,ga", *SHRUNK, *cli_dirs(tmp_path)],
        tmp_path,
        env_extra={"PATH": str(empty_path)},
    )
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert "error: hydra/launcher='slurm'" in result.stderr
    assert "sbatch" in result.stderr and "not found on PATH" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "logs").rglob("results.json"))  # nothing was submitted or run
    assert "[pretrain]" not in result.stdout + result.stderr


def test_launcher_problem_names_the_missing_plugin_and_a_bad_tasks_per_node(monkeypatch):
    slurm = OmegaConf.create(
        {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    )
    monkeypatch.setattr(sweep.importlib.util, "find_spec", lambda name: None)
    assert "pip install hydra-submitit-launcher" in sweep.launcher_problem(slurm)
    monkeypatch.undo()
    monkeypatch.setattr(sweep.shutil, "which", lambda program: f"/usr/bin/{program}")
    assert sweep.launcher_problem(slurm) is None
    slurm.tasks_per_node = "auto"
    assert "trainer.devices" in sweep.launcher_problem(slurm)
    slurm.tasks_per_node, slurm.nodes = 4, None  # trainer=ddp_multinode outside an allocation
    assert "nodes=None (from trainer.num_nodes)" in sweep.launcher_problem(slurm)
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.X"})
    assert sweep.launcher_problem(basic) is None


def _hydra_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_multinode_cpu_preset_asks_slurm_for_one_task_per_node_and_validates_in_the_job(
    config, monkeypatch
):
    """``trainer=ddp_multinode_cpu trainer.num_nodes=2``: the Slurm launcher asks for 2 nodes × 1
    task and no GPUs; inside the allocation the job's config passes validation as it is (no
    ``sync_batchnorm``, accelerator or devices to spell out)."""
    launcher = _hydra_config(
        "hydra/launcher=slurm", "trainer=ddp_multinode_cpu", "trainer.num_nodes=2"
    ).hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 1, None)
    for name, value in {
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NAME": "train",
    }.items():
        monkeypatch.setenv(name, value)
    cfg = config("trainer=ddp_multinode_cpu")
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.sync_batchnorm is False
    validate_config(cfg)


def test_sweeps_started_in_the_same_second_get_distinct_dirs_and_stable_job_subdirs():
    setup_globals()  # registers ${now:}, as hydra.main does
    first, second = _hydra_config(), _hydra_config()
    dirs = [str(c.hydra.sweep.dir) for c in (first, second)]
    assert dirs[0] != dirs[1]
    assert str(first.hydra.sweep.dir) == dirs[0]  # resolved once per sweep (cached)

    # the job subdir hashes the job's overrides (locations excluded): same job, same subdir
    def subdir(dirname: str) -> str:
        cfg = _hydra_config()
        cfg.hydra.job.override_dirname = dirname
        return str(cfg.hydra.sweep.subdir)

    assert subdir("alpha=0.9,method=ga") == subdir("alpha=0.9,method=ga")
    assert subdir("alpha=0.9,method=ga") != subdir("alpha=0.8,method=ga")
    excluded = OmegaConf.to_container(first.hydra.job.config.override_dirname.exclude_keys)
    assert {"paths.cache_dir", "paths.log_dir"} <= set(excluded)


def test_completed_results_needs_status_ok_and_the_same_config(config):
    cfg = config("method=ga")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    assert sweep.completed_results(cfg) is None  # nothing there yet
    resolved = OmegaConf.to_container(cfg, resolve=True)
    payload = {"status": "ok", "config": resolved, "metrics": {"tow": 0.5}}
    (out / "results.json").write_text(json.dumps(payload))
    assert sweep.completed_results(cfg)["metrics"]["tow"] == 0.5
    # other locations (a moved cache or log dir) do not matter ...
    moved = {**resolved, "paths": {**resolved["paths"], "cache_dir": "/elsewhere"}}
    (out / "results.json").write_text(json.dumps({**payload, "config": moved}))
    assert sweep.completed_results(cfg) is not None
    # ... a different config or a diverged run does
    (out / "results.json").write_text(json.dumps({**payload, "config": {**resolved, "alpha": 0.5}}))
    assert sweep.completed_results(cfg) is None
    (out / "results.json").write_text(json.dumps({**payload, "status": "diverged"}))
    assert sweep.completed_results(cfg) is None


@pytest.mark.slow  # a sweeper process and two trials (~50 s on 2 busy cores)
def test_optuna_search_over_alpha_and_lr_reports_the_best_trial(tmp_path):
    result = run_cli(
        [
            "hparams_search=alpha_lr_optuna",
            "hydra.sweeper.n_trials=2",
            *SHRUNK,
            *cli_dirs(tmp_path),
        ],
        tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    (sweep_dir,) = _sweep_dirs(tmp_path)
    trials = list(_payloads(sweep_dir).values())
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    for trial in trials:  # sampled inside the search space
        assert 0.8 <= trial["config"]["alpha"] <= 1.0
        assert 1e-4 <= trial["config"]["method"]["lr"] <= 1e-1
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    # maximised ToW on the validation split (issue 16: never a test metric)
    assert best.best_value == max(t["metrics"]["tow_val"] for t in trials)
    assert set(best.best_params) == {"alpha", "method.lr"}


def _job_number(payload: dict) -> int:
    """The job's number in its sweep (``hydra.job.num``: Optuna's proposal order)."""
    hydra_yaml = Path(payload["config"]["paths"]["output_dir"]) / ".hydra" / "hydra.yaml"
    return int(OmegaConf.load(hydra_yaml).hydra.job.num)


@pytest.mark.slow  # two sweeper processes of three trials each (~2 min on 2 busy cores)
def test_permuting_the_test_labels_changes_no_trial_and_no_selection(tmp_path):
    """Issue 16: Optuna's objective is tow_val, so shuffling the labels of D_test's test rows
    (the validation rows keep theirs) leaves every proposed trial and the best one unchanged,
    while the test metrics, ToW among them, do change: the objective values Optuna sees are
    identical, so every proposal after the single random start-up trial is too."""
    permuted = "dataset._target_=tests.datamodules.permuted_digits.PermutedTestDigits"
    runs = {}
    for name, extra in (("real", []), ("permuted", [permuted])):
        work = tmp_path / name
        work.mkdir()
        args = [
            "hparams_search=alpha_lr_optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=1",
            *SHRUNK,
            *cli_dirs(work),
            *extra,
        ]
        result = run_cli(args, work)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        (sweep_dir,) = _sweep_dirs(work)
        # in the order Optuna proposed them (each job's number, hydra.job.num)
        trials = sorted(_payloads(sweep_dir).values(), key=_job_number)
        runs[name] = (
            [(t["config"]["alpha"], t["config"]["method"]["lr"]) for t in trials],
            OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params,
            [t["metrics"] for t in trials],
        )
    (real_params, real_best, real_metrics), (perm_params, perm_best, perm_metrics) = runs.values()
    assert real_params == perm_params and real_best == perm_best
    assert [m["tow_val"] for m in real_metrics] == [m["tow_val"] for m in perm_metrics]
    # the permutation does reach the test metrics: an objective on them (tow) would differ
    assert real_metrics[0]["original/acc_test"] != perm_metrics[0]["original/acc_test"]
    assert [m["tow"] for m in real_metrics] != [m["tow"] for m in perm_metrics]
