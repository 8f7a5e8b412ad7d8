"""Stage cache keys: the exact config each cached stage depends on (SPEC §0, docs/pipeline.md).

A stage's key is a hash of the config values that determine its result. Values that do not
(paths, speed and display settings) are left out by their full dotted path
(:data:`NON_DETERMINING`), never by their leaf name: a method or model argument that happens to be
called ``root`` or ``lag`` is part of every key it determines.

Where the data lives is not part of a key, what it is is: every key holds the data's fingerprint
(:func:`unlearning.pipeline.fingerprint.data_fingerprint`) as ``dataset.content``, so that other
files under the same ``dataset.root`` never reuse an entry and a copy of the data elsewhere does
(issue 19).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from datamodules.sources import ImageSource, build_source
from unlearning.methods.base import method_class
from unlearning.pipeline.fingerprint import DigestMemo, data_fingerprint
from unlearning.pipeline.stages.influence import influence_key, uses_influence
from unlearning.pipeline.stages.scores import uses_scores

#: bump when a stage's computation changes meaning, so old cache entries are not reused.
CACHE_VERSION = 1
#: the key, inside each key's ``dataset`` node, that holds the data's fingerprint
CONTENT = "content"
#: config keys, by full dotted path, that do not change any stage's result.
NON_DETERMINING = frozenset(
    {
        "dataset.root",  # where the real data lives, not what it is
        "num_workers",  # DataLoader workers: speed
        "trainer.enable_progress_bar",  # display
        "trainer.enable_model_summary",  # display
        "trainer.log_every_n_steps",  # when values reach the loggers, not the values
        "trainer.default_root_dir",  # set per stage to the stage's work directory
        "divergence.lag",  # when the guard reads the loss, not what it decides
        "memorization.threads",  # torch threads while training the members: speed
        "memorization.workers",  # processes training members at once: speed
        # Hydra's flag that a node is called later with more arguments (always true for these)
        "optim.optimizer._partial_",
        "pretrain.optim.optimizer._partial_",
        "method.scheduler._partial_",
        "pretrain.scheduler._partial_",
    }
)
#: memorization sources that train models with the pretraining recipe (their key holds it)
TRAINED_SOURCES = ("estimate", "learning_speed")
#: top-level config keys that do not change the unlearned model (its key in the output dir)
NOT_UNLEARNING = ("paths", "logger", "eval", "validation", "optimized_metric", "hydra")


def determining(node: Any, path: str = "") -> Any:
    """A plain container of ``node`` (the config at dotted ``path``; ``""`` = the root) without
    the keys whose full path is in :data:`NON_DETERMINING`, recursively. List items keep their
    list's path."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        prefix = f"{path}." if path else ""
        return {
            k: determining(v, f"{prefix}{k}")
            for k, v in node.items()
            if f"{prefix}{k}" not in NON_DETERMINING
        }
    if isinstance(node, list):
        return [determining(v, path) for v in node]
    return node


def dataset_key(cfg: DictConfig, source: ImageSource | None = None) -> dict[str, Any]:
    """The ``dataset`` node of every key: its determining config and, as :data:`CONTENT`, the
    fingerprint of the data ``source`` reads (``None``: the source ``cfg.dataset`` builds; the
    pipeline passes the one it checked, so a job hashes its data once)."""
    if source is None:
        source = build_source(cfg.dataset)
    content = data_fingerprint(source, OmegaConf.select(cfg, "paths.cache_dir"))
    return {**determining(cfg.dataset, "dataset"), CONTENT: content}


def memorization_key(cfg: DictConfig) -> dict[str, Any]:
    """The determining ``memorization`` config; with ``memorization.source=file`` its ``path``
    is replaced by the SHA-256 of the file's bytes (memoised like the data's files): the scores
    are what the split reads, not where they lie."""
    memorization = determining(cfg.memorization, "memorization")
    path = memorization.get("path")
    if memorization.get("source") == "file" and path is not None:
        file = Path(str(path)).expanduser()
        if file.is_file():
            memo = DigestMemo(OmegaConf.select(cfg, "paths.cache_dir"))
            memorization["path"] = f"sha256:{memo.digest(file)}"
            memo.save()
    return memorization


