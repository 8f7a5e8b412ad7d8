"""The evaluation suite (SPEC §5, issue 6): the families switched on in ``conf/eval/``, asked
for their needs and run in config order, each timed.

Every mapping node ``eval.<name>`` is a family: its ``_target_`` names a
:class:`~unlearning.evaluation.family.Family` subclass, ``enabled`` switches it and its other
keys are the family's arguments. ``eval.seed`` seeds every family. The suite keeps no list of
family names: adding a family is one class, one YAML block and one test (docs/evaluation.md,
"Adding a metric family").

The pipeline runs a job's evaluation in three steps: :meth:`Suite.needs` before any model is
forwarded (the :class:`~unlearning.evaluation.store.OutputStore` keeps exactly the outputs and
samples the families read, and the pipeline builds the ensembles they read), the accuracies
from the store, then :meth:`Suite.run`. It returns the metrics under the keys documented in
``docs/results.md`` plus ``notes``: for every metric that could not be computed for this data
(its value is NaN, ``null`` in ``results.json``), the reason. PNGs are written into the output
directory, from where the pipeline hands them to the loggers.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from unlearning.evaluation.family import (
    Context,
    Ensemble,
    EnsembleNeed,
    Evaluation,
    Family,
    Needs,
)
from unlearning.evaluation.store import OutputStore

log = logging.getLogger(__name__)


def _build(node: DictConfig) -> Family:
    """The family of one ``eval.<name>`` node: its ``_target_`` called with its other keys
    (plain Python values) except ``enabled``."""
    spec = {key: value for key, value in node.items() if key != "enabled"}
    return instantiate(spec, _convert_="all")


@dataclass(frozen=True)
class Suite:
    """The enabled families of one job's ``eval`` node, in config order, and ``eval.seed``."""

    families: tuple[tuple[str, Family], ...] = ()
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Suite:
        """The suite of ``cfg.eval`` (no ``eval`` node: an empty suite). Families are the
        mapping nodes of ``cfg.eval`` whose ``enabled`` is true, built in the order the node
        lists them (``eval=full`` keeps the order of ``eval=default``; a family added with
        ``+eval.<name>=...`` comes last)."""
        ev = cfg.get("eval")
        if ev is None:
            return cls()
        families = tuple(
            (str(name), _build(node))
            for name, node in ev.items()
            if isinstance(node, DictConfig) and node.enabled
        )
        return cls(families, int(ev.get("seed", 0)))

    def needs(self) -> Needs:
        """The union of the enabled families' needs (ensembles in the order they are declared)."""
        return functools.reduce(lambda a, b: a | b, (f.needs() for _, f in self.families), Needs())

    def run(
        self,
        store: OutputStore,
        output_dir: Path,
        metrics: Mapping[str, float],
        ensembles: Mapping[EnsembleNeed, Ensemble] | None = None,
    ) -> Evaluation:
        """Run every family in order and return their metrics and notes.

        ``time/<name>`` is each family's wall time plus the build time of the ensembles it
        declared (the pipeline builds them before the suite runs). A ``ValueError`` out of a
        family (data it cannot handle, e.g. NaN outputs) becomes ``notes[<name>]``; the other
        families still run.

        Args:
            store: the job's :class:`OutputStore` (already holding the outputs the accuracies
                were computed from).
            output_dir: where PNGs go.
            metrics: the metrics already computed (accuracies, ``ua``, ``ra``, ``ta``).
            ensembles: what the pipeline built for :attr:`Needs.ensembles`.
        """
        result = Evaluation()
        ctx = Context(store, output_dir, metrics, self.seed, dict(ensembles or {}))
        for name, family in self.families:
            log.info("[eval] %s", name)
            start = time.perf_counter()
            try:
                family.run(ctx, result)
            except ValueError as exc:
                result.notes[name] = f"{name} could not run: {exc}"
                log.warning("[eval] %s", result.notes[name])
            built = sum(
                ctx.ensembles[need].seconds
                for need in family.needs().ensembles
                if need in ctx.ensembles
            )
            result.metrics[f"time/{name}"] = time.perf_counter() - start + built
        return result


def run_evaluations(
    cfg: DictConfig,
    models: dict[str, nn.Module],
    data: Any,
    output_dir: Path,
    metrics: Mapping[str, float],
    *,
    store: OutputStore | None = None,
    ensembles: Mapping[EnsembleNeed, Ensemble] | None = None,
) -> Evaluation:
    """The suite of ``cfg.eval`` run on ``models`` over ``data`` (an ``UnlearningDataModule``
    or anything with its ``eval_dataloader``/``set_size``) in one call: a store holding what the
    families need (unless ``store`` is given) and :meth:`Suite.run`. Families whose ensembles
    are not in ``ensembles`` note that they could not run."""
    suite = Suite.from_config(cfg)
    if store is None:
        store = OutputStore(models, data, needs=suite.needs())
    return suite.run(store, output_dir, metrics, ensembles)
