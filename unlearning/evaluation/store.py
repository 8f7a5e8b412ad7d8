"""The job's models and their outputs on R, F and D_test, each (model, set) pair forwarded once
per job (issue #10): the pipeline reads the accuracies from the store and the evaluation
families read the same outputs (docs/evaluation.md)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from unlearning.evaluation.family import Needs
from unlearning.evaluation.metrics.accuracy import accuracy, logits_accuracy
from unlearning.evaluation.metrics.features import Outputs, model_outputs

log = logging.getLogger(__name__)


class OutputStore:
    """The job's models on R, F and D_test, each (model, set) pair forwarded once.

    The pipeline creates one store per job and reads the accuracies from it (:meth:`accuracy`)
    before the suite's families read the outputs (:meth:`outputs`). Pairs the families declared
    in ``needs`` (:meth:`Needs.output_map <unlearning.evaluation.family.Needs.output_map>`) keep
    their :class:`Outputs` in memory, with embeddings where a family reads them, from the first
    pass until the store is dropped; the accuracy of any other pair is streamed
    (:func:`~unlearning.evaluation.metrics.accuracy.accuracy`) and nothing of it is kept. The
    declared samples (:meth:`sample`) are kept the same way. ``needs=None`` keeps every pair
    and sample that is asked for.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        data: Any,
        num_classes: int | None = None,
        needs: Needs | None = None,
    ) -> None:
        self.models, self.data, self.num_classes, self.needs = models, data, num_classes, needs
        self._pairs = needs.output_map() if needs is not None else None
        self._samples = {(s.set_name, s.n) for s in needs.samples} if needs is not None else None
        self._outputs: dict[tuple[str, str], Outputs] = {}
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._drawn: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _kept(self, key: tuple[str, str]) -> bool:
        return self._pairs is None or key in self._pairs

    def outputs(self, model: str, set_name: str, embeddings: bool = False) -> Outputs:
        """``model``'s outputs on ``set_name`` (with embeddings if asked), memoised."""
        key = (model, set_name)
        held = self._outputs.get(key)
        if held is None or (embeddings and held.embeddings is None):
            if held is not None:
                log.warning("[eval] %s on %s: forwarded again for its embeddings", *key)
            with_embeddings = embeddings or bool(self._pairs and self._pairs.get(key))
            loader = self.data.eval_dataloader(set_name)
            held = model_outputs(self.models[model], loader, embeddings=with_embeddings)
            self._outputs[key] = held
        return held

    def accuracy(self, model: str, set_name: str) -> float:
        """Top-1 accuracy of ``model`` on ``set_name`` (torchmetrics ``MulticlassAccuracy``,
        micro average; ``nan`` for an empty set), from the memoised outputs where the families
        need them, else in one streamed pass."""
        if self.num_classes is None:
            raise ValueError("OutputStore.accuracy needs num_classes")
        key = (model, set_name)
        if key in self._outputs or self._kept(key):
            out = self.outputs(model, set_name)
            return logits_accuracy(out.logits, out.labels, self.num_classes)
        loader = self.data.eval_dataloader(set_name)
        return accuracy(self.models[model], loader, self.num_classes)

    def tensors(self, set_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All inputs and labels of ``set_name`` (test transforms), memoised."""
        if set_name not in self._tensors:
            self._tensors[set_name] = stack_set(self.data, set_name)
        return self._tensors[set_name]

    def sample(self, set_name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed (seeded) subset of at most ``n`` samples of a set; only those are loaded.
        Kept for the next caller when a family declared it (:class:`SampleNeed
        <unlearning.evaluation.family.SampleNeed>`)."""
        size = self.data.set_size(set_name)
        if size <= n:
            return self.tensors(set_name)
        key = (set_name, n, seed)
        if key in self._drawn:
            return self._drawn[key]
        idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
        batches = list(self.data.eval_dataloader(set_name, positions=idx.numpy()))
        drawn = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]).long()
        if self._samples is None or (set_name, n) in self._samples:
            self._drawn[key] = drawn
        return drawn


def stack_set(data: Any, set_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs and labels of one set of ``data`` (``eval_dataloader``: test transforms, in
    the loader's order) as two tensors; empty tensors for an empty set."""
    xs, ys = [], []
    for x, y in data.eval_dataloader(set_name):
        xs.append(x)
        ys.append(y)
    if not ys:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys).long()
