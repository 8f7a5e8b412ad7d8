"""Model ensembles for the evaluation (002 §2): built by the pipeline before the evaluation, for
the :class:`~unlearning.evaluation.family.EnsembleNeed` s the enabled families declare, and
handed to them as margins on R, F and D_test (:class:`~unlearning.evaluation.family.Ensemble`).

Two kinds, as KLoM needs them (docs/evaluation.md):

* ``oracle``: N oracles, the oracle recipe (pretraining settings on R, 000 App. C.1) with N
  seeds, trained as one ensemble by the memorization trainer and cached as the stage
  ``klom_oracles`` (key: the oracle's key plus N), so a sweep over methods trains them once.
* ``unlearned``: the job's own unlearned model (member 0) and N − 1 more runs of the job's
  unlearning stage from the same f_A with run seeds ``seed + 1 … seed + N − 1``; for a method
  that retrains from scratch (``retrain``) the oracle ensemble itself.

A new kind is one method ``_<kind>`` of :class:`EnsembleBuilder` returning its margins, named in
:data:`KINDS`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from unlearning.evaluation.family import EVAL_SETS, Ensemble, EnsembleNeed
from unlearning.evaluation.metrics.features import model_outputs
from unlearning.evaluation.metrics.klom import margins
from unlearning.evaluation.store import OutputStore, stack_set
from unlearning.memorization.estimator import TrainConfig, resolve_strategy, train_members

log = logging.getLogger(__name__)

#: the oracle ensemble's stage name in the stage cache
ORACLE_STAGE = "klom_oracles"
#: the margins of an ensemble's cache entry: one ``(N, |set|)`` array per set
MARGINS_FILE = "margins.npz"
#: the ensemble kinds :class:`EnsembleBuilder` can build
KINDS = ("oracle", "unlearned")

#: ``unlearn(cfg_with_seed, work_dir) -> model``: the job's unlearning stage for another seed
Unlearn = Callable[[DictConfig, Path], nn.Module]


def oracle_recipe(cfg: DictConfig) -> TrainConfig:
    """The oracle recipe (pretraining settings on R, 000 App. C.1) as the ensemble trainer's
    :class:`~unlearning.memorization.estimator.TrainConfig`: SGD with the optimizer's momentum
    and weight decay, ``pretrain.lr``, ``pretrain.batch_size``, ``pretrain.epochs``, per-epoch
    cosine schedule, ``pretrain.seed`` (member k's init and batch order derive from it and k).
    A sharpness-aware ``pretrain/optim`` or another schedule is replaced, with a warning."""
    p, opt = cfg.pretrain, cfg.pretrain.optim.optimizer
    cosine = p.scheduler is not None and str(p.scheduler.get("_target_", "")).endswith(
        "CosineAnnealingLR"
    )
    if not cosine or OmegaConf.select(cfg, "pretrain.optim.sharpness") is not None:
        log.warning(
            "[eval] KLoM oracle ensemble: plain SGD with a cosine schedule stands in for "
            "pretrain.optim=%s, pretrain.scheduler=%s",
            cfg.pretrain.optim.name,
            None if p.scheduler is None else p.scheduler._target_,
        )
    return TrainConfig(
        epochs=int(p.epochs),
        lr=float(p.lr),
        batch_size=int(p.batch_size),
        momentum=float(opt.get("momentum", 0.0) or 0.0),
        weight_decay=float(opt.get("weight_decay", 0.0) or 0.0),
        seed=int(p.seed),
        eval_batch_size=int(cfg.eval_batch_size),
    )


def oracle_margin_rows(
    cfg: DictConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    n_retain: int,
    members: int,
    strategy: str,
    device: torch.device,
) -> np.ndarray:
    """``(members, len(y))`` margins on all of ``x`` of ``members`` oracles, each trained with
    :func:`oracle_recipe` on the first ``n_retain`` samples (R), member k seeded from
    ``pretrain.seed`` and k; ``strategy`` is the trainer's, already resolved (``vmap`` trains
    all members in one chunk)."""
    mask = np.zeros((members, len(y)), dtype=bool)
    mask[:, :n_retain] = True  # every oracle trains on all of R
    rows = np.zeros((members, len(y)))
    stream = train_members(
        lambda: instantiate(cfg.model),
        x,
        y,
        range(members),
        mask,
        oracle_recipe(cfg),
        strategy=strategy,
        chunk_size=members,
        device=device,
    )
    for ids, logits in stream:
        rows[ids] = margins(logits, y)
    return rows


def train_oracle_ensemble(
    cfg: DictConfig,
    data: Any,
    members: int,
    strategy: str,
    device: torch.device,
    work_dir: Path,
) -> dict[str, Any]:
    """The ``klom_oracles`` stage: margins of ``members`` oracles on R, F and D_test (test
    transforms, the order of ``data.eval_dataloader``) saved as ``work_dir/margins.npz``."""
    tensors = [stack_set(data, s) for s in EVAL_SETS]
    x = torch.cat([t[0] for t in tensors])
    y = torch.cat([t[1] for t in tensors])
    resolved = resolve_strategy(strategy, device)
    rows = oracle_margin_rows(cfg, x, y, len(tensors[0][1]), members, resolved, device)
    bounds = np.cumsum([0] + [len(t[1]) for t in tensors])
    parts = {s: rows[:, bounds[i] : bounds[i + 1]] for i, s in enumerate(EVAL_SETS)}
    np.savez(work_dir / MARGINS_FILE, **parts)
    return {"models": members, "strategy": resolved}


def read_margins(entry: Path) -> dict[str, np.ndarray]:
    """The per-set margins of an ensemble's cache entry."""
    with np.load(entry / MARGINS_FILE) as saved:
        return {s: saved[s] for s in EVAL_SETS}


