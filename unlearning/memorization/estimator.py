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
* :func:`estimate_memorization` — the whole estimate with progress, ETA and resume from a
  ``work_dir`` of finished members.

See ``docs/memorization.md`` for the choice of K, the strategies' measured speed and the format
of a precomputed score file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("vmap", "sequential", "processes", "auto")
META_FILE = "memorization_meta.json"
ROW_PATTERN = "member_{:06d}.npy"

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
# Resume: one row file per finished member
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


def _prepare_work_dir(work_dir: Path, meta: dict[str, Any]) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / META_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(
                f"{work_dir} holds members of a different estimate (differs in {diff}); "
                "use an empty work_dir for these settings"
            )
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _save_row(work_dir: Path, member: int, pred: np.ndarray) -> None:
    path = work_dir / ROW_PATTERN.format(member)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, pred)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_row(work_dir: Path, member: int, n: int) -> np.ndarray | None:
    path = work_dir / ROW_PATTERN.format(member)
    if not path.is_file():
        return None
    try:
        row = np.load(path)
    except (OSError, ValueError):  # a damaged file (not from us: writes are atomic) → retrain
        log.warning("memorization: unreadable %s, retraining member %d", path, member)
        return None
    return row if row.shape == (n,) else None


class _Progress:
    """Members done / K with an ETA: a tqdm bar (if wanted) plus log lines every ~10 %."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.total, self.done, self.start_done = total, initial, initial
        self.t0 = time.perf_counter()
        self.next_log = initial + max(1, total // 10)
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="memorization", unit="member")

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
        if self.done >= self.next_log or self.done == self.total:
            self.next_log = self.done + max(1, self.total // 10)
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "memorization: %d/%d members, %.2f members/s, ETA %.0f s",
                self.done,
                self.total,
                rate,
                eta,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
            ``strategy``.
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
    y_np = y.cpu().numpy()
    preds = np.full((members, n), -1, dtype=np.int64)
    have = np.zeros(members, dtype=bool)

    wd = Path(work_dir) if work_dir is not None else None
    if wd is not None:
        meta = {**asdict(cfg), "fraction": fraction, "n": n}
        meta.pop("eval_batch_size")
        meta["fingerprint"] = _fingerprint(make_model, x, y)
        _prepare_work_dir(wd, meta)
        for k in range(members):
            row = _load_row(wd, k, n)
            if row is not None:
                preds[k], have[k] = row, True
    todo = [k for k in range(members) if not have[k]]
    if have.any():
        log.info("memorization: %d/%d members loaded from %s", have.sum(), members, wd)

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = _Progress(members, int(have.sum()), progress and bool(todo))
    stream = train_members(
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
    )
    try:
        for ids, logits in stream:
            rows = logits.argmax(-1).numpy()
            for k, row in zip(ids, rows):
                preds[k], have[k] = row, True
                if wd is not None:
                    _save_row(wd, k, row.astype(np.int32))
            bar.update(len(ids))
            if callback is not None:
                callback(int(have.sum()), members)
    finally:
        stream.close()  # stops worker processes early if a callback raised
        bar.close()
        if threads is not None:
            torch.set_num_threads(old_threads)

    correct = preds == y_np[None, :]
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
    if result.undefined:
        log.warning(
            "memorization: %d of %d samples were never in (or never out of) a subset; their "
            "score is NaN — use more members",
            result.undefined,
            n,
        )
    log.info(
        "memorization: %d members (%d trained, strategy %s) in %.1f s; mean score %.3f",
        members,
        len(todo),
        resolved,
        result.seconds,
        float(np.nanmean(scores)),
    )
    return result
