"""What an evaluation family is: the base class every family derives from, the needs it
declares (model outputs, data samples, model ensembles), the context it runs in and the
:class:`Evaluation` it writes into.

A family is one class selected by ``_target_`` from its ``eval.<name>`` node in
``conf/eval/*.yaml``; the node's other keys (except ``enabled``) are its constructor's arguments.
The suite (:mod:`unlearning.evaluation.suite`) asks every enabled family for its
:class:`Needs` before any model is forwarded, so that each (model, set) pair is forwarded once
per job and the pipeline can build the ensembles a family reads before the evaluation starts
(docs/evaluation.md, "Adding a metric family").
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from unlearning.evaluation.store import OutputStore

log = logging.getLogger(__name__)

#: the job's three models: f_A, the oracle f_A(R) and the unlearned model f_U
MODELS = ("original", "oracle", "unlearned")
#: the sets every model is evaluated on: R, F and D_test
EVAL_SETS = ("retain", "forget", "test")


def prefix(model: str) -> str:
    """Keys of the unlearned model are bare (``mia``), others carry the model (``original/mia``)."""
    return "" if model == "unlearned" else f"{model}/"


@dataclass(frozen=True)
class OutputNeed:
    """The outputs of ``model`` over the whole of ``set_name`` (logits and labels; the
    penultimate embeddings too when ``embeddings``), read through
    :meth:`OutputStore.outputs <unlearning.evaluation.store.OutputStore.outputs>`."""

    model: str
    set_name: str
    embeddings: bool = False


@dataclass(frozen=True)
class SampleNeed:
    """A fixed (``eval.seed``-seeded) sample of at most ``n`` inputs of ``set_name``, read
    through :meth:`OutputStore.sample <unlearning.evaluation.store.OutputStore.sample>`; the
    store keeps declared samples for the whole suite, so families that declare the same sample
    load it once."""

    set_name: str
    n: int


@dataclass(frozen=True)
class EnsembleNeed:
    """The margins of ``members`` models of one ``kind`` on R, F and D_test, built by the
    pipeline before the evaluation (:mod:`unlearning.pipeline.stages.ensembles`: ``original``,
    the pretrained models f_A^k; ``oracle``, the oracles f_A^k(R); ``unlearned``, the job's
    unlearning of each f_A^k). Member k of every kind has pretraining seed ``pretrain.seed + k``;
    member 0 is the job's own model, so families that declare the same kind share members."""

    kind: str
    members: int


@dataclass(frozen=True)
class Ensemble:
    """What the pipeline hands a family for an :class:`EnsembleNeed`.

    Attributes:
        margins: per set of :data:`EVAL_SETS`, an ``(members, |set|)`` array of margins
            ``z_y − logsumexp_{k≠y} z_k`` (002 §2), member k in row k.
        seconds: wall time the pipeline spent building it for this job (training or reading a
            cached stage); the suite adds it to ``time/<family>`` of every family that read it.
        note: what the ensemble is besides its kind (e.g. ``method=retrain``: the unlearned
            ensemble is N further oracles; unlearned members that diverged), or ``None``.
    """

    margins: dict[str, np.ndarray]
    seconds: float = 0.0
    note: str | None = None