def unlearned_margins(
    cfg: DictConfig, store: OutputStore, unlearn: Unlearn, members: int
) -> dict[str, np.ndarray]:
    """``(members, |set|)`` margins of ``members`` unlearned models: the job's own (run
    ``seed``, read from ``store``) and ``members − 1`` more runs of ``unlearn`` with seeds
    ``seed + 1 … seed + members − 1``, each forwarded over the store's data once."""
    rows: dict[str, list[np.ndarray]] = {s: [] for s in EVAL_SETS}
    for s in EVAL_SETS:
        out = store.outputs("unlearned", s)
        rows[s].append(margins(out.logits, out.labels))
    with tempfile.TemporaryDirectory(prefix="klom_") as tmp:
        for k in range(1, members):
            seeded = cfg.copy()
            seeded.seed = int(cfg.seed) + k
            log.info("[eval] KLoM: unlearned model %d/%d (seed %d)", k + 1, members, seeded.seed)
            model = unlearn(seeded, Path(tmp) / f"seed_{seeded.seed}")
            for s in EVAL_SETS:
                out = model_outputs(model, store.data.eval_dataloader(s), embeddings=False)
                rows[s].append(margins(out.logits, out.labels))
    return {s: np.stack(v) for s, v in rows.items()}


@dataclass
class EnsembleBuilder:
    """Builds the ensembles one job's evaluation declared, each once.

    Attributes:
        cfg: the job's config (``eval_batch_size`` resolved).
        store: the job's :class:`OutputStore` (its models and data; f_U's outputs are the
            unlearned ensemble's member 0).
        cache: the stage cache.
        oracle_key: the cache key of the oracle ensemble (``stage_configs(cfg)["klom_oracles"]``);
            its ``models`` entry is set to the number of members asked for.
        unlearn: the job's unlearning stage for another run seed.
        from_scratch: whether the job's method retrains from scratch (its unlearned model is the
            oracle).
        device: where the oracle ensemble trains (the evaluation's device).
    """

    cfg: DictConfig
    store: OutputStore
    cache: Any
    oracle_key: Mapping[str, Any]
    unlearn: Unlearn
    from_scratch: bool
    device: torch.device
    _built: dict[EnsembleNeed, Ensemble] = field(default_factory=dict)

    def build_all(self, needs: Iterable[EnsembleNeed]) -> dict[EnsembleNeed, Ensemble]:
        """Every ensemble of ``needs``, in order."""
        return {need: self.build(need) for need in needs}

    def build(self, need: EnsembleNeed) -> Ensemble:
        """One ensemble (memoised), timed."""
        if need not in self._built:
            if need.kind not in KINDS:
                raise ValueError(f"no ensemble of kind {need.kind!r}; the pipeline builds {KINDS}")
            start = time.perf_counter()
            margins_, note = getattr(self, f"_{need.kind}")(need)
            self._built[need] = Ensemble(margins_, time.perf_counter() - start, note)
        return self._built[need]

    def _oracle(self, need: EnsembleNeed) -> tuple[dict[str, np.ndarray], str | None]:
        key = {**self.oracle_key, "models": need.members}
        entry = self.cache.get_or_compute(
            ORACLE_STAGE,
            key,
            lambda d: train_oracle_ensemble(
                self.cfg, self.store.data, need.members, need.strategy, self.device, d
            ),
        )
        return read_margins(entry), None

    def _unlearned(self, need: EnsembleNeed) -> tuple[dict[str, np.ndarray], str | None]:
        if self.from_scratch:  # method=retrain: the unlearned models are oracles
            oracles = self.build(EnsembleNeed("oracle", need.members, need.strategy))
            note = "method=retrain: the oracle ensemble is the unlearned one"
            return oracles.margins, note
        return unlearned_margins(self.cfg, self.store, self.unlearn, need.members), None
