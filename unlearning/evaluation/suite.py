"""The evaluation suite (SPEC §5, issue 6): MIA and Avg. Gap, entanglement, loss landscapes,
Hessian sharpness, KLoM and feature plots, each switchable in ``conf/eval/`` and timed.

:func:`run_evaluations` takes the three models of a job (``original`` f_A, ``oracle`` f_A(R),
``unlearned``), the datamodule and the job's output directory, and returns flat metrics under
the keys documented in ``docs/results.md`` plus ``notes``: for every metric that could not be
computed for this data (its value is NaN, ``null`` in ``results.json``), the reason. PNGs are
written into the output directory, from where the pipeline hands them to the loggers.

The metric families live in :mod:`unlearning.evaluation.metrics` and take models and tensors only;
the
ensembles KLoM needs (N oracles, N unlearned models) are built here from the job's config.

Each model is forwarded over each set once per job: the pipeline creates one
:class:`OutputStore`, reads the accuracies from it and hands it to :func:`run_evaluations`
(issue #10, docs/evaluation.md).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from unlearning.config.errors import ConfigError
from unlearning.evaluation.metrics import entanglement as ent
from unlearning.evaluation.metrics.accuracy import accuracy, logits_accuracy
from unlearning.evaluation.metrics.features import Outputs, model_outputs, tsne_2d
from unlearning.evaluation.metrics.hessian import top_hessian_eigenvalue
from unlearning.evaluation.metrics.klom import klom, margins
from unlearning.evaluation.metrics.landscape import loss_landscape
from unlearning.evaluation.metrics.mia import avg_gap, membership_inference
from unlearning.outputs.results import accuracy_key

log = logging.getLogger(__name__)

#: the evaluation families, in the order they run; each is ``eval.<name>`` in the config
EVALS = ("mia", "entanglement", "landscape", "hessian", "klom", "features")
EVAL_SETS = ("retain", "forget", "test")
KLOM_STRATEGIES = ("auto", "vmap", "sequential")
MARGINS_FILE = "margins.npz"

#: ``unlearn(cfg_with_seed, work_dir) -> model``: the job's unlearning stage for another seed
Unlearn = Callable[[DictConfig, Path], nn.Module]


# --------------------------------------------------------------------------------------------
# Config checks (called from unlearning.config.validation.validate_config)
# --------------------------------------------------------------------------------------------


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _int_at_least(cfg: DictConfig, key: str, low: int) -> None:
    v = _value(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(key, v, f"must be an integer ≥ {low}")


def _number_in(cfg: DictConfig, key: str, low: float, high: float, open_low: bool = False) -> None:
    v = _value(cfg, key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (v > low if open_low else v >= low) or v > high:
        bracket = "(" if open_low else "["
        raise ConfigError(key, v, f"must be a number in {bracket}{low}, {high}]")


def check_eval_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming ``eval.<key>`` for the first invalid evaluation
    setting (a config without an ``eval`` node runs no evaluation and passes)."""
    ev = cfg.get("eval")
    if ev is None:
        return
    for name in EVALS:
        node = ev.get(name)
        if node is None:
            continue
        enabled = node.get("enabled")
        if not isinstance(enabled, bool):
            raise ConfigError(f"eval.{name}.enabled", enabled, "must be true or false")
        if "max_samples" in node:
            _int_at_least(cfg, f"eval.{name}.max_samples", 1)
        if "sets" in node:
            sets = list(node.sets)
            if not sets or any(s not in EVAL_SETS for s in sets):
                raise ConfigError(
                    f"eval.{name}.sets", sets, f"choose a non-empty list of {list(EVAL_SETS)}"
                )
    _int_at_least(cfg, "eval.seed", 0)
    if "entanglement" in ev:
        _number_in(cfg, "eval.entanglement.p", 1.0, 10.0)
        _int_at_least(cfg, "eval.entanglement.num_itermax", 1000)
    if "landscape" in ev:
        _number_in(cfg, "eval.landscape.radius", 0.0, 100.0, open_low=True)
        _int_at_least(cfg, "eval.landscape.steps_1d", 3)
        _int_at_least(cfg, "eval.landscape.steps_2d", 3)
        if not isinstance(_value(cfg, "eval.landscape.plots"), bool):
            raise ConfigError(
                "eval.landscape.plots", _value(cfg, "eval.landscape.plots"), "must be true or false"
            )
    if "hessian" in ev:
        _int_at_least(cfg, "eval.hessian.iterations", 1)
        _number_in(cfg, "eval.hessian.tol", 0.0, 1.0, open_low=True)
    if "klom" in ev:
        _int_at_least(cfg, "eval.klom.models", 2)
        _int_at_least(cfg, "eval.klom.bins", 2)
        _number_in(cfg, "eval.klom.clip", 0.0, 1e6, open_low=True)
        _number_in(cfg, "eval.klom.percentile", 0.0, 100.0)
        strategy = _value(cfg, "eval.klom.strategy")
        if strategy not in KLOM_STRATEGIES:
            raise ConfigError(
                "eval.klom.strategy", strategy, f"choose one of {list(KLOM_STRATEGIES)}"
            )


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What the suite returns: flat metrics and, per metric that could not be computed, why."""

    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def skip(self, keys: list[str], reason: str) -> None:
        for key in keys:
            self.metrics[key] = float("nan")
            self.notes[key] = reason
        log.warning("[eval] %s: %s", ", ".join(keys), reason)


def _prefix(model: str) -> str:
    """Keys of the unlearned model are bare (``mia``), others carry the model (``original/mia``)."""
    return "" if model == "unlearned" else f"{model}/"


#: the job's three models, as :func:`run_evaluations` receives them
MODELS = ("original", "oracle", "unlearned")


def output_needs(cfg: DictConfig) -> dict[tuple[str, str], bool]:
    """The (model, set) outputs the enabled families of ``cfg.eval`` read, each mapped to
    whether they read its embeddings: MIA the logits of every model on every set, entanglement
    and the feature plots the embeddings of f_A and f_U on R and F, KLoM the logits of f_U.
    Landscape and Hessian read samples of the data (:meth:`OutputStore.sample`), not outputs.
    Keep in step with the families below: a pair missing here is still computed when asked
    for, but then forwarded a second time after the accuracies."""
    ev = cfg.get("eval")
    needs: dict[tuple[str, str], bool] = {}

    def on(name: str) -> bool:
        return ev is not None and ev.get(name) is not None and bool(ev[name].enabled)

    def add(models: tuple[str, ...], sets: tuple[str, ...], embeddings: bool) -> None:
        for key in ((m, s) for m in models for s in sets):
            needs[key] = needs.get(key, False) or embeddings

    if on("mia"):
        add(MODELS, EVAL_SETS, False)
    if on("entanglement") or on("features"):
        add(("original", "unlearned"), ("retain", "forget"), True)
    if on("klom"):
        add(("unlearned",), EVAL_SETS, False)
    return needs


class OutputStore:
    """The job's models on R, F and D_test, each (model, set) pair forwarded once.

    The pipeline creates one store per job and reads the accuracies from it (:meth:`accuracy`)
    before :func:`run_evaluations` reads the outputs (:meth:`outputs`). Pairs listed in
    ``needs`` (:func:`output_needs`) keep their :class:`Outputs` in memory, with embeddings
    where the value is true, from the first pass until the store is dropped; the accuracy of
    any other pair is streamed (:func:`~unlearning.evaluation.metrics.accuracy.accuracy`) and
    nothing of
    it is kept. ``needs=None`` keeps every pair that is asked for.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        data: Any,
        num_classes: int | None = None,
        needs: dict[tuple[str, str], bool] | None = None,
    ) -> None:
        self.models, self.data, self.num_classes, self.needs = models, data, num_classes, needs
        self._outputs: dict[tuple[str, str], Outputs] = {}
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _kept(self, key: tuple[str, str]) -> bool:
        return self.needs is None or key in self.needs

    def outputs(self, model: str, set_name: str, embeddings: bool = False) -> Outputs:
        """``model``'s outputs on ``set_name`` (with embeddings if asked), memoised."""
        key = (model, set_name)
        held = self._outputs.get(key)
        if held is None or (embeddings and held.embeddings is None):
            if held is not None:
                log.warning("[eval] %s on %s: forwarded again for its embeddings", *key)
            with_embeddings = embeddings or bool(self.needs and self.needs.get(key))
            loader = self.data.eval_dataloader(set_name)
            held = model_outputs(self.models[model], loader, embeddings=with_embeddings)
            self._outputs[key] = held
        return held

    def accuracy(self, model: str, set_name: str) -> float:
        """Top-1 accuracy of ``model`` on ``set_name`` (torchmetrics ``MulticlassAccuracy``,
        micro average; ``nan`` for an empty set), from the memoised outputs where the suite
        needs them, else in one streamed pass."""
        if self.num_classes is None:
            raise ValueError("OutputStore.accuracy needs num_classes")
        key = (model, set_name)
        if key in self._outputs or self._kept(key):
            out = self.outputs(model, set_name)
            return logits_accuracy(out.logits, out.labels, self.num_classes)
        loader = self.data.eval_dataloader(set_name)
        return accuracy(self.models[model], loader, self.num_classes)

    def tensors(self, set_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if set_name not in self._tensors:
            xs, ys = [], []
            for x, y in self.data.eval_dataloader(set_name):
                xs.append(x)
                ys.append(y)
            empty = (torch.zeros(0), torch.zeros(0, dtype=torch.long))
            self._tensors[set_name] = (torch.cat(xs), torch.cat(ys).long()) if ys else empty
        return self._tensors[set_name]

    def sample(self, set_name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed (seeded) subset of at most ``n`` samples of a set; only those are loaded."""
        size = self.data.set_size(set_name)
        if size <= n:
            return self.tensors(set_name)
        idx = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
        batches = list(self.data.eval_dataloader(set_name, positions=idx.numpy()))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]).long()


def run_evaluations(
    cfg: DictConfig,
    models: dict[str, nn.Module],
    data: Any,
    output_dir: Path,
    metrics: dict[str, float],
    *,
    unlearn: Unlearn | None = None,
    cache: Any = None,
    klom_key: dict[str, Any] | None = None,
    store: OutputStore | None = None,
) -> Evaluation:
    """Run every enabled evaluation of ``cfg.eval`` (SPEC §5) and return its metrics and notes.

    Args:
        cfg: the job's config; ``cfg.eval`` selects and sizes the evaluations.
        models: ``original``, ``oracle`` and ``unlearned`` backbones.
        data: the job's ``UnlearningDataModule`` (``eval_dataloader(name)``).
        output_dir: where PNGs go.
        metrics: the accuracy metrics already computed (``ua``, ``ra``, ``ta`` and the oracle's
            accuracies, for Avg. Gap).
        unlearn, cache, klom_key: what KLoM needs to build its ensembles (the unlearning stage
            for another seed, the stage cache and the cache key of the oracle ensemble).
        store: the job's :class:`OutputStore` (the pipeline's, which already holds the outputs
            its accuracies were computed from); a new one over ``models`` and ``data`` if
            ``None``.
    """
    result = Evaluation()
    ev = cfg.get("eval")
    if ev is None:
        return result
    if store is None:
        store = OutputStore(models, data, needs=output_needs(cfg))
    runners: dict[str, Callable[[], None]] = {
        "mia": lambda: _mia(ev, store, metrics, result),
        "entanglement": lambda: _entanglement(ev, store, result),
        "landscape": lambda: _landscape(ev, store, output_dir, result),
        "hessian": lambda: _hessian(ev, store, result),
        "klom": lambda: _klom(cfg, store, unlearn, cache, klom_key, result),
        "features": lambda: _features(ev, store, output_dir, result),
    }
    for name in EVALS:
        node = ev.get(name)
        if node is None or not node.enabled:
            continue
        log.info("[eval] %s", name)
        start = time.perf_counter()
        try:
            runners[name]()
        except ValueError as exc:  # data the evaluation cannot handle (e.g. NaN outputs)
            result.notes[name] = f"{name} could not run: {exc}"
            log.warning("[eval] %s", result.notes[name])
        result.metrics[f"time/{name}"] = time.perf_counter() - start
    return result


def _mia(ev: DictConfig, store: OutputStore, metrics: dict[str, float], result: Evaluation) -> None:
    """``mia``, ``mia_efficacy`` (and ``original/``, ``oracle/``), ``avg_gap`` (000 App. C.3,
    004 §5.1)."""
    for model in ("unlearned", "oracle", "original"):
        keys = [f"{_prefix(model)}mia", f"{_prefix(model)}mia_efficacy"]
        sets = {s: store.outputs(model, s) for s in EVAL_SETS}
        empty = [s for s, o in sets.items() if len(o) == 0]
        if empty:
            result.skip(keys, f"MIA needs non-empty retain, test and forget sets; empty: {empty}")
            continue
        try:
            value = membership_inference(
                (sets["retain"].logits, sets["retain"].labels),
                (sets["test"].logits, sets["test"].labels),
                (sets["forget"].logits, sets["forget"].labels),
                max_samples=ev.mia.max_samples,
                seed=ev.seed,
            )
        except ValueError as exc:  # e.g. non-finite outputs of a diverged model
            result.skip(keys, f"the attack cannot use this model's outputs: {exc}")
            continue
        result.metrics[keys[0]], result.metrics[keys[1]] = value, 1.0 - value
    m = {**metrics, **result.metrics}
    unlearned = {k: m.get(k, math.nan) for k in ("ua", "ra", "ta", "mia_efficacy")}
    oracle = {
        "ua": 1.0 - m.get(accuracy_key("oracle", "forget"), math.nan),
        "ra": m.get(accuracy_key("oracle", "retain"), math.nan),
        "ta": m.get(accuracy_key("oracle", "test"), math.nan),
        "mia_efficacy": m.get("oracle/mia_efficacy", math.nan),
    }
    result.metrics["avg_gap"] = avg_gap(unlearned, oracle)
    if not math.isfinite(result.metrics["avg_gap"]):
        result.notes["avg_gap"] = "a term of Avg. Gap (UA, MIA-efficacy, RA, TA) is undefined"


def _entanglement(ev: DictConfig, store: OutputStore, result: Evaluation) -> None:
    """``e_var_all|cls`` (rescaled), ``e_var_all|cls_raw``, ``e_wp_all|cls`` for the unlearned
    model and ``original/`` for f_A (000 eq. 11, App. C.3). The rescaling of E_Var to [0, 1]
    runs over the four raw values of both models."""
    raw: dict[str, float] = {}
    for model in ("original", "unlearned"):
        r, f = store.outputs(model, "retain", True), store.outputs(model, "forget", True)
        raw.update(_model_entanglement(ev, _prefix(model), r, f, result))
    for key, value in ent.rescale(raw).items():
        result.metrics[key.removesuffix("_raw")] = value
        if not math.isfinite(value):
            result.notes[key.removesuffix("_raw")] = result.notes.get(key, "undefined")


def _model_entanglement(
    ev: DictConfig, pre: str, r: Outputs, f: Outputs, result: Evaluation
) -> dict[str, float]:
    """One model's entanglement scores into ``result``; returns its raw E_Var values."""
    node = ev.entanglement
    er, ef = r.normalized_embeddings(), f.normalized_embeddings()
    yr, yf = r.labels.numpy(), f.labels.numpy()
    rng = np.random.default_rng(ev.seed)

    def wp(a: np.ndarray, b: np.ndarray) -> tuple[float, ent.Transport]:
        return ent.e_wp(a, b, node.max_samples, rng, node.p, node.num_itermax)

    attempts: dict[str, Callable[[], Any]] = {
        f"{pre}e_var_all_raw": lambda: ent.e_var(er, ef),
        f"{pre}e_var_cls_raw": lambda: ent.classwise(ent.e_var, er, yr, ef, yf)[0],
        f"{pre}e_wp_all": lambda: wp(er, ef),
        f"{pre}e_wp_cls": lambda: ent.classwise(wp, er, yr, ef, yf),
    }
    raw: dict[str, float] = {}
    for key, compute in attempts.items():
        try:
            value = compute()
        except ent.EntanglementUndefined as exc:
            result.skip([key], str(exc))
            if key.endswith("_raw"):
                raw[key] = float("nan")
            continue
        if isinstance(value, tuple):  # E_Wp: (score, transport report(s))
            value, transports = value
            transports = transports if isinstance(transports, list) else [transports]
            failed = [t.message for t in transports if t is not None and not t.converged]
            if failed:
                result.notes[key] = (
                    f"ot.emd2 did not converge ({failed[0]}); raise "
                    "eval.entanglement.num_itermax or lower eval.entanglement.max_samples"
                )
                log.warning("[eval] %s: %s", key, result.notes[key])
        result.metrics[key] = float(value)
        if key.endswith("_raw"):
            raw[key] = float(value)
    return raw


def _landscape(ev: DictConfig, store: OutputStore, output_dir: Path, result: Evaluation) -> None:
    """``basin_ratio/<set>`` and ``original/basin_ratio/<set>`` (000 §4.3); with ``plots`` the
    figures ``landscape_<set>.png`` (original and unlearned side by side)."""
    from unlearning.outputs.plots import plot_landscapes

    node = ev.landscape
    for set_name in node.sets:
        x, y = store.sample(set_name, node.max_samples, ev.seed)
        keys = [f"{_prefix(m)}basin_ratio/{set_name}" for m in ("original", "unlearned")]
        if len(y) == 0:
            result.skip(keys, f"the {set_name} set is empty")
            continue
        scapes = {
            model: loss_landscape(
                store.models[model], x, y, node.radius, node.steps_1d, node.steps_2d, ev.seed
            )
            for model in ("original", "unlearned")
        }
        for model, scape in scapes.items():
            result.metrics[f"{_prefix(model)}basin_ratio/{set_name}"] = scape.basin_ratio
        if node.plots:
            plot_landscapes(scapes, output_dir / f"landscape_{set_name}.png", set_name)


def _hessian(ev: DictConfig, store: OutputStore, result: Evaluation) -> None:
    """``hessian_top/<set>`` and ``original/hessian_top/<set>``: top Hessian eigenvalue."""
    node = ev.hessian
    for set_name in node.sets:
        x, y = store.sample(set_name, node.max_samples, ev.seed)
        for model in ("original", "unlearned"):
            key = f"{_prefix(model)}hessian_top/{set_name}"
            if len(y) == 0:
                result.skip([key], f"the {set_name} set is empty")
                continue
            eig = top_hessian_eigenvalue(
                store.models[model], x, y, node.iterations, node.tol, ev.seed
            )
            result.metrics[key] = eig.value
            if not eig.converged:
                result.notes[key] = (
                    f"power iteration stopped after {eig.iterations} products without reaching "
                    f"tol={node.tol}; raise eval.hessian.iterations"
                )


def _features(ev: DictConfig, store: OutputStore, output_dir: Path, result: Evaluation) -> None:
    """``features.png``: t-SNE of R and F embeddings before and after unlearning (000 Fig. 1)."""
    from unlearning.outputs.plots import plot_features

    panels = {}
    rng = np.random.default_rng(ev.seed)
    for model in ("original", "unlearned"):
        r, f = store.outputs(model, "retain", True), store.outputs(model, "forget", True)
        keep = np.sort(rng.choice(len(r), min(len(r), ev.features.max_samples), replace=False))
        er, ef = r.normalized_embeddings()[keep], f.normalized_embeddings()
        try:
            points = tsne_2d(np.concatenate([er, ef]), seed=ev.seed)
        except ValueError as exc:
            result.notes["features"] = str(exc)
            return
        panels[model] = (
            points[: len(er)],
            r.labels.numpy()[keep],
            points[len(er) :],
            f.labels.numpy(),
        )
    plot_features(panels, output_dir / "features.png")


# --------------------------------------------------------------------------------------------
# KLoM ensembles (002 §2)
# --------------------------------------------------------------------------------------------


def _klom(
    cfg: DictConfig,
    store: OutputStore,
    unlearn: Unlearn | None,
    cache: Any,
    klom_key: dict[str, Any] | None,
    result: Evaluation,
) -> None:
    """``klom/<set>`` for R, F and D_test: 95th percentile of per-sample KLoM between N
    unlearned and N oracle models (002 §2)."""
    node = cfg.eval.klom
    keys = [f"klom/{s}" for s in EVAL_SETS]
    if unlearn is None or cache is None or klom_key is None:
        result.skip(keys, "KLoM needs the pipeline's unlearning stage and stage cache")
        return
    from unlearning.pipeline.stages import is_from_scratch

    oracle = oracle_margins(cfg, store, cache, klom_key)
    if is_from_scratch(cfg):  # method=retrain: the unlearned models are oracles
        unlearned = oracle
        result.notes["klom/forget"] = "method=retrain: the oracle ensemble is the unlearned one"
    else:
        unlearned = unlearned_margins(cfg, store, unlearn)
    for set_name, key in zip(EVAL_SETS, keys):
        if oracle[set_name].shape[1] == 0:
            result.skip([key], f"the {set_name} set is empty")
            continue
        result.metrics[key] = klom(
            unlearned[set_name],
            oracle[set_name],
            node.percentile,
            bins=node.bins,
            clip=node.clip,
        )


def _train_config(cfg: DictConfig):
    """The oracle recipe (pretraining settings on R, 000 App. C.1) as the ensemble trainer's
    :class:`~unlearning.memorization.estimator.TrainConfig`: SGD with the optimizer's momentum and
    weight
    decay, ``pretrain.lr``, ``pretrain.batch_size``, ``pretrain.epochs``, per-epoch cosine
    schedule, ``pretrain.seed`` (member k's init and batch order derive from it and k)."""
    from unlearning.memorization.estimator import TrainConfig

    p, opt = cfg.pretrain, cfg.pretrain.optim.optimizer
    if p.scheduler != "cosine" or OmegaConf.select(cfg, "pretrain.optim.sharpness") is not None:
        log.warning(
            "[eval] KLoM oracle ensemble: plain SGD with a cosine schedule stands in for "
            "pretrain.optim=%s, pretrain.scheduler=%s",
            cfg.pretrain.optim.name,
            p.scheduler,
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


def oracle_margins(
    cfg: DictConfig, store: OutputStore, cache: Any, klom_key: dict[str, Any]
) -> dict[str, np.ndarray]:
    """``(N, |set|)`` margins of N oracles (the oracle recipe on R with N seeds) on R, F and
    D_test, trained as one vectorised ensemble by the memorization trainer and cached as the
    ``klom_oracles`` stage (key: the oracle's key plus N)."""

    def compute(work_dir: Path) -> dict[str, Any]:
        from unlearning.memorization.estimator import resolve_strategy, train_members

        tensors = [store.tensors(s) for s in EVAL_SETS]
        x = torch.cat([t[0] for t in tensors])
        y = torch.cat([t[1] for t in tensors])
        n = int(cfg.eval.klom.models)
        mask = np.zeros((n, len(y)), dtype=bool)
        mask[:, : len(tensors[0][1])] = True  # every oracle trains on all of R
        device = next(store.models["oracle"].parameters()).device
        strategy = resolve_strategy(cfg.eval.klom.strategy, device)
        rows = np.zeros((n, len(y)))
        stream = train_members(
            lambda: instantiate(cfg.model),
            x,
            y,
            range(n),
            mask,
            _train_config(cfg),
            strategy=strategy,
            chunk_size=n,
            device=device,
        )
        for ids, logits in stream:
            rows[ids] = margins(logits, y)
        bounds = np.cumsum([0] + [len(t[1]) for t in tensors])
        parts = {s: rows[:, bounds[i] : bounds[i + 1]] for i, s in enumerate(EVAL_SETS)}
        np.savez(work_dir / MARGINS_FILE, **parts)
        return {"models": n, "strategy": strategy}

    entry = cache.get_or_compute("klom_oracles", klom_key, compute)
    with np.load(entry / MARGINS_FILE) as saved:
        return {s: saved[s] for s in EVAL_SETS}


def unlearned_margins(
    cfg: DictConfig, store: OutputStore, unlearn: Unlearn
) -> dict[str, np.ndarray]:
    """``(N, |set|)`` margins of N unlearned models: the job's own (run ``seed``) and N − 1 more
    runs of the unlearning stage from the same f_A with seeds ``seed + 1 … seed + N − 1``."""
    n = int(cfg.eval.klom.models)
    rows: dict[str, list[np.ndarray]] = {s: [] for s in EVAL_SETS}

    def add(model: nn.Module) -> None:
        for s in EVAL_SETS:
            out = model_outputs(model, store.data.eval_dataloader(s), embeddings=False)
            rows[s].append(margins(out.logits, out.labels))

    for s in EVAL_SETS:
        out = store.outputs("unlearned", s)
        rows[s].append(margins(out.logits, out.labels))
    with tempfile.TemporaryDirectory(prefix="klom_") as tmp:
        for k in range(1, n):
            seeded = cfg.copy()
            seeded.seed = int(cfg.seed) + k
            log.info("[eval] KLoM: unlearned model %d/%d (seed %d)", k + 1, n, seeded.seed)
            add(unlearn(seeded, Path(tmp) / f"seed_{seeded.seed}"))
    return {s: np.stack(v) for s, v in rows.items()}
