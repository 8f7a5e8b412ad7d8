"""Benchmark item 5: exact optimal transport / Sinkhorn for E_Wp (000 App. C.3).

Usage::

    python bench/bench_ot.py [--quick]

E_Wp = 1 − W_p between equal-size samples of the L2-normalised penultimate embeddings of R and
F (``unlearning.evaluation.metrics.entanglement.e_wp``, exact transport by POT's network simplex
``ot.emd2``). Sinkhorn (``ot.sinkhorn2``, entropic regularisation ε) approximates the same
transport, in time that grows with 1/ε. Both solve the same problem — the embeddings of f_A on
the embedded default, n points per cloud — at the default ``eval.entanglement.max_samples`` =
500 (R against a disjoint part of R ∪ D_test, since F has only |F| = 72 points on digits) and
at the default job's own n = |F|. Each row is the time ratio exact / Sinkhorn for one ε, with
the difference of the two E_Wp values (Sinkhorn's entropic bias) in the note.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPORT, Row
from bench.job import default_job

#: per run size: (points per cloud at the default size, repeats)
PLAN = {"full": (500, 3), "quick": (500, 2), "smoke": (20, 1)}
#: entropic regularisations ε, relative to the mean ground cost (small: close to exact, slow)
EPSILONS = (0.01, 0.1)


def exact(a: np.ndarray, b: np.ndarray, p: float = 2.0) -> float:
    from unlearning.evaluation.metrics.entanglement import wasserstein

    return wasserstein(a, b, p).distance


def sinkhorn(a: np.ndarray, b: np.ndarray, epsilon: float, p: float = 2.0) -> float:
    """W_p by Sinkhorn with ε = ``epsilon`` × the mean ground cost (the transport cost of the
    entropic plan, without the entropy term)."""
    import ot

    cost = ot.dist(a, b, metric="euclidean") ** p
    reg = epsilon * float(cost.mean())
    value = ot.sinkhorn2(ot.unif(len(a)), ot.unif(len(b)), cost, reg, numItermax=100_000)
    return float(value) ** (1.0 / p)


def embeddings(job) -> dict[str, np.ndarray]:
    from datamodules.unlearning_datamodule import UnlearningDataModule
    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.pipeline.stages.training import load_model

    net = load_model(job.cfg, job.pretrained)
    data = UnlearningDataModule(job.source, job.forget, eval_batch_size=1024)
    return {
        s: model_outputs(net, data.eval_dataloader(s)).normalized_embeddings()
        for s in ("retain", "forget", "test")
    }


def compare(
    a: np.ndarray, b: np.ndarray, repeats: int, epsilon: float
) -> tuple[float, float, float, float]:
    """Median exact/Sinkhorn time ratio, exact seconds, E_Wp exact and E_Wp Sinkhorn."""
    ratios, exact_s = [], []
    variants = (("exact", exact), ("sinkhorn", lambda a, b: sinkhorn(a, b, epsilon)))
    for rep in range(repeats):
        times = {}
        for name, fn in variants[:: 1 if rep % 2 == 0 else -1]:
            t0 = time.perf_counter()
            value = fn(a, b)
            times[name] = (time.perf_counter() - t0, value)
        ratios.append(times["exact"][0] / times["sinkhorn"][0])
        exact_s.append(times["exact"][0])
    return statistics.median(ratios), min(exact_s), 1 - times["exact"][1], 1 - times["sinkhorn"][1]


def rows(size: str = "full", work: Path | None = None) -> list[Row]:
    n, repeats = PLAN[size]
    over = ["pretrain.epochs=1"] if size == "smoke" else []
    with tempfile.TemporaryDirectory(prefix="bench_ot_") as tmp:
        emb = embeddings(default_job(Path(work or tmp), over))
    rng = np.random.default_rng(0)
    pool = np.concatenate([emb["retain"], emb["test"]])
    order = rng.permutation(len(pool))
    a, b = pool[order[:n]], pool[order[n : 2 * n]]
    exact(a[:5], b[:5]), sinkhorn(a[:5], b[:5], 0.1)  # warm-up: imports, first calls
    k = min(len(emb["retain"]), len(emb["forget"]), n)
    r = emb["retain"][rng.choice(len(emb["retain"]), k, replace=False)]
    cases = [(f"n = {n} (max_samples)", a, b, eps) for eps in EPSILONS]
    cases.append((f"R vs F, the default job's n = {k}", r, emb["forget"][:k], EPSILONS[0]))
    out = []
    for label, x, y, eps in cases:
        ratio, secs, v_exact, v_sink = compare(x, y, repeats, eps)
        note = (
            f"exact {1e3 * secs:.1f} ms; E_Wp exact {v_exact:.4f}, Sinkhorn {v_sink:.4f} "
            f"(difference {v_sink - v_exact:+.4f})"
        )
        name = f"exact OT / Sinkhorn (ε = {eps:g}·mean cost), E_Wp at {label}"
        out.append(Row("5", name, ratio, REPORT, note))
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.run_all import script_main

    return script_main(rows, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
