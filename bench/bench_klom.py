"""Benchmark item 3 (KLoM): the N-oracle ensemble of KLoM trained vectorised / sequentially.

KLoM (002 §2) needs N oracles f_A(R) with different seeds. The pipeline's ensemble stage
(``unlearning.pipeline.stages.ensembles``, the cached stage ``klom_oracles``) trains them with
the memorization trainer (:func:`unlearning.memorization.estimator.train_members`) on R with the
oracle recipe (pretraining settings, 000 App. C.1), all N in one ``torch.func.vmap`` chunk when
``eval.klom.strategy`` resolves to ``vmap`` (``auto``: on CUDA) and one after another otherwise,
then reads the margins on R, F and D_test. This times exactly that call
(:func:`~unlearning.pipeline.stages.ensembles.oracle_margin_rows`) with the default
``eval.klom.models = 8`` on the embedded default, both strategies in alternating order, and also
the histogram KLoM itself (negligible next to training).

Usage::

    python bench/bench_klom.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Aim, Row
from bench.job import default_job

AIM = Aim(">=", 4.0)
#: per run size: (N oracles, pretrain epochs of the recipe or None = the preset's, repeats)
PLAN = {"full": (8, None, 2), "quick": (8, 3, 1), "smoke": (2, 1, 1)}


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    from unlearning.evaluation.metrics.klom import klom
    from unlearning.pipeline.stages.ensembles import oracle_margin_rows, oracle_recipe

    n_models, epochs, repeats = PLAN[size]
    with tempfile.TemporaryDirectory(prefix="bench_klom_") as tmp:
        over = [] if epochs is None else [f"pretrain.epochs={epochs}"]
        job = default_job(Path(work or tmp), over)
    cfg, source = job.cfg, job.source
    x_tr, y_tr = source.in_memory("train", augment=False)
    x_te, y_te = source.in_memory("test", augment=False)
    keep = np.ones(len(y_tr), dtype=bool)
    keep[job.forget] = False
    r, f = np.flatnonzero(keep), job.forget
    x = torch.cat([x_tr[r], x_tr[f], x_te])  # R, F, D_test: the stage's order
    y = torch.cat([y_tr[r], y_tr[f], y_te])
    recipe = oracle_recipe(cfg)

    def run(strategy: str) -> tuple[float, np.ndarray]:
        old = torch.get_num_threads()
        torch.set_num_threads(1)  # as for the memorization comparison: one thread each
        try:
            t0 = time.perf_counter()
            margins = oracle_margin_rows(cfg, x, y, len(r), n_models, strategy, torch.device("cpu"))
            return time.perf_counter() - t0, margins
        finally:
            torch.set_num_threads(old)

    seconds: dict[str, list[float]] = {"sequential": [], "vmap": []}
    margins_of = {}
    for rep in range(repeats):
        for name in seconds if rep % 2 == 0 else list(seconds)[::-1]:
            s, margins_of[name] = run(name)
            seconds[name].append(s)
    t0 = time.perf_counter()
    klom(margins_of["vmap"], margins_of["sequential"])
    klom_s = time.perf_counter() - t0
    ratio = statistics.median(a / b for a, b in zip(seconds["sequential"], seconds["vmap"]))
    note = (
        f"N = {n_models} oracles on R (|R| = {len(r)}), {recipe.epochs} epochs, 1 thread; "
        f"sequential {min(seconds['sequential']):.1f} s; the KLoM histograms {1e3 * klom_s:.0f} ms"
    )
    details = {f"{k}_s": min(v) for k, v in seconds.items()}
    return [Row("3", "vmap ensemble / sequential members: KLoM oracles", ratio, AIM, note, details)]


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import script_main

    return script_main(rows, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
