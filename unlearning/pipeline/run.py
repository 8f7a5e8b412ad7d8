"""The unlearning pipeline (SPEC §0): validate → pretrain f_A on S → select F → retrain the
oracle f_A(R) → unlearn from f_A → evaluate against f_A and f_A(R) → write ``results.json``.

Pretraining, the split and the oracle are cached under ``paths.cache_dir`` keyed by exactly the
config that determines each (:func:`unlearning.pipeline.keys.stage_configs`), so a sweep over
methods, optimizers, ``alpha`` or the unlearning ``seed`` pretrains once and retrains the oracle
once per forget set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from datamodules.sources import ImageSource, build_source
from datamodules.splits import split_size
from datamodules.unlearning_datamodule import UnlearningDataModule
from datamodules.validation import carve_validation
from unlearning.config.consistency import check_data_sets, check_scores, reads_test_labels
from unlearning.config.validation import validate_config
from unlearning.errors import unwrap_user_error
from unlearning.evaluation.batch_fit import AUTO, largest_batch
from unlearning.evaluation.metrics.tow import tug_of_war
from unlearning.evaluation.store import OutputStore
from unlearning.evaluation.suite import Suite
from unlearning.methods.base import method_class
from unlearning.outputs.plots import plot_influence, plot_scores
from unlearning.outputs.publish import publish
from unlearning.outputs.results import (
    ACCURACY_SETS,
    VAL,
    accuracy_key,
    summary_table,
    write_results,
)
from unlearning.pipeline import distributed, faults, stages
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs, unlearn_key
from unlearning.pipeline.stages.ensembles import EnsembleEngine, TrainFromScratch
from unlearning.pipeline.stages.fast_training import fast_path_reason, fast_train_from_scratch
from unlearning.pipeline.stages.influence import influence_entry, load_projections, uses_influence

log = logging.getLogger(__name__)


def member_trainer(cfg: DictConfig) -> TrainFromScratch:
    """What trains the pretraining and oracle members of an ensemble: the fast path
    (:func:`~unlearning.pipeline.stages.fast_training.fast_train_from_scratch`, the same model as
    the Lightning stage) when :func:`~unlearning.pipeline.stages.fast_training.fast_path_reason`
    allows it, else the Lightning stage :func:`stages.train_from_scratch`."""
    reason = fast_path_reason(cfg)
    if reason is None:
        return fast_train_from_scratch
    log.info("[ensemble] members train through Lightning (fast path off: %s)", reason)
    return stages.train_from_scratch


def evaluation_device(cfg: DictConfig) -> torch.device:
    """Where the job evaluates its models: the trainer's GPU (``trainer.accelerator`` ``gpu`` /
    ``cuda``, or ``auto`` with a GPU visible; its first device), else the CPU. Training stages
    hand their models back on the CPU (:func:`stages.load_model`); the evaluation moves them
    there, and every metric moves its batches to the model's device."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_eval_batch_size(
    cfg: DictConfig,
    source: ImageSource,
    device: torch.device | None = None,
    probe: bool | None = None,
) -> DictConfig:
    """``cfg`` itself when ``eval_batch_size`` is an integer; for ``eval_batch_size=auto`` a copy
    holding the largest batch of ``cfg.model``'s inference pass that fits on ``device``
    (:func:`unlearning.evaluation.batch_fit.largest_batch`: probed on CUDA, 1024 on the CPU;
    ``probe``
    overrides that choice), so that every stage and the evaluation read one integer."""
    if cfg.eval_batch_size != AUTO:
        return cfg
    device = device if device is not None else evaluation_device(cfg)
    with torch.random.fork_rng(devices=[]):  # building the probe model draws no job randomness
        model = instantiate(cfg.model).to(device)
    sample, _ = source.dataset("test", augment=False)[0]
    n_train = len(source.targets("train"))
    size = largest_batch(model, tuple(sample.shape), device, set_size=n_train, probe=probe)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the probe model's memory goes back to the stages
    resolved = cfg.copy()
    resolved.eval_batch_size = size
    log.info("[eval] eval_batch_size=auto resolves to %d on %s", size, device)
    return resolved


