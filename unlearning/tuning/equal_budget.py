"""Equal tuning budgets (issue 16): ``python -m unlearning.tuning --methods neggrad,salun,scrub
--trials 8 --seeds 0,1,2 --out DIR [override ...]``.

A methods table compares methods fairly only if each got the same tuning. For every method this
runs, as a user would, one Optuna search (``hparams_search=alpha_lr_optuna``) with

* the same search-space rule: the method's learning rate ``method.lr`` log-uniform in
  [1e-4, 1e-1], and the retain weight α uniform in [0.8, 1] for the methods that mix a retain
  term (``method.alpha`` exists; for the others α would be a dead dimension);
* the same number of trials, the same sampler seed and the same objective, a validation metric
  (``tow_val`` by default: no test label is read, docs/config/validation.md);

then reruns the selected configuration with every seed of ``--seeds`` (``DIR/final/<method>``),
writes ``DIR/final/selection.json`` (the parameters, the objective, its best value, the trial
count) and prints ``python -m unlearning.report`` tables of the test metrics with 95% intervals,
which name the configuration each row used. Every job shares the cached f_A, split and oracle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unlearning.report.cli import main as report_main
from unlearning.report.tables import SELECTION_FILE

ROOT = Path(__file__).resolve().parents[2]
#: the report's metrics: the test metrics a methods table shows
REPORTED = ("ua", "ra", "ta", "tow")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unlearning.tuning", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--methods", required=True, help="comma-separated, e.g. neggrad,salun")
    parser.add_argument("--trials", type=int, default=8, help="Optuna trials per method")
    parser.add_argument("--seeds", default="0,1,2", help="seeds the selection is rerun with")
    parser.add_argument("--objective", default="tow_val", help="a validation metric to maximise")
    parser.add_argument("--out", type=Path, required=True, help="directory of the whole study")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    return parser


def mixes_retain(method: str, overrides: Sequence[str]) -> bool:
    """Whether ``method`` has a retain weight α (its composed config holds ``method.alpha``)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=[f"method={method}", *overrides])
    return OmegaConf.select(cfg, "method.alpha") is not None


def search_args(method: str, args: argparse.Namespace) -> list[str]:
    """The ``train.py`` arguments of ``method``'s search (the same rule for every method)."""
    space = [] if mixes_retain(method, args.overrides) else ["~hydra.sweeper.params.alpha"]
    return [
        "hparams_search=alpha_lr_optuna",
        f"method={method}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"optimized_metric={args.objective}",
        f"hydra.sweeper.study_name=equal_budget_{method}",
        f"hydra.sweep.dir={args.out / 'search' / method}",
        *space,
        *args.overrides,
    ]


def rerun_args(method: str, params: dict, args: argparse.Namespace) -> list[str]:
    """The ``train.py`` arguments that rerun ``method``'s selection with every seed."""
    return [
        "-m",
        f"method={method}",
        *(f"{key}={value}" for key, value in params.items()),
        f"seed={args.seeds}",
        f"optimized_metric={args.objective}",
        f"hydra.sweep.dir={args.out / 'final' / method}",
        *args.overrides,
    ]


def train(arguments: list[str]) -> None:
    """``python train.py arguments``; a failure stops the study with train.py's message."""
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *arguments], cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: python train.py {' '.join(arguments)} exited {done.returncode}")


def main(argv: Sequence[str] | None = None) -> int:
    """Search, rerun and report every method; exit status 0, or train.py's failure."""
    args = _parser().parse_args(argv)
    selections = {}
    for method in [m for m in args.methods.split(",") if m]:
        print(f"[tuning] {method}: {args.trials} trials maximising {args.objective}", flush=True)
        train(search_args(method, args))
        best = OmegaConf.load(args.out / "search" / method / "optimization_results.yaml")
        params = OmegaConf.to_container(best.best_params)
        selections[method] = {
            "params": params,
            "objective": args.objective,
            "best_value": float(best.best_value),
            "trials": args.trials,
        }
        print(f"[tuning] {method}: selected {params}; rerun with seeds {args.seeds}", flush=True)
        train(rerun_args(method, params, args))
    final = args.out / "final"
    (final / SELECTION_FILE).write_text(json.dumps(selections, indent=2))
    for metric in REPORTED:
        report_main([str(final), "--metric", metric, "--out", str(args.out / f"report_{metric}")])
    return 0