def stage_configs(cfg: DictConfig, source: ImageSource | None = None) -> dict[str, dict[str, Any]]:
    """The exact config each cached stage depends on (its cache key is a hash of this).

    * ``pretrain``: dataset, model, pretraining settings (incl. optimizer A, its scheduler and
      ``pretrain.seed``), trainer numerics.
    * ``memorization``: dataset, the ``memorization`` source (a score file by its bytes,
      :func:`memorization_key`); for the estimator and the learning-speed proxy, which train the
      pretraining recipe, also the model, the ``pretrain`` node without ``pretrain.seed`` (the
      members have their own seeds, ``memorization.seed + k``) and the trainer numerics.
    * ``split``: dataset and split rule (incl. ``split.seed``; and the scores for ``mem_*``, the
      influence key for ``influence_pc``).
    * ``influence`` (only for ``split=influence_pc``): the attribution settings and the
      memorization key (``datamodel``) or the pretrain key (``trak``)
      (:func:`~unlearning.pipeline.stages.influence.influence_key`).
    * ``oracle``: everything of ``pretrain`` and ``split``.
    * ``mask``: f_A and F, and the method config values that size the mask
      (:meth:`~unlearning.methods.base.UnlearningMethod.mask_settings`; none for a method
      without a mask).

    Every ``dataset`` node holds the data's fingerprint (:func:`dataset_key`; ``source`` is the
    job's data source, ``None`` builds it from ``cfg.dataset``).

    The unlearning method, ``optim``, ``alpha``, ``rho`` and the run ``seed`` are absent on
    purpose: changing them reuses all of these stages (the unlearned model's own key is
    :func:`unlearn_key`). Ensemble members (:mod:`unlearning.pipeline.stages.ensembles`) are
    entries of these same stages, keyed by the member's config.
    """
    dataset, split = dataset_key(cfg, source), determining(cfg.split, "split")
    memorization = memorization_key(cfg)
    scores = {"version": CACHE_VERSION, "dataset": dataset, "memorization": memorization}
    if memorization.get("source") in TRAINED_SOURCES:
        recipe = determining(cfg.pretrain, "pretrain")
        recipe.pop("seed", None)  # f_A's seed: the members are seeded by memorization.seed
        scores["model"] = determining(cfg.model, "model")
        scores["pretrain"] = recipe
        scores["trainer"] = determining(cfg.trainer, "trainer")
    if uses_scores(cfg):
        split = {**split, "scores": scores}
    pretrain = {
        "version": CACHE_VERSION,
        "dataset": dataset,
        "model": determining(cfg.model, "model"),
        "pretrain": determining(cfg.pretrain, "pretrain"),
        "trainer": determining(cfg.trainer, "trainer"),
    }
    influence = {}
    if uses_influence(cfg):
        influence = {"version": CACHE_VERSION, **influence_key(cfg, pretrain, scores)}
        split = {**split, "influence": influence}
    return {
        "pretrain": pretrain,
        "memorization": scores,
        **({"influence": influence} if influence else {}),
        "split": {"version": CACHE_VERSION, "dataset": dataset, "split": split},
        "oracle": {**pretrain, "split": split},
        # saliency mask of f_A for methods that split the model (MinMax, SalUn)
        "mask": {
            "pretrain": pretrain,
            "split": split,
            **method_class(cfg.method._target_).mask_settings(cfg.method),
        },
    }


def unlearn_key(cfg: DictConfig, source: ImageSource | None = None) -> dict[str, Any]:
    """The unlearned model's key: the whole config except :data:`NOT_UNLEARNING` (outputs and
    evaluation) and :data:`NON_DETERMINING`, so every method, ``optim``, ``callbacks`` and
    ``seed`` value is part of it; its ``dataset`` node holds the data's fingerprint
    (:func:`dataset_key`)."""
    key = {k: v for k, v in determining(cfg).items() if k not in NOT_UNLEARNING}
    key["dataset"] = dataset_key(cfg, source)
    if "memorization" in key:
        key["memorization"] = memorization_key(cfg)
    key["version"] = CACHE_VERSION
    return key
