"""Model ensembles (002 App. M after Georgiev et al. 2024): N members of a training stage, each
trained with that stage's own recipe and cached as that stage's own entry, handed to the
evaluation as margins on R, F and D_test (:class:`~unlearning.evaluation.family.Ensemble`).

Member k of a job is the job's config with ``pretrain.seed + k`` and run ``seed + k``
(:func:`member_config`) and the job's forget set F, pinned: the split is never recomputed for a
member. The kinds (:data:`KINDS`):

* ``original``: the pretrained models f_A^k, each the ``pretrain`` stage entry of member k's
  config (:func:`~unlearning.pipeline.keys.stage_configs`), so member 0 is the job's own f_A and
  every member is shared by every job whose key matches;
* ``oracle``: the oracles f_A^k(R), each the ``oracle`` stage entry of member k's config
  (R = S \\ F of the job): the oracle stage's own recipe, optimizer A (SGD, SAM, ASAM), its
  scheduler and augmentation;
* ``unlearned``: the job's method, ``optim``, ``alpha`` and ``rho`` run by the unlearning stage
  from f_A^k with run seed ``seed + k`` (a masked method gets the mask stage of member k), each
  cached in the shared stage cache as the stage :data:`UNLEARN_STAGE`; member 0 is the job's own
  unlearned model. For a method that retrains from scratch (``retrain``) the unlearned ensemble
  is N further oracles, members ``N … 2N − 1`` (``pretrain.seed + N + k``), so that its KLoM
  against the oracle ensemble measures seed noise, not 0 by construction.

Members are trained one after another, each resumable on its own (the stage cache's
``.partial`` directories); a member found in the cache is loaded, not trained, so a killed
ensemble resumes at its first untrained member. Each member is forwarded once over R, F and
D_test (test transforms, the order of the evaluation loaders); only its margins are kept.

The trainers are two seams of :class:`EnsembleEngine`: :attr:`EnsembleEngine.train_from_scratch`
(pretraining and oracle members; :func:`unlearning.pipeline.stages.training.train_from_scratch`,
the single-model stage, by default) and :attr:`EnsembleEngine.unlearn` (unlearned members;
:func:`unlearning.pipeline.stages.unlearn.unlearn`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from datamodules.sources import ImageSource
from unlearning.evaluation.family import EVAL_SETS, Ensemble, EnsembleNeed
from unlearning.evaluation.metrics.features import model_outputs
from unlearning.evaluation.metrics.klom import margins
from unlearning.evaluation.store import OutputStore
from unlearning.methods.base import method_class
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs, unlearn_key
from unlearning.pipeline.stages.mask import compute_forget_mask
from unlearning.pipeline.stages.training import load_model, train_from_scratch
from unlearning.pipeline.stages.unlearn import unlearn

log = logging.getLogger(__name__)

#: the ensemble kinds :class:`EnsembleEngine` builds
KINDS = ("original", "oracle", "unlearned")
#: the stage-cache name of the unlearned members k ≥ 1 (member 0 is the job's own f_U)
UNLEARN_STAGE = "ensemble_unlearn"
#: the stage that trains each member of a kind trained from scratch
STAGE_OF = {"original": "pretrain", "oracle": "oracle"}

#: ``(cfg, source, forget_indices, train_set, work_dir) -> meta``: trains ``cfg.model`` from
#: scratch on ``train_set`` (``train`` = S, ``retain`` = R) and writes ``work_dir/model.pt``,
#: like :func:`~unlearning.pipeline.stages.training.train_from_scratch`
TrainFromScratch = Callable[[DictConfig, ImageSource, np.ndarray | None, str, Path], Any]
#: ``(cfg, source, forget_indices, original, loggers, work_dir, mask_entry) -> meta``: runs the
#: unlearning method from the f_A in ``original``, like :func:`~unlearning.pipeline.stages.
#: unlearn.unlearn`
Unlearn = Callable[
    [DictConfig, ImageSource, np.ndarray, Path, list[Logger], Path, Path | None], Mapping[str, Any]
]


def member_config(cfg: DictConfig, k: int) -> DictConfig:
    """Member ``k``'s config: ``cfg`` with ``pretrain.seed + k`` and run ``seed + k`` (a deep
    copy; interpolations that read either seed follow). Member 0 is ``cfg``'s values."""
    member = copy.deepcopy(cfg)
    member.pretrain.seed = int(cfg.pretrain.seed) + k
    member.seed = int(cfg.seed) + k
    return member