@dataclass(frozen=True)
class Needs:
    """Everything a family reads besides its own parameters; the suite merges the needs of all
    enabled families with ``|``."""

    outputs: frozenset[OutputNeed] = frozenset()
    samples: frozenset[SampleNeed] = frozenset()
    ensembles: tuple[EnsembleNeed, ...] = ()

    @classmethod
    def of(
        cls,
        models: Iterable[str] = (),
        sets: Iterable[str] = (),
        *,
        embeddings: bool = False,
        samples: Iterable[SampleNeed] = (),
        ensembles: Iterable[EnsembleNeed] = (),
    ) -> Needs:
        """The outputs of every model of ``models`` on every set of ``sets`` (with embeddings
        if asked), plus the given samples and ensembles."""
        sets = tuple(sets)
        return cls(
            frozenset(OutputNeed(m, s, embeddings) for m in models for s in sets),
            frozenset(samples),
            tuple(ensembles),
        )

    def __or__(self, other: Needs) -> Needs:
        ensembles = self.ensembles + tuple(e for e in other.ensembles if e not in self.ensembles)
        return Needs(self.outputs | other.outputs, self.samples | other.samples, ensembles)

    def output_map(self) -> dict[tuple[str, str], bool]:
        """Each needed (model, set) pair mapped to whether any family reads its embeddings."""
        pairs: dict[tuple[str, str], bool] = {}
        for need in self.outputs:
            key = (need.model, need.set_name)
            pairs[key] = pairs.get(key, False) or need.embeddings
        return pairs


@dataclass
class Evaluation:
    """What the suite returns: flat metrics and, per metric that could not be computed, why."""

    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def skip(self, keys: list[str], reason: str) -> None:
        """Record ``keys`` as NaN (``null`` in ``results.json``) with ``reason`` as their note."""
        for key in keys:
            self.metrics[key] = float("nan")
            self.notes[key] = reason
        log.warning("[eval] %s: %s", ", ".join(keys), reason)


@dataclass(frozen=True)
class Context:
    """What a family reads while it runs.

    Attributes:
        store: the job's models and their outputs on R, F and D_test (one forward pass each).
        output_dir: where the family writes its PNGs (the pipeline hands them to the loggers).
        metrics: the metrics computed before the suite (the accuracies ``<model>/acc_<set>``,
            ``ua``, ``ra``, ``ta``, ...).
        seed: ``eval.seed``: seeds every sample draw and random direction of the suite.
        ensembles: the ensembles the pipeline built for the declared :class:`EnsembleNeed` s
            (empty when the suite runs outside the pipeline).
    """

    store: OutputStore
    output_dir: Path
    metrics: Mapping[str, float]
    seed: int
    ensembles: Mapping[EnsembleNeed, Ensemble] = field(default_factory=dict)


class Family(ABC):
    """One evaluation family: constructed from its ``eval.<name>`` node (every key but
    ``_target_`` and ``enabled`` is a constructor argument, with the YAML's default), it
    declares what it reads (:meth:`needs`) and writes its metrics and notes into the suite's
    :class:`Evaluation` (:meth:`run`).

    A ``ValueError`` out of :meth:`run` does not stop the job: the suite records it under
    ``notes[<name>]``. Metrics that cannot be computed for this data should instead be recorded
    one by one with :meth:`Evaluation.skip`.
    """

    def needs(self) -> Needs:
        """The outputs, samples and ensembles :meth:`run` reads (default: none)."""
        return Needs()

    @abstractmethod
    def run(self, ctx: Context, result: Evaluation) -> None:
        """Compute the family's metrics into ``result`` (which also holds the metrics of the
        families that ran before it, in config order)."""


class OracleComparison(Family):
    """A family that compares ensembles with the oracle ensemble (U-LiRA, forgetting quality):
    N unlearned models f_U^k, and with ``original`` also N pretrained models f_A^k (doing
    nothing, the reference an unlearning method starts from), each against N oracles.
    :attr:`compared` maps the model whose keys it writes to its ensemble."""

    def __init__(self, models: int = 8, original: bool = False) -> None:
        self.oracles = EnsembleNeed("oracle", models)
        self.compared = {"unlearned": EnsembleNeed("unlearned", models)}
        if original:
            self.compared["original"] = EnsembleNeed("original", models)

    def needs(self) -> Needs:
        """The oracle ensemble and the compared ones; the outputs of the job's models of those
        kinds on every set (member 0 of an ensemble is the job's own model of its kind)."""
        ensembles = (self.oracles, *self.compared.values())
        return Needs.of([e.kind for e in ensembles], EVAL_SETS, ensembles=ensembles)