def evaluate(store: OutputStore) -> dict[str, float]:
    """Accuracy of each model of ``store`` on R, F, the validation set and the test set (test
    transforms), keyed ``<model>/acc_<set>``, read from the outputs the evaluation suite shares
    (one forward pass per model and set in the whole job)."""
    return {
        accuracy_key(name, s): store.accuracy(name, s)
        for name in store.models
        for s in ACCURACY_SETS
    }


def derived_metrics(acc: dict[str, float], rte_s: float) -> dict[str, float]:
    """ToW (000 eq. 10), ToW with absolute gaps, UA = 1 − Acc_u(F), RA, TA, RTE (SPEC §5), and
    the validation versions ``tow_val``, ``tow_abs_val``, ``ta_val``: the same with the
    validation set in the place of D_test, for selection (issue 16)."""
    unlearned = {s: acc[accuracy_key("unlearned", s)] for s in ACCURACY_SETS}
    oracle = {s: acc[accuracy_key("oracle", s)] for s in ACCURACY_SETS}

    def on(held_out: str, accs: dict[str, float]) -> dict[str, float]:
        return {"retain": accs["retain"], "forget": accs["forget"], "test": accs[held_out]}

    metrics = {"ua": 1.0 - unlearned["forget"], "ra": unlearned["retain"], "rte_s": rte_s}
    for held_out, suffix in (("test", ""), (VAL, "_val")):
        u, o = on(held_out, unlearned), on(held_out, oracle)
        metrics[f"tow{suffix}"] = tug_of_war(u, o)
        metrics[f"tow_abs{suffix}"] = tug_of_war(u, o, absolute=True)
        metrics[f"ta{suffix}"] = u["test"]
    return metrics


@dataclass
class Artefacts:
    """The cached stages one job works from (SPEC §0)."""

    pretrained: Path
    split: Path
    oracle: Path
    forget_indices: np.ndarray
    test_indices: np.ndarray | None
    scores: np.ndarray | None = None
    scores_entry: Path | None = None
    influence: Path | None = None


def check_inputs(cfg: DictConfig) -> ImageSource:
    """Everything that can be checked before any training: config values, every data file the
    job reads (train and test parts, their labels: :meth:`ImageSource.check_contents`), no
    empty set, the class a split names, the forget-set size and a score file (length, finite
    values). Returns the data source."""
    validate_config(cfg)
    try:
        source = build_source(cfg.dataset)
    except InstantiationException as exc:  # a dataset constructor's DataConfigError, unwrapped
        raise unwrap_user_error(exc) from None
    source.check_contents()
    check_data_sets(cfg, source)
    n_forget = split_size(cfg.split, len(source.targets("train")))
    if stages.uses_scores(cfg) and cfg.memorization.source == "file":
        mem = cfg.memorization
        scores = stages.read_score_file(Path(mem.path), mem.key, source.targets("train"))
        if n_forget is not None:
            check_scores(cfg, scores, n_forget)
    return source


def cached_stages(cfg: DictConfig, source: ImageSource, cache: StageCache) -> Artefacts:
    """Pretraining, memorization scores (if the split needs them), the split and the oracle, each
    computed once per key and reused by every later job."""
    keys = stage_configs(cfg, source)
    pretrained = cache.get_or_compute(
        "pretrain",
        keys["pretrain"],
        lambda d: stages.train_from_scratch(cfg, source, None, "train", d),
    )
    scores = scores_entry = None
    if stages.uses_scores(cfg):
        scores_entry = cache.get_or_compute(
            "memorization",
            keys["memorization"],
            lambda d: stages.compute_memorization(cfg, source, d),
        )
        with np.load(scores_entry / stages.SCORES_FILE) as data:
            scores = data["scores"]
    influence = None
    if uses_influence(cfg):
        influence = influence_entry(cfg, source, cache, keys, pretrained)
    split = cache.get_or_compute(
        "split",
        keys["split"],
        lambda d: stages.select_forget_set(cfg, source, scores, d, influence),
    )
    forget = np.load(split / stages.FORGET_FILE)
    test_file = split / stages.TEST_FILE
    oracle = cache.get_or_compute(
        "oracle",
        keys["oracle"],
        lambda d: stages.train_from_scratch(cfg, source, forget, "retain", d),
    )
    test = np.load(test_file) if test_file.is_file() else None
    return Artefacts(pretrained, split, oracle, forget, test, scores, scores_entry, influence)