class MemberProgress:
    """One log line per member of an ensemble (``k/N``, trained or loaded, seconds, ETA from the
    members trained so far) and a tqdm bar when ``enabled`` (``trainer.enable_progress_bar``)."""

    def __init__(self, kind: str, total: int, enabled: bool) -> None:
        self.kind, self.total, self.done = kind, total, 0
        self.trained_s: list[float] = []
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"{kind} ensemble", unit="member")

    def update(self, seconds: float, trained: bool) -> None:
        """One more member is done, ``trained`` now or loaded, in ``seconds``."""
        self.done += 1
        if trained:
            self.trained_s.append(seconds)
        left = self.total - self.done
        eta = (
            f"ETA {left * float(np.mean(self.trained_s)):.0f} s"
            if self.trained_s
            else "ETA unknown (no member trained yet)"
        )
        log.info(
            "[ensemble] %s %d/%d %s in %.1f s; %s",
            self.kind,
            self.done,
            self.total,
            "trained" if trained else "loaded",
            seconds,
            eta if left else "done",
        )
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class EnsembleEngine:
    """Builds the ensembles one job's evaluation declared (module doc), each member once.

    Attributes:
        cfg: the job's config (``eval_batch_size`` resolved).
        source: the job's data source.
        cache: the shared stage cache (``paths.cache_dir``).
        store: the job's :class:`OutputStore`: its three models' outputs are member 0 of each
            kind, its data's evaluation loaders are what every member is forwarded over.
        forget_indices: the job's F, the forget set of every member.
        device: where members are forwarded (the evaluation's device).
        train_from_scratch: trains a pretraining or oracle member (the single-model stage).
        unlearn: runs the unlearning method for an unlearned member (the single-model stage).
    """

    cfg: DictConfig
    source: ImageSource
    cache: StageCache
    store: OutputStore
    forget_indices: np.ndarray
    device: torch.device
    train_from_scratch: TrainFromScratch = train_from_scratch
    unlearn: Unlearn = unlearn
    _rows: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict, init=False)
    _built: dict[EnsembleNeed, Ensemble] = field(default_factory=dict, init=False)
    _diverged: dict[int, bool] = field(default_factory=dict, init=False)
    _keys: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        method = method_class(self.cfg.method._target_)
        self.from_scratch, self.needs_mask = method.from_scratch, method.needs_forget_mask
        # the job's split node (rule, seed, scores): pins F in every member's key
        self._split = stage_configs(self.cfg, self.source)["oracle"]["split"]

    # ------------------------------------------------------------------ keys and entries

    def member_keys(self, k: int) -> dict[str, dict[str, Any]]:
        """The cache keys of member ``k``: ``pretrain``, ``oracle`` and ``mask`` as
        :func:`~unlearning.pipeline.keys.stage_configs` of :func:`member_config` gives them,
        with the job's split node (F is the job's; the same keys unless a split depends on the
        pretraining seed), and ``unlearn``: :func:`~unlearning.pipeline.keys.unlearn_key` of the
        member's config plus the job's split node."""
        if k not in self._keys:
            member = member_config(self.cfg, k)
            keys = stage_configs(member, self.source)
            self._keys[k] = {
                "pretrain": keys["pretrain"],
                "oracle": {**keys["oracle"], "split": self._split},
                "mask": {**keys["mask"], "split": self._split},
                "unlearn": {**unlearn_key(member, self.source), "forget_set": self._split},
            }
        return self._keys[k]

    def is_cached(self, kind: str, k: int) -> bool:
        """Whether member ``k`` of ``kind`` needs no training (its entry is in the cache)."""
        if kind == "unlearned":
            return self.cache.has(UNLEARN_STAGE, self.member_keys(k)["unlearn"])
        return self.cache.has(STAGE_OF[kind], self.member_keys(k)[STAGE_OF[kind]])

    def member_entry(self, kind: str, k: int) -> Path:
        """The cache entry of member ``k`` of ``kind`` (``original``, ``oracle``, or
        ``unlearned`` for k ≥ 1), trained first if absent; an unlearned member trains its
        pretrained member (and mask) first if they are absent too."""
        keys, member = self.member_keys(k), member_config(self.cfg, k)
        if kind in STAGE_OF:
            train_set = "train" if kind == "original" else "retain"
            forget = None if kind == "original" else self.forget_indices
            return self.cache.get_or_compute(
                STAGE_OF[kind],
                keys[STAGE_OF[kind]],
                lambda d: self.train_from_scratch(member, self.source, forget, train_set, d),
            )
        if k == 0:
            raise ValueError("unlearned member 0 is the job's own model, not a cache entry")

        def train(work_dir: Path) -> Mapping[str, Any]:
            pretrained = self.member_entry("original", k)
            mask = None
            if self.needs_mask:
                mask = self.cache.get_or_compute(
                    "mask",
                    keys["mask"],
                    lambda d: compute_forget_mask(
                        member, self.source, self.forget_indices, pretrained, d
                    ),
                )
            return self.unlearn(
                member, self.source, self.forget_indices, pretrained, [], work_dir, mask
            )

        return self.cache.get_or_compute(UNLEARN_STAGE, keys["unlearn"], train)

    # ------------------------------------------------------------------ margins

    def member_margins(self, kind: str, k: int) -> dict[str, np.ndarray]:
        """Member ``k``'s margins on each set of :data:`EVAL_SETS` (memoised): member 0 from the
        job's own model's outputs in the store, others from their cache entry, forwarded once
        and dropped."""
        if (kind, k) not in self._rows:
            if k == 0:
                outs = {s: self.store.outputs(kind, s) for s in EVAL_SETS}
            else:
                entry = self.member_entry(kind, k)
                if kind == "unlearned":
                    self._diverged[k] = StageCache.meta(entry).get("status") == "diverged"
                net = load_model(member_config(self.cfg, k), entry).to(self.device)
                loader = self.store.data.eval_dataloader
                outs = {s: model_outputs(net, loader(s), embeddings=False) for s in EVAL_SETS}
                del net
            self._rows[(kind, k)] = {s: margins(o.logits, o.labels) for s, o in outs.items()}
        return self._rows[(kind, k)]

    def _members(self, need: EnsembleNeed) -> list[tuple[str, int]]:
        """The (kind, index) of each member of ``need``: for a from-scratch method the unlearned
        ensemble is oracles ``N … 2N − 1``."""
        if need.kind == "unlearned" and self.from_scratch:
            return [("oracle", need.members + k) for k in range(need.members)]
        return [(need.kind, k) for k in range(need.members)]

    # ------------------------------------------------------------------ ensembles

    def build_all(self, needs: Iterable[EnsembleNeed]) -> dict[EnsembleNeed, Ensemble]:
        """Every ensemble of ``needs``, in order."""
        return {need: self.build(need) for need in needs}

    def build(self, need: EnsembleNeed) -> Ensemble:
        """One ensemble (memoised): its members trained or loaded one by one, with progress."""
        if need in self._built:
            return self._built[need]
        if need.kind not in KINDS:
            raise ValueError(f"no ensemble of kind {need.kind!r}; the pipeline builds {KINDS}")
        start = time.perf_counter()
        progress = MemberProgress(
            need.kind, need.members, bool(self.cfg.trainer.get("enable_progress_bar"))
        )
        rows = []
        try:
            for kind, k in self._members(need):
                t0 = time.perf_counter()
                trained = (kind, k) not in self._rows and k > 0 and not self.is_cached(kind, k)
                rows.append(self.member_margins(kind, k))
                progress.update(time.perf_counter() - t0, trained)
        finally:
            progress.close()
        stacked = {s: np.stack([r[s] for r in rows]) for s in EVAL_SETS}
        ensemble = Ensemble(stacked, time.perf_counter() - start, self._note(need))
        self._built[need] = ensemble
        return ensemble

    def _note(self, need: EnsembleNeed) -> str | None:
        """What the ensemble is besides its kind: the from-scratch unlearned ensemble, or
        unlearned members that diverged (their last finite weights are the member)."""
        if need.kind != "unlearned":
            return None
        n = need.members
        if self.from_scratch:
            return (
                f"method={self.cfg.method.name} retrains from scratch: the unlearned ensemble is "
                f"{n} further oracles (pretrain.seed + {n} … + {2 * n - 1}), independent of the "
                "oracle ensemble"
            )
        diverged = sum(self._diverged.get(k, False) for k in range(1, n))
        if diverged:
            return f"{diverged} of the {n - 1} further unlearned members diverged"
        return None
