"""Feldman–Zhang memorization scores (000 eq. 9, SPEC §4; Feldman & Zhang 2020).

The memorization of training sample ``i`` by a training algorithm A on data S is (000 eq. 9)::

    mem(i) = P[f(x_i) = y_i | i ∈ S_k] − P[f(x_i) = y_i | i ∉ S_k]

estimated, as in Feldman & Zhang's subsampling estimator, from K models ("members") each trained
on a random subset S_k ⊂ S with |S_k| = round(0.7·|S|): the first term is the accuracy on
``i`` of the members that trained on it, the second that of the members that did not.

Layers of this module:

* :func:`subset_masks` — the K random subsets, as a ``(K, n)`` bool matrix; row k depends on
  ``(seed, k)`` only, so a run with more members extends a run with fewer (resume);
* :func:`memorization_from_matrices` — the estimator and its standard error from the in/out mask
  and the members' correctness matrix (pure numpy);
* :func:`train_members` — trains members and yields their logits on all of S, with three
  interchangeable strategies: ``"sequential"`` (one member after another in this process),
  ``"vmap"`` (a chunk of members as one vectorised ensemble: ``torch.func.stack_module_state``
  + ``functional_call`` + ``vmap``, with a functional SGD-momentum update), and ``"processes"``
  (members spread over worker processes, one thread each). Member k's initialisation and
  mini-batch order derive from ``(seed, k)`` only, so every strategy trains the same member k
  (identical up to float round-off);
* :func:`estimate_memorization` — the whole estimate: the subsets, resume from a ``work_dir`` of
  finished members (:mod:`unlearning.memorization.member_store`), training the missing ones
  with progress and ETA (:mod:`unlearning.memorization.progress`), the scores;
* :func:`save_score_file` / :func:`load_score_file` — the scores as an ``.npz`` file.

See ``docs/memorization.md`` for the choice of K, the strategies' measured speed and the format
of a precomputed score file.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.memorization.member_store import MemberStore
from unlearning.memorization.progress import Progress

log = logging.getLogger(__name__)

STRATEGIES = ("vmap", "sequential", "processes", "auto")

# Spawn-key purposes of the per-member seed sequences (see :func:`_seed_sequence`).
_SUBSET, _INIT, _ORDER = 0, 1, 2


# --------------------------------------------------------------------------------------------
# The estimator (pure numpy)
# --------------------------------------------------------------------------------------------


@dataclass
class MemorizationResult:
    """Per-sample memorization scores of 000 eq. 9 (SPEC §4) and the data behind them.

    ``scores[i]`` = (accuracy on i of members trained on i) − (accuracy on i of members not
    trained on i); ``stderr[i]`` its standard error (see :func:`memorization_from_matrices`).
    Samples never in (or never out of) any member's subset have ``scores`` and ``stderr`` NaN;
    ``undefined`` counts them.
    """

    scores: np.ndarray  # (n,) float
    stderr: np.ndarray  # (n,)
    in_mask: np.ndarray  # (K, n) bool — sample i in member k's subset
    correct: np.ndarray  # (K, n) bool — member k classifies i correctly
    n_in: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n,)
    n_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n,)
    trained: int = 0  # members trained by this call (the others were loaded from work_dir)
    seconds: float = 0.0  # wall time of this call
    strategy: str = ""  # the strategy that ran ("auto" resolved)

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


def _torch_seed(seed: int, member: int, purpose: int) -> int:
    return int(_seed_sequence(seed, member, purpose).generate_state(1, dtype=np.uint64)[0] >> 1)


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
# Training members
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How each member is trained (identical for all strategies).

    SGD with momentum and (coupled, PyTorch-style) weight decay on mean cross-entropy; shuffled
    mini-batches of the member's own subset (the last, smaller batch is kept); per-epoch cosine
    learning rate ``lr_e = lr · ½(1 + cos(π e / epochs))`` for epoch e = 0..epochs−1, as
    ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch (the pretraining schedule).
    """

    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    eval_batch_size: int = 1024

    def lr_at(self, epoch: int) -> float:
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(self.epochs, 1)))