class Unlearned(NamedTuple):
    """The unlearning stage's outcome: model, RTE in seconds, ``ok``/``diverged`` and the step
    of divergence (``None`` unless diverged)."""

    net: nn.Module
    rte_s: float
    status: str
    diverged_at_step: int | None = None


def unlearning_stage(
    cfg: DictConfig,
    source: ImageSource,
    cache: StageCache,
    art: Artefacts,
    loggers: list,
    out: Path,
    key_cfg: DictConfig | None = None,
) -> Unlearned:
    """The unlearned model, its RTE in seconds and the status. A ``from_scratch`` method
    (``retrain``) is served by the oracle stage; a method that ``needs_forget_mask`` gets its
    (cached) mask from the mask stage.

    The unlearned model is kept like a cache entry in the job's output directory,
    ``<out>/unlearn/<key>/`` (checkpoints in ``<key>.partial/`` while it runs): a rerun with the
    same output directory (``hydra.run.dir=...``) resumes an interrupted unlearning from its last
    epoch, or reuses the finished model if the job died later (docs/pipeline.md). The entry is
    keyed by ``key_cfg`` (default ``cfg``; :func:`unlearning.pipeline.keys.unlearn_key`): the
    job's config as written, where ``eval_batch_size`` may still read ``auto`` while ``cfg``
    holds the resolved integer."""
    method = method_class(cfg.method._target_)
    if method.from_scratch:
        log.info("[unlearn] method=retrain: the unlearned model is the oracle f_A(R)")
        return Unlearned(
            stages.load_model(cfg, art.oracle), float(StageCache.meta(art.oracle)["seconds"]), "ok"
        )
    mask = None
    if method.needs_forget_mask:
        mask = cache.get_or_compute(
            "mask",
            stage_configs(cfg, source)["mask"],
            lambda d: stages.compute_forget_mask(
                cfg, source, art.forget_indices, art.pretrained, d
            ),
        )
    log.info("[unlearn] method=%s optim=%s", cfg.method.name, cfg.optim.name)
    outputs = distributed.stage_cache(out, setting="hydra.run.dir")
    entry = outputs.get_or_compute(
        "unlearn",
        unlearn_key(key_cfg if key_cfg is not None else cfg, source),
        lambda d: stages.unlearn(cfg, source, art.forget_indices, art.pretrained, loggers, d, mask),
    )
    meta = StageCache.meta(entry)
    return Unlearned(
        stages.load_model(cfg, entry), meta["rte_s"], meta["status"], meta["diverged_at_step"]
    )


