"""Feldman–Zhang memorization scores (000 eq. 9, SPEC §4; Feldman & Zhang 2020).

The memorization of training sample ``i`` by a training algorithm A on data S is (000 eq. 9)::

    mem(i) = P[f(x_i) = y_i | i ∈ S_k] − P[f(x_i) = y_i | i ∉ S_k]

estimated, as in Feldman & Zhang's subsampling estimator, from K models ("members") each trained
on a random subset S_k ⊂ S with |S_k| = round(0.7·|S|): the first term is the accuracy on
``i`` of the members that trained on it, the second that of the members that did not.

A is the pretraining recipe itself (issue #15): member k is f_A trained on S_k — the same model,
optimizer A (SGD, SAM, ASAM), scheduler, augmentation and epochs as the pretraining stage — which
:mod:`unlearning.pipeline.stages.scores` supplies as the ``train_member`` callable. This module
knows nothing about how a member is trained. Its layers:

* :func:`subset_masks` — the K random subsets, as a ``(K, n)`` bool matrix; row k depends on
  ``(seed, k)`` only, so a run with more members extends a run with fewer (resume);
* :func:`memorization_from_matrices` — the estimator and its standard error from the in/out mask
  and the members' correctness matrix (pure numpy);
* :func:`estimate_memorization` — the whole estimate: the subsets, resume from a ``work_dir`` of
  finished members (:mod:`unlearning.memorization.member_store`), training the missing ones
  with progress and ETA (:mod:`unlearning.memorization.progress`), the scores. Each member's
  margin on every training sample is kept too (:attr:`MemorizationResult.margins`): the
  datamodel influence matrix of ``split=influence_pc`` reads them
  (:func:`unlearning.memorization.influence.datamodel_influence`);
* :func:`save_score_file` / :func:`load_score_file` — the scores as an ``.npz`` file.

See ``docs/memorization.md`` for the choice of K, the measured speed and the format of a
precomputed score file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning.memorization.member_store import MemberStore
from unlearning.memorization.progress import Progress

log = logging.getLogger(__name__)

# Spawn-key purpose of the per-member seed sequences (see :func:`_seed_sequence`).
_SUBSET = 0

#: ``train_member(k, in_mask_k, member_dir) -> (margins, correct)``: train member ``k`` on the
#: samples where the bool row ``in_mask_k`` is true (``member_dir``: an empty directory it may
#: use, e.g. for checkpoints) and return its margins ``(n,)`` float32 and correctness ``(n,)``
#: bool on all of S
TrainMember = Callable[[int, np.ndarray, Path], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------
# The estimator (pure numpy)
# --------------------------------------------------------------------------------------------


@dataclass
class MemorizationResult:
    """Per-sample memorization scores of 000 eq. 9 (SPEC §4) and the data behind them.

    ``scores[i]`` = (accuracy on i of members trained on i) − (accuracy on i of members not
    trained on i); ``stderr[i]`` its standard error (see :func:`memorization_from_matrices`).
    Samples never in (or never out of) any member's subset have ``scores`` and ``stderr`` NaN;
    ``undefined`` counts them. ``margins[k, i]`` is member k's margin on sample i
    (:func:`unlearning.evaluation.metrics.klom.margins`).
    """

    scores: np.ndarray  # (n,) float
    stderr: np.ndarray  # (n,)
    in_mask: np.ndarray  # (K, n) bool — sample i in member k's subset
    correct: np.ndarray  # (K, n) bool — member k classifies i correctly
    margins: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (K, n)
    n_in: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n,)
    n_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n,)
    trained: int = 0  # members trained by this call (the others were loaded from work_dir)
    seconds: float = 0.0  # wall time of this call

    @property
    def members(self) -> int:
        return int(self.in_mask.shape[0])

    @property
    def undefined(self) -> int:
        """Samples whose score is NaN (never in, or never out of, a member's subset)."""
        return int(np.isnan(self.scores).sum())


def memorization_from_matrices(
    in_mask: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The memorization estimate of 000 eq. 9 (SPEC §4) and its standard error.

    Args:
        in_mask: ``(K, n)`` bool, ``in_mask[k, i]`` ⇔ sample i is in member k's subset S_k.
        correct: ``(K, n)`` bool, ``correct[k, i]`` ⇔ member k predicts y_i on x_i.

    Returns:
        ``(scores, stderr)``, each ``(n,)`` float64, with
        ``p_in = #{k: i∈S_k, correct} / n_in``, ``p_out = #{k: i∉S_k, correct} / n_out``,
        ``scores = p_in − p_out`` and the plug-in (binomial) standard error of a difference of
        two independent proportions,
        ``stderr = sqrt(p_in(1 − p_in)/n_in + p_out(1 − p_out)/n_out)``.
        Where ``n_in == 0`` or ``n_out == 0`` both are NaN.
    """
    in_mask = np.asarray(in_mask, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    if in_mask.ndim != 2 or in_mask.shape != correct.shape:
        raise ValueError(
            f"in_mask {in_mask.shape} and correct {correct.shape} must be equal (K, n) matrices"
        )
    n_in = in_mask.sum(0)
    n_out = (~in_mask).sum(0)
    hit_in = (in_mask & correct).sum(0)
    hit_out = (~in_mask & correct).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = hit_in / n_in
        p_out = hit_out / n_out
        scores = p_in - p_out
        stderr = np.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)
    undefined = (n_in == 0) | (n_out == 0)
    scores[undefined] = np.nan
    stderr[undefined] = np.nan
    return scores.astype(np.float64), stderr.astype(np.float64)


def _seed_sequence(seed: int, member: int, purpose: int) -> np.random.SeedSequence:
    """Independent random stream for ``(seed, member, purpose)`` — nothing else enters it."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(int(member), int(purpose)))


def subset_size(n: int, fraction: float) -> int:
    """|S_k| = round(fraction · n), checked to leave at least one sample in and one out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 1) (Feldman–Zhang use 0.7)")
    m = int(round(fraction * n))
    if not 0 < m < n:
        raise ValueError(f"round({fraction} · {n}) = {m}: each subset needs 0 < |S_k| < n")
    return m


def subset_masks(n: int, members: int, fraction: float, seed: int, start: int = 0) -> np.ndarray:
    """``(members, n)`` bool: row j is member ``start + j``'s random subset S_k (SPEC §4).

    Each row has exactly ``round(fraction · n)`` True entries, drawn uniformly without
    replacement. Row k depends on ``(seed, k)`` only, so the masks of K members are a prefix of
    the masks of K' > K members (what makes a run resumable and extendable).
    """
    m = subset_size(n, fraction)
    masks = np.zeros((members, n), dtype=bool)
    for j in range(members):
        rng = np.random.default_rng(_seed_sequence(seed, start + j, _SUBSET))
        masks[j, rng.choice(n, size=m, replace=False)] = True
    return masks


# --------------------------------------------------------------------------------------------
# Score files (the format of the public CIFAR-100 file, SPEC §4 source 2)
# --------------------------------------------------------------------------------------------


def save_score_file(path: Path | str, result: MemorizationResult, labels: np.ndarray) -> Path:
    """Write ``result`` as a score file readable by :func:`load_score_file` (atomically).

    Keys: ``tr_mem`` (n,) float64 scores — the key of the public CIFAR-100 file of Feldman &
    Zhang — plus ``tr_labels`` (n,) int64 labels (also in the public file), ``tr_mem_stderr``,
    ``n_in``, ``n_out`` and ``members``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            tr_mem=result.scores,
            tr_mem_stderr=result.stderr,
            tr_labels=np.asarray(labels, dtype=np.int64),
            n_in=result.in_mask.sum(0),
            n_out=(~result.in_mask).sum(0),
            members=np.int64(result.members),
        )
    os.replace(tmp, path)
    return path


def load_score_file(
    path: Path | str, n: int, labels: np.ndarray | None = None, key: str = "tr_mem"
) -> np.ndarray:
    """Scores ``(n,)`` float64 from an ``.npz`` score file, checked against the dataset.

    Raises ``ValueError`` with the file, the key and both lengths when the array's length is not
    ``n`` = |S|, and when the file has ``tr_labels`` that differ from ``labels`` (another
    dataset, or another order of the same one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"memorization score file {path} does not exist")
    with np.load(path) as data:
        if key not in data:
            raise ValueError(f"{path} has no key {key!r} (keys: {sorted(data.files)})")
        scores = np.asarray(data[key], dtype=np.float64).reshape(-1)
        file_labels = np.asarray(data["tr_labels"]) if "tr_labels" in data else None
    if len(scores) != n:
        raise ValueError(
            f"{path}[{key!r}] has {len(scores)} scores but the training set has {n} samples: "
            "the file belongs to another dataset (or split)"
        )
    if labels is not None and file_labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if file_labels.shape != labels.shape or not np.array_equal(file_labels, labels):
            bad = int((file_labels.reshape(-1)[: len(labels)] != labels).sum())
            raise ValueError(
                f"{path}['tr_labels'] differs from the training labels at {bad} of {n} "
                "positions: the scores are for another dataset or another sample order"
            )
    return scores


# --------------------------------------------------------------------------------------------
# The whole estimate
# --------------------------------------------------------------------------------------------


def estimate_memorization(
    train_member: TrainMember,
    labels: np.ndarray,
    *,
    members: int = 128,
    fraction: float = 0.7,
    seed: int = 0,
    work_dir: Path | str | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    threads: int | None = None,
    workers: int = 1,
    worker_trainer: Callable[[], TrainMember] | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> MemorizationResult:
    """Feldman–Zhang memorization of every sample of S (000 eq. 9, SPEC §4).

    Trains ``members`` models one after another, member k by ``train_member(k,
    subset_masks(...)[k], member_dir)`` on its random subset of ``round(fraction·|S|)`` samples,
    and returns :func:`memorization_from_matrices` of the in/out mask and the members'
    correctness on S, with their margins.

    Args:
        train_member: trains one member (:data:`TrainMember`).
        labels: the labels of S, ``(n,)``.
        work_dir: if given, each finished member's margins and correctness are saved there
            atomically (``member_<k>.npz``); a rerun (also with more members) loads them and
            trains only the missing members, so a killed estimate resumes at its first
            untrained member. ``member_dir`` is ``work_dir/member_<k>/`` (kept until the member
            is saved, so a member trainer with checkpoints resumes inside a member too); without
            a ``work_dir`` a temporary directory.
        meta: what determines a member's result (recipe, model, data), written to and checked
            against ``work_dir`` (:class:`~unlearning.memorization.member_store.MemberStore`);
            ``members`` is not part of it. ``n``, ``fraction`` and ``seed`` are added.
        progress: show a progress bar (members done / K, ETA) and log a line every ~10 %.
        threads: if given, ``torch.set_num_threads(threads)`` for the duration of the call
            (restored afterwards), and in each worker process.
        workers: with ``worker_trainer``, train this many members at once, each in a spawned
            worker process that builds its own ``train_member`` by calling ``worker_trainer()``
            (picklable: a ``functools.partial`` of a module-level function); members then finish
            in any order. Each member is still trained by the same function, so the result is
            the same as in one process. ``1`` (or no ``worker_trainer``): one after another in
            this process.
        callback: ``callback(done, members)`` after each finished member is recorded (and
            saved); an exception raised there stops the estimate, leaving the saved members.
    """

    t0 = time.perf_counter()
    labels = np.asarray(labels).reshape(-1)
    if members < 2:
        raise ValueError(f"members={members!r}: need ≥ 2 members (in and out of each subset)")
    n = len(labels)
    masks = subset_masks(n, members, fraction, seed)
    store = None
    if work_dir is not None:
        full_meta = {**(meta or {}), "n": n, "fraction": float(fraction), "seed": int(seed)}
        store = MemberStore(work_dir, full_meta)
    margins = np.full((members, n), np.nan, dtype=np.float32)
    correct = np.zeros((members, n), dtype=bool)
    have = np.zeros(members, dtype=bool)
    if store is not None:
        for k in range(members):
            row = store.load(k, n)
            if row is not None:
                margins[k], correct[k] = row
                have[k] = True
        if have.any():
            log.info("memorization: %d/%d members loaded from %s", have.sum(), members, work_dir)
    todo = [k for k in range(members) if not have[k]]
    bar = Progress(members, int(have.sum()), progress and bool(todo))
    scratch = None if store is not None else Path(tempfile.mkdtemp(prefix="members-"))

    def record(k: int, m: np.ndarray, c: np.ndarray) -> None:
        margins[k], correct[k], have[k] = m, c, True
        if store is not None:
            store.save(k, margins[k], correct[k])
        bar.update(1)
        if callback is not None:
            callback(int(have.sum()), members)

    root = store.work_dir if store is not None else scratch
    assert root is not None
    try:
        with _torch_threads(threads):
            if workers > 1 and worker_trainer is not None and len(todo) > 1:
                stream = _in_workers(worker_trainer, todo, masks, root, workers, threads)
            else:
                stream = _in_process(train_member, todo, masks, root)
            try:
                for k, m, c in stream:
                    record(k, m, c)
                    shutil.rmtree(root / f"member_{k}", ignore_errors=True)
            finally:
                stream.close()
    finally:
        bar.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    scores, stderr = memorization_from_matrices(masks, correct)
    result = MemorizationResult(
        scores=scores,
        stderr=stderr,
        in_mask=masks,
        correct=correct,
        margins=margins,
        n_in=masks.sum(0),
        n_out=(~masks).sum(0),
        trained=len(todo),
        seconds=time.perf_counter() - t0,
    )
    _log_result(result)
    return result


Row = tuple[int, np.ndarray, np.ndarray]


def _in_process(
    train_member: TrainMember, todo: list[int], masks: np.ndarray, root: Path
) -> Iterator[Row]:
    """Members ``todo`` trained one after another here: ``(k, margins, correct)`` each."""
    for k in todo:
        member_dir = root / f"member_{k}"
        member_dir.mkdir(parents=True, exist_ok=True)
        yield (k, *train_member(k, masks[k], member_dir))


#: a worker process's ``train_member`` (set once per worker by :func:`_worker_init`)
_WORKER: dict[str, TrainMember] = {}


def _worker_init(worker_trainer: Callable[[], TrainMember], threads: int | None) -> None:
    _exit_with_parent()
    torch.set_num_threads(threads or 1)
    _WORKER["train"] = worker_trainer()


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """End this worker process when the estimate's process is gone (killed: a preemption, or the
    kill-and-resume test): the pool's queues do not tell an idle worker, which would otherwise
    wait forever. A daemon thread polls the parent's pid."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_train(k: int, row: np.ndarray, member_dir: Path) -> Row:
    member_dir.mkdir(parents=True, exist_ok=True)
    return (k, *_WORKER["train"](k, row, member_dir))


def _in_workers(
    worker_trainer: Callable[[], TrainMember],
    todo: list[int],
    masks: np.ndarray,
    root: Path,
    workers: int,
    threads: int | None,
) -> Iterator[Row]:
    """Members ``todo`` trained by ``workers`` spawned processes, yielded as they finish; at
    most ``workers`` are queued ahead, so a stop (an exception, a kill) loses at most the members
    in flight."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(worker_trainer, threads),
    )
    queue = list(todo)
    pending: set[Future] = set()
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                k = queue.pop(0)
                pending.add(pool.submit(_worker_train, k, masks[k], root / f"member_{k}"))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: f.result()[0]):
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (unchanged for ``None``)."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)


def _log_result(result: MemorizationResult) -> None:
    """Warn about undefined scores; log the members, time and mean score."""
    if result.undefined:
        log.warning(
            "memorization: %d of %d samples were never in (or never out of) a subset; their "
            "score is NaN — use more members",
            result.undefined,
            len(result.scores),
        )
    log.info(
        "memorization: %d members (%d trained) in %.1f s; mean score %.3f",
        result.members,
        result.trained,
        result.seconds,
        float(np.nanmean(result.scores)),
    )