def init_member(make_model: Callable[[], nn.Module], seed: int, member: int) -> nn.Module:
    """Member ``member``'s freshly initialised model: ``make_model()`` under a seed derived from
    ``(seed, member)``; the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_torch_seed(seed, member, _INIT))
        return make_model()


def _order_generator(seed: int, member: int) -> torch.Generator:
    return torch.Generator().manual_seed(_torch_seed(seed, member, _ORDER))


def sgd_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The member optimizer: SGD with the recipe's momentum and weight decay."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    epoch: int,
    cfg: TrainConfig,
    device: torch.device,
) -> None:
    """One epoch of mini-batch SGD over ``x[order]`` at the cosine learning rate of ``epoch``."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr_at(epoch)
    model.train()
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size].to(x.device)
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, cfg: TrainConfig, device: torch.device
) -> torch.Tensor:
    """Eval-mode logits of ``model`` on all of ``x``, on the CPU."""
    model.eval()
    out = [
        model(x[i : i + cfg.eval_batch_size].to(device)).float().cpu()
        for i in range(0, len(x), cfg.eval_batch_size)
    ]
    return torch.cat(out)


def _train_one(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    subset: torch.Tensor,
    member: int,
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """Train one member on ``x[subset]`` and return its eval-mode logits on all of x (CPU)."""
    model = init_member(make_model, cfg.seed, member).to(device)
    opt = sgd_for(model, cfg)
    gen = _order_generator(cfg.seed, member)
    for epoch in range(cfg.epochs):
        train_epoch(
            model, opt, x, y, subset[torch.randperm(len(subset), generator=gen)], epoch, cfg, device
        )
    return predict(model, x, cfg, device)


def _train_chunk_vmap(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: torch.Tensor,
    members: Sequence[int],
    cfg: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """Train ``len(members)`` members as one vectorised ensemble; logits ``(c, n, classes)``.

    Parameters and buffers of the members are stacked (``stack_module_state``); one
    ``vmap(functional_call)`` runs every member on its own mini-batch. BatchNorm's running
    statistics are stacked buffers: in train mode BN updates them in place through vmap, member
    by member, so eval-mode predictions use each member's own statistics, exactly as a
    sequentially trained member. Gradients come from one backward pass of the sum of the
    members' (independent) mean losses; the SGD-momentum update runs under ``no_grad`` on the
    stacked leaves, so no autograd history accumulates (the leak warned about in issue 4).
    """
    from torch.func import functional_call, stack_module_state, vmap

    models = [init_member(make_model, cfg.seed, k).to(device) for k in members]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    del models

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor):
        return functional_call(base, (p, b), (xb,))

    batched = vmap(forward, randomness="different")
    names = list(params)
    leaves = [params[name] for name in names]
    momenta = [torch.zeros_like(p, requires_grad=False) for p in leaves]
    gens = [_order_generator(cfg.seed, k) for k in members]
    c, m = subsets.shape
    base.train()
    for epoch in range(cfg.epochs):
        lr = cfg.lr_at(epoch)
        order = torch.stack([subsets[j][torch.randperm(m, generator=gens[j])] for j in range(c)])
        for start in range(0, m, cfg.batch_size):
            idx = order[:, start : start + cfg.batch_size]  # (c, b)
            idx = idx.to(x.device)
            xb, yb = x[idx].to(device), y[idx].to(device)  # (c, b, ...), (c, b)
            logits = batched(params, buffers, xb)  # (c, b, classes)
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
            loss = loss.view(c, -1).mean(1).sum()
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                for p, g, buf in zip(leaves, grads, momenta):
                    d = g.add(p, alpha=cfg.weight_decay) if cfg.weight_decay else g
                    buf.mul_(cfg.momentum).add_(d)
                    p.sub_(buf, alpha=lr)
    base.eval()
    eval_fn = vmap(forward, in_dims=(0, 0, None), randomness="different")
    with torch.no_grad():
        out = [
            eval_fn(params, buffers, x[i : i + cfg.eval_batch_size].to(device)).float().cpu()
            for i in range(0, len(x), cfg.eval_batch_size)
        ]
    return torch.cat(out, dim=1)


# Worker-process state for the "processes" strategy (set once per worker by the initializer).
_WORKER: dict[str, Any] = {}


def _worker_init(
    make_model: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig
) -> None:
    torch.set_num_threads(1)
    _WORKER.update(make_model=make_model, x=x, y=y, cfg=cfg)


def _worker_train(member: int, subset: torch.Tensor) -> tuple[int, torch.Tensor]:
    w, cpu = _WORKER, torch.device("cpu")
    return member, _train_one(w["make_model"], w["x"], w["y"], subset, member, w["cfg"], cpu)


def resolve_strategy(strategy: str, device: torch.device) -> str:
    """``"auto"`` → ``"vmap"`` on CUDA, else ``"sequential"`` (see docs/memorization.md for the
    CPU measurements behind this choice); other names are checked and returned."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: choose one of {STRATEGIES}")
    if strategy == "auto":
        return "vmap" if device.type == "cuda" else "sequential"
    return strategy


def train_members(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    members: Sequence[int],
    masks: np.ndarray,
    cfg: TrainConfig,
    *,
    strategy: str = "sequential",
    chunk_size: int = 32,
    workers: int = 2,
    device: torch.device | str | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Train the given members and yield ``(member_ids, logits)`` as they finish.

    ``masks[j]`` is the subset mask of ``members[j]``; ``logits`` is ``(len(ids), n, classes)``,
    eval-mode outputs on all of ``x``, on the CPU. ``"sequential"`` and ``"processes"`` yield one
    member at a time (``"processes"`` in completion order), ``"vmap"`` one chunk of up to
    ``chunk_size`` members. For ``"processes"``, ``make_model`` must be picklable (a class or a
    ``functools.partial``, not a lambda) and the caller's main module must be importable by a
    spawned child (``if __name__ == "__main__":`` guard in scripts).
    """
    dev = torch.device(device) if device is not None else x.device
    strategy = resolve_strategy(strategy, dev)
    members = [int(k) for k in members]
    if len(masks) != len(members):
        raise ValueError(f"{len(masks)} masks for {len(members)} members")
    subsets = [torch.from_numpy(np.flatnonzero(row)).long() for row in masks]
    # In-process strategies keep S on the training device (no per-batch host→device copies);
    # batch indices are drawn on the CPU (seeded generators) and moved before gathering.
    x, y = (x.cpu(), y.cpu()) if strategy == "processes" else (x.to(dev), y.to(dev))
    if strategy == "sequential":
        for k, sub in zip(members, subsets):
            yield [k], _train_one(make_model, x, y, sub, k, cfg, dev).unsqueeze(0)
    elif strategy == "vmap":
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be ≥ 1")
        for s in range(0, len(members), chunk_size):
            ids = members[s : s + chunk_size]
            chunk = torch.stack(subsets[s : s + chunk_size])
            yield ids, _train_chunk_vmap(make_model, x, y, chunk, ids, cfg, dev)
    else:  # processes
        if dev.type != "cpu":
            raise ValueError("strategy='processes' trains on the CPU; use 'vmap' on CUDA")
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be ≥ 1")
        yield from _train_processes(make_model, x, y, members, subsets, cfg, workers)


def _train_processes(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    members: list[int],
    subsets: list[torch.Tensor],
    cfg: TrainConfig,
    workers: int,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(members)) or 1,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(make_model, x, y, cfg),
    ) as pool:
        pending: set[Future] = {
            pool.submit(_worker_train, k, sub) for k, sub in zip(members, subsets)
        }
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    k, logits = fut.result()
                    yield [k], logits.unsqueeze(0)
        finally:
            for fut in pending:
                fut.cancel()