def split_metrics(art: Artefacts) -> dict[str, float]:
    """What the split stage recorded (memorization means and overlaps, noisy samples in F)."""
    metrics = {
        f"split/{name}": float(value)
        for name, value in StageCache.meta(art.split).items()
        if name.startswith(("overlap_", "mean_mem", "n_noisy", "influence_"))
    }
    if art.scores_entry is not None:
        metrics["split/mem_is_proxy"] = float(StageCache.meta(art.scores_entry).get("is_proxy", 0))
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole pipeline for one config; return the ``results.json`` payload."""
    source = check_inputs(cfg)
    log.info(
        "[select] optimized_metric=%s%s; validation split: %.0f%% of D_test (validation.fraction)",
        cfg.optimized_metric,
        " (reads test labels: validation.allow_test_selection=true)"
        if reads_test_labels(cfg.optimized_metric)
        else " (no test label is read)",
        100 * cfg.validation.fraction,
    )
    # with a ddp trainer every rank runs the job; its ranks start here
    # (unlearning.pipeline.distributed)
    with distributed.session(cfg):
        return _run_checked(cfg, source)


def _run_checked(cfg: DictConfig, source: ImageSource) -> dict[str, Any]:
    """:func:`run` after the start-up checks, in every rank of a multi-process job; only rank 0
    evaluates and writes outputs.

    ``cfg`` is the config as written (``results.json`` records it, so that a rerun recognises
    the job); the stages and the evaluation get ``job``, the same config with
    ``eval_batch_size`` resolved to an integer (:func:`resolve_eval_batch_size`)."""
    job = resolve_eval_batch_size(cfg, source)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = distributed.stage_cache(cfg.paths.cache_dir)
    art = cached_stages(job, source, cache)
    loggers = [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec]
    outcome = unlearning_stage(job, source, cache, art, loggers, output_dir, key_cfg=cfg)
    unlearned, rte_s, status = outcome.net, outcome.rte_s, outcome.status
    distributed.end_collectives()  # training is over: rank 0 evaluates and writes alone
    if not distributed.is_rank_zero():
        return {"status": status, "config": OmegaConf.to_container(cfg), "metrics": {}}
    faults.inject("evaluate", 0)

    val_rows, test_rows = carve_validation(
        len(source.targets("test")), art.test_indices, cfg.validation.fraction, cfg.validation.seed
    )
    data = UnlearningDataModule(
        source,
        art.forget_indices,
        eval_batch_size=job.eval_batch_size,
        num_workers=cfg.num_workers,
        test_indices=test_rows,
        val_indices=val_rows,
    )
    device = evaluation_device(job)
    models = {
        "original": stages.load_model(job, art.pretrained).to(device),
        "oracle": stages.load_model(job, art.oracle).to(device),
        "unlearned": unlearned.to(device),
    }
    suite = Suite.from_config(job)  # the enabled evaluation families, in config order
    needs = suite.needs()
    # one store per job: the accuracies and the evaluation suite read the same forward passes
    store = OutputStore(models, data, source.num_classes, needs=needs)
    metrics: dict[str, float] = evaluate(store)
    metrics.update(derived_metrics(metrics, rte_s))
    # the cost of retraining: RTE is read against it (002 Fig. 1's colour, the report)
    metrics["oracle_s"] = float(StageCache.meta(art.oracle)["seconds"])
    metrics["split/n_forget"] = float(data.set_size("forget"))
    metrics["split/n_retain"] = float(data.set_size("retain"))
    metrics["split/n_val"] = float(data.set_size("val"))
    metrics["split/n_test"] = float(data.set_size("test"))
    metrics.update(split_metrics(art))
    if art.scores is not None:
        plot_scores(art.scores, art.forget_indices, output_dir / "memorization.png", cfg.split.name)
    if art.influence is not None:
        title = f"{cfg.split.attribution} influence, F = PC{cfg.split.component} {cfg.split.ends}"
        plot_influence(
            load_projections(art.influence),
            art.forget_indices,
            output_dir / "influence.png",
            title,
            cfg.split.component,
        )
    # the model ensembles the families read (KLoM: N pretrained, oracle and unlearned models),
    # each member an entry of its own stage in the shared cache; pretraining and oracle members
    # train by the plain-PyTorch fast path (the same weights) where it applies
    ensembles = EnsembleEngine(
        job,
        source,
        cache,
        store,
        art.forget_indices,
        device,
        train_from_scratch=member_trainer(job) if needs.ensembles else stages.train_from_scratch,
    ).build_all(needs.ensembles)
    evaluation = suite.run(store, output_dir, metrics, ensembles)
    del store, ensembles  # the outputs and margins are no longer needed
    metrics.update(evaluation.metrics)

    publish(loggers, metrics, status, sorted(output_dir.glob("*.png")))
    config = OmegaConf.to_container(cfg, resolve=True)
    write_results(
        output_dir / "results.json",
        status,
        config,
        metrics,
        evaluation.notes,
        diverged_at_step=outcome.diverged_at_step,
    )
    title = (
        f"method={cfg.method.name} optim={cfg.optim.name} alpha={cfg.alpha} "
        f"dataset={cfg.dataset.name} split={cfg.split.name} "
        f"|F|={int(metrics['split/n_forget'])} status={status}"
    )
    selection = (
        f"selection: {cfg.optimized_metric} = {metrics.get(cfg.optimized_metric, math.nan):.4f}"
    )
    print(
        summary_table(metrics, title) + f"\n{selection}\nresults: {output_dir / 'results.json'}",
        flush=True,
    )
    return {"status": status, "config": config, "metrics": metrics, "notes": evaluation.notes}