# --------------------------------------------------------------------------------------------
# Resume: one row file per finished member (unlearning.memorization.member_store)
# --------------------------------------------------------------------------------------------


def _fingerprint(make_model: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor) -> str:
    """Hash of the labels, a strided sample of the images and the model's architecture."""
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(y.cpu().numpy().astype(np.int64).tobytes())
    step = max(1, len(x) // 2048)
    h.update(x[::step].detach().cpu().float().contiguous().numpy().tobytes())
    h.update(repr(init_member(make_model, 0, 0)).encode())
    return h.hexdigest()[:16]


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
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    members: int = 128,
    fraction: float = 0.7,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    strategy: str = "auto",
    chunk_size: int = 32,
    workers: int = 2,
    work_dir: Path | str | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    threads: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> MemorizationResult:
    """Feldman–Zhang memorization of every sample of S (000 eq. 9, SPEC §4).

    Trains ``members`` models, member k on the random subset ``subset_masks(...)[k]`` of
    ``round(fraction·|S|)`` samples (see :class:`TrainConfig` for the recipe), predicts all of S
    in eval mode, and returns :func:`memorization_from_matrices` of the in/out mask and the
    correctness matrix.

    Args:
        make_model: returns a fresh, randomly initialised model; called under member k's seed.
        x, y: the whole training set S, in memory, with test-time transforms (no augmentation).
        strategy: ``"sequential"``, ``"vmap"`` (chunks of ``chunk_size`` members),
            ``"processes"`` (``workers`` processes, one thread each) or ``"auto"``
            (:func:`resolve_strategy`).
        work_dir: if given, each finished member's predicted labels are saved there atomically
            (``member_<k>.npy``, temp file + ``os.replace``); a rerun (also with more members)
            loads them and trains only the missing members. The directory is tied to the data,
            model and training settings (``memorization_meta.json``), not to ``members`` or
            ``strategy`` (:class:`~unlearning.memorization.member_store.MemberStore`).
        progress: show a progress bar (members done / K, ETA) and log a line every ~10 %.
        device: where to train (default: ``x.device``).
        threads: if given, ``torch.set_num_threads(threads)`` for the duration of the call
            (restored afterwards); ``"processes"`` workers always use one thread.
        callback: ``callback(done, members)`` after each finished member is recorded (and
            saved); an exception raised there stops the estimate, leaving the saved members.
    """
    t0 = time.perf_counter()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if members < 2:
        raise ValueError(f"members={members!r}: need ≥ 2 members (in and out of each subset)")
    n = len(y)
    cfg = TrainConfig(epochs, lr, batch_size, momentum, weight_decay, seed)
    dev = torch.device(device) if device is not None else x.device
    resolved = resolve_strategy(strategy, dev)
    masks = subset_masks(n, members, fraction, seed)
    store = None
    if work_dir is not None:
        store = MemberStore(work_dir, _store_meta(make_model, x, y, cfg, fraction))
    preds, have = _finished_members(store, members, n)
    todo = [k for k in range(members) if not have[k]]
    with _torch_threads(threads):
        _train_missing(
            train_members(
                make_model,
                x,
                y,
                todo,
                masks[todo],
                cfg,
                strategy=resolved,
                chunk_size=chunk_size,
                workers=workers,
                device=dev,
            ),
            preds,
            have,
            store,
            Progress(members, int(have.sum()), progress and bool(todo)),
            callback,
        )
    correct = preds == y.cpu().numpy()[None, :]
    scores, stderr = memorization_from_matrices(masks, correct)
    result = MemorizationResult(
        scores=scores,
        stderr=stderr,
        in_mask=masks,
        correct=correct,
        n_in=masks.sum(0),
        n_out=(~masks).sum(0),
        trained=len(todo),
        seconds=time.perf_counter() - t0,
        strategy=resolved,
    )
    _log_result(result)
    return result


def _store_meta(
    make_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    fraction: float,
) -> dict[str, Any]:
    """What determines a member's predictions, the key of a work directory: the training recipe
    (not ``eval_batch_size``), the subset fraction, |S| and a fingerprint of data and model."""
    meta = {**asdict(cfg), "fraction": fraction, "n": len(y)}
    meta.pop("eval_batch_size")
    meta["fingerprint"] = _fingerprint(make_model, x, y)
    return meta


def _finished_members(
    store: MemberStore | None, members: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(preds, have)``: the ``(members, n)`` predicted labels (−1 where unknown) and which
    members finished, as loaded from ``store`` (none without a store)."""
    preds = np.full((members, n), -1, dtype=np.int64)
    have = np.zeros(members, dtype=bool)
    if store is not None:
        for k in range(members):
            row = store.load(k, n)
            if row is not None:
                preds[k], have[k] = row, True
    if have.any():
        log.info("memorization: %d/%d members loaded from %s", have.sum(), members, store.work_dir)
    return preds, have


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


def _train_missing(
    stream: Iterator[tuple[list[int], torch.Tensor]],
    preds: np.ndarray,
    have: np.ndarray,
    store: MemberStore | None,
    bar: Progress,
    callback: Callable[[int, int], None] | None,
) -> None:
    """Record each chunk of members ``stream`` (:func:`train_members`) yields: its predicted
    labels into ``preds``/``have`` and ``store``, then the progress and ``callback``. The
    stream is closed however this ends (which stops worker processes if a callback raised)."""
    try:
        for ids, logits in stream:
            rows = logits.argmax(-1).numpy()
            for k, row in zip(ids, rows):
                preds[k], have[k] = row, True
                if store is not None:
                    store.save(k, row.astype(np.int32))
            bar.update(len(ids))
            if callback is not None:
                callback(int(have.sum()), len(have))
    finally:
        stream.close()  # type: ignore[attr-defined]
        bar.close()


def _log_result(result: MemorizationResult) -> None:
    """Warn about undefined scores; log the members, strategy, time and mean score."""
    if result.undefined:
        log.warning(
            "memorization: %d of %d samples were never in (or never out of) a subset; their "
            "score is NaN — use more members",
            result.undefined,
            len(result.scores),
        )
    log.info(
        "memorization: %d members (%d trained, strategy %s) in %.1f s; mean score %.3f",
        result.members,
        result.trained,
        result.strategy,
        result.seconds,
        float(np.nanmean(result.scores)),
    )
