"""The rule table: every user-facing config key, the kind of value it holds, and the walk that
applies the table to a composed config (:func:`check_keys`).

A rule maps a dotted key pattern to a :class:`~unlearning.config.kinds.Kind`; ``*`` stands for
one segment of any name (``eval.*.enabled``: every evaluation family). The table also *declares*
the config: a key is known if a rule names it or names a key below it, if it is an argument of
its node's ``_target_`` (read from the target's signature), or if it is one of Hydra's own keys
(``_target_``, ``_partial_``, ...). Every other key — a typo, or a key added with ``+`` that no
code reads — is refused, and so is a key that a node's ``_target_`` would not accept (the
constructor would fail only when a stage builds it). Cross-key rules (model vs dataset, DDP,
files) live in :mod:`unlearning.config.consistency`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from callbacks.sharpness import ADAPTIVE_PARAMS, VARIANTS
from datamodules.real_datasets import AUGMENT_IMPLS
from datamodules.sources import LABEL_NOISE_KEYS
from datamodules.splits import (
    INFLUENCE_COMPONENTS,
    INFLUENCE_ENDS,
    INFLUENCE_SPLIT,
    MEMORIZATION_SPLITS,
)
from unlearning.config.kinds import (
    BOOLEAN,
    COUNT,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    TEXT,
    UNIT,
    Kind,
    choice,
    integer,
    list_of,
    literal,
    number,
    optional,
    reject,
    require,
)
from unlearning.errors import ConfigError
from unlearning.evaluation.batch_fit import AUTO
from unlearning.evaluation.metrics.mia import VARIANTS as MIA_VARIANTS
from unlearning.files import unwritable_reason
from unlearning.memorization.influence import ATTRIBUTIONS
from unlearning.methods.base import UnlearningMethod
from unlearning.outputs.results import SETS

# ------------------------------------------------------------------------------ node kinds


def locate(path: str) -> Any:
    """The object a ``_target_`` names (``package.module.Name``), imported; raises
    ``ImportError`` with a one-line reason when no prefix of ``path`` imports as a module or
    the rest is no attribute of it."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name is None or not ".".join(parts[:cut]).startswith(error.name):
                raise ImportError(f"{type(error).__name__}: {error}") from None
            continue
        except Exception as error:  # a module that fails while importing
            raise ImportError(" ".join(f"{type(error).__name__}: {error}".split())) from None
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                raise ImportError(f"{'.'.join(parts[:cut])} has no {attribute!r}")
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def target(base: type | None = None, example: str = "torch.optim.SGD") -> Kind:
    """A ``_target_``: the dotted path of an importable callable (a subclass of ``base``)."""
    what = f"subclass of {base.__module__}.{base.__qualname__}" if base else "callable"

    def test(path: Any) -> bool | str:
        if not isinstance(path, str) or not path:
            return False
        try:
            obj = locate(path)
        except ImportError as error:
            return f"cannot import {path}: {error}"
        if base is None and not callable(obj):
            return f"{path} is not callable"
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            return f"{path} is not a {what}"
        return True

    allowed = f"an importable {what}" if base else "an importable class or function"
    return Kind(allowed, test, example)


def _is_node(value: Any) -> bool:
    return isinstance(value, Mapping)


#: a config node (mapping) with a ``_target_`` that Hydra instantiates
TARGET_NODE = Kind(
    "a config node with a _target_", lambda v: _is_node(v) and "_target_" in v, "{_target_: ...}"
)
#: a config node without further conditions (a group of keys)
NODE = Kind("a config node (a mapping of keys)", _is_node, "{}")
#: a writable directory, or a path where one can be created; checked without creating anything
WRITABLE_DIR = Kind(
    "a directory that can be written (or created)",
    lambda v: TEXT.test(v) and (unwritable_reason(v) or True),
    "~/.cache/unlearning",
)
#: the lr schedule of a training stage: null (constant) or a ``_partial_`` torch LR scheduler
SCHEDULER = Kind(
    "null (constant lr) or a _partial_ LR-scheduler node",
    lambda v: v is None or (TARGET_NODE.test(v) and v.get("_partial_") is True),
    "null",
)

# ------------------------------------------------------------------------------ choices

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
#: Lightning's precision names (Trainer(precision=...)); the legacy aliases are accepted too
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
PRECISION_ALIASES = (32, 16, 64, "32", "16", "64", "bf16")
MEMORIZATION_SOURCES = ("estimate", "file", "learning_speed")
#: the forget-set rules of datamodules.splits.select_split
SPLITS = ("random", "class", "group", *MEMORIZATION_SPLITS, INFLUENCE_SPLIT)
#: Hydra's own keys of an instantiated node
HYDRA_KEYS: dict[str, Kind] = {
    "_target_": target(),
    "_partial_": BOOLEAN,
    "_recursive_": BOOLEAN,
    "_convert_": choice(("none", "partial", "object", "all")),
    "_args_": Kind(
        "a list of arguments", lambda v: isinstance(v, Sequence) and not isinstance(v, str), "[]"
    ),
}

#: Trainer's devices: a count, all (-1, auto) or a list of device indices
DEVICES = Kind(
    "a positive integer, -1 or auto (all), or a list of device indices",
    (POSITIVE_INT | choice((-1, AUTO)) | list_of(COUNT)).test,
    "1",
)
#: Trainer's limit_*_batches: a number of batches or a fraction of the loader
BATCH_LIMIT = Kind(
    "an integer ≥ 0 (batches) or a number in [0, 1] (a fraction)",
    lambda v: COUNT.test(v) is True or UNIT.test(v) is True,
    "1.0",
)

# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Rule:
    """``pattern`` (dotted, ``*`` = any one segment) holds a value of ``kind``;
    ``example`` overrides the kind's example in the message."""

    pattern: str
    kind: Kind
    example: str | None = None


def _optim_rules(prefix: str) -> list[Rule]:
    """An optimizer preset (``optim``, ``pretrain.optim``): a partial torch optimizer and an
    optional sharpness-aware callback (callbacks/sharpness.py)."""
    return [
        Rule(f"{prefix}.name", TEXT, "sgd"),
        Rule(f"{prefix}.optimizer", TARGET_NODE, f"{prefix.replace('.', '/')}=sgd"),
        Rule(f"{prefix}.optimizer.momentum", number(0, 1, high_open=True), "0.9"),
        Rule(f"{prefix}.optimizer.weight_decay", NON_NEGATIVE, "5e-4"),
        Rule(f"{prefix}.sharpness", optional(TARGET_NODE), "null"),
        Rule(f"{prefix}.sharpness.rho", POSITIVE, "0.1"),
        Rule(f"{prefix}.sharpness.eta", NON_NEGATIVE, "0.01"),
        Rule(f"{prefix}.sharpness.adaptive", BOOLEAN),
        Rule(f"{prefix}.sharpness.adaptive_params", choice(ADAPTIVE_PARAMS)),
        Rule(f"{prefix}.sharpness.variant", choice(VARIANTS)),
    ]


def _stage_rules(prefix: str, lr: str) -> list[Rule]:
    """A training stage's schedule (``pretrain``, ``method``): epochs, lr, batch, lr schedule."""
    return [
        Rule(f"{prefix}.epochs", POSITIVE_INT, "10"),
        Rule(f"{prefix}.lr", POSITIVE, lr),
        Rule(f"{prefix}.batch_size", POSITIVE_INT, "64"),
        # a preset of conf/scheduler/ placed at this stage (docs/config/scheduler.md)
        Rule(f"{prefix}.scheduler", SCHEDULER, f"scheduler@{prefix}=cosine"),
    ]


TABLE: tuple[Rule, ...] = (
    # --- top level (conf/config.yaml)
    Rule("seed", SEED),
    Rule("alpha", UNIT, "0.99"),
    Rule("rho", optional(POSITIVE), "0.1"),
    Rule("lab", optional(TARGET_NODE), "experiment=theory/signal_noise"),
    Rule("lab.seed", SEED),
    Rule("lab.seeds", list_of(SEED), "[0,1,2]"),
    Rule("optimized_metric", TEXT, "tow_val"),
    Rule("divergence", NODE),
    Rule("divergence.max_abs_loss", optional(POSITIVE), "1e6"),
    Rule("divergence.lag", optional(COUNT), "null"),
    Rule("eval_batch_size", POSITIVE_INT | literal(AUTO), "1024"),
    Rule("num_workers", COUNT),
    Rule("channels_last", BOOLEAN),
    Rule("compile", BOOLEAN),
    Rule("callbacks", optional(NODE), "null"),
    Rule(
        "callbacks.*",
        TARGET_NODE,
        "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor",
    ),
    Rule(
        "callbacks.*._target_", target(Callback, "lightning.pytorch.callbacks.LearningRateMonitor")
    ),
    # --- paths (conf/paths/)
    Rule("paths.cache_dir", WRITABLE_DIR),
    Rule("paths.log_dir", WRITABLE_DIR, "logs"),
    Rule("paths.output_dir", WRITABLE_DIR, "outputs/run"),
    Rule("paths.data_dir", TEXT, "data"),
    # --- pretraining (conf/config.yaml, conf/dataset/, conf/pretrain/optim/)
    Rule("pretrain.seed", SEED),
    *_stage_rules("pretrain", "0.1"),
    *_optim_rules("pretrain.optim"),
    *_optim_rules("optim"),
    # --- dataset (conf/dataset/)
    Rule("dataset", TARGET_NODE, "dataset=digits"),
    Rule("dataset.name", TEXT, "digits"),
    Rule("dataset.root", TEXT, "data/cifar10"),
    Rule("dataset.num_classes", integer(2), "10"),
    Rule("dataset.in_channels", POSITIVE_INT, "3"),
    Rule("dataset.image_size", POSITIVE_INT, "32"),
    Rule("dataset.test_resize_size", POSITIVE_INT, "256"),
    Rule("dataset.test_fraction", OPEN_UNIT, "0.2"),
    Rule("dataset.split_seed", SEED),
    Rule("dataset.label_noise", number(0, 1, high_open=True), "0.05"),
    Rule("dataset.label_noise_seed", SEED),
    Rule("dataset.crop_scale", list_of(number(0, 1, low_open=True), length=2), "[0.8,1.0]"),
    Rule("dataset.hflip", BOOLEAN),
    Rule("dataset.augment_impl", choice(AUGMENT_IMPLS)),
    Rule("dataset.n_train", POSITIVE_INT, "400"),
    Rule("dataset.n_test", POSITIVE_INT, "1000"),
    Rule("dataset.patches", integer(2), "2"),
    Rule("dataset.dim", POSITIVE_INT, "200"),
    Rule("dataset.signal_strength", NON_NEGATIVE, "3.0"),
    Rule("dataset.noise_std", POSITIVE, "1.0"),
    Rule("dataset.data_seed", SEED),
    # --- model (conf/model/)
    Rule("model", TARGET_NODE, "model=small_cnn"),
    Rule("model.num_classes", integer(2), "${dataset.num_classes}"),
    Rule("model.in_channels", POSITIVE_INT, "${dataset.in_channels}"),
    Rule("model.width", POSITIVE_INT, "32"),
    Rule("model.depth", choice((18, 34, 50))),
    Rule("model.cifar_stem", BOOLEAN),
    Rule("model.dim", POSITIVE_INT, "${dataset.dim}"),
    Rule("model.init_std", POSITIVE, "0.01"),
    # --- unlearning method (conf/method/); its own arguments are checked by its constructor
    Rule("method", TARGET_NODE, "method=neggrad"),
    Rule("method._target_", target(UnlearningMethod, "unlearning.methods.ascent.NegGrad")),
    Rule("method.name", TEXT, "neggrad"),
    *_stage_rules("method", "0.02"),
    Rule("method.alpha", UNIT, "${alpha}"),
    Rule("method.fraction", OPEN_UNIT, "0.3"),
    Rule("method.forget_rho", optional(POSITIVE), "null"),
    # --- forget set (conf/split/)
    Rule("split.name", choice(SPLITS)),
    Rule("split.size", POSITIVE, "0.05"),
    Rule("split.stratified", BOOLEAN),
    Rule("split.seed", SEED),
    Rule("split.label", COUNT),
    Rule("split.fine_label", integer(0, 99, example="0")),
    Rule("split.disjoint", BOOLEAN),
    # influence-PC forget sets (002 App. M; conf/split/influence_pc.yaml)
    Rule("split.component", choice(INFLUENCE_COMPONENTS)),
    Rule("split.ends", choice(INFLUENCE_ENDS)),
    Rule("split.min_size", POSITIVE_INT, "10"),
    Rule("split.attribution", choice(ATTRIBUTIONS)),
    Rule("split.self_influence", BOOLEAN),
    Rule("split.proj_dim", POSITIVE_INT, "512"),
    # --- memorization scores (conf/memorization/)
    Rule("memorization.source", choice(MEMORIZATION_SOURCES)),
    Rule("memorization.members", POSITIVE_INT, "128"),
    Rule("memorization.fraction", OPEN_UNIT, "0.7"),
    Rule("memorization.seed", SEED),
    Rule("memorization.workers", POSITIVE_INT, "2"),
    Rule("memorization.threads", optional(POSITIVE_INT), "1"),
    Rule("memorization.path", TEXT, "data/memorization/cifar100.npz"),
    Rule("memorization.key", TEXT, "tr_mem"),
    # --- Lightning Trainer (conf/trainer/); max_epochs etc. are set per stage by the pipeline
    Rule("trainer", TARGET_NODE, "trainer=cpu"),
    Rule("trainer.accelerator", choice(ACCELERATORS), "cpu"),
    Rule("trainer.devices", DEVICES),
    Rule("trainer.num_nodes", optional(POSITIVE_INT), "1"),
    Rule("trainer.strategy", TEXT | TARGET_NODE, "auto"),
    Rule("trainer.precision", choice((*PRECISIONS, *PRECISION_ALIASES), shown=PRECISIONS)),
    Rule("trainer.deterministic", optional(BOOLEAN | literal("warn")), "true"),
    Rule("trainer.benchmark", optional(BOOLEAN), "null"),
    Rule("trainer.sync_batchnorm", BOOLEAN),
    Rule("trainer.limit_train_batches", BATCH_LIMIT),
    Rule("trainer.limit_val_batches", BATCH_LIMIT),
    Rule("trainer.limit_test_batches", BATCH_LIMIT),
    Rule("trainer.limit_predict_batches", BATCH_LIMIT),
    Rule("trainer.enable_progress_bar", optional(BOOLEAN), "false"),
    Rule("trainer.enable_model_summary", optional(BOOLEAN), "false"),
    Rule("trainer.log_every_n_steps", optional(POSITIVE_INT), "10"),
    Rule("trainer.accumulate_grad_batches", POSITIVE_INT, "1"),
    Rule("trainer.gradient_clip_val", optional(NON_NEGATIVE), "null"),
    Rule("trainer.detect_anomaly", BOOLEAN),
    Rule("trainer.inference_mode", BOOLEAN),
    # --- loggers (conf/logger/): name -> instantiated logger
    Rule("logger", NODE),
    Rule("logger.*", TARGET_NODE, "logger=csv"),
    # --- evaluation suite (conf/eval/): the bounds each family needs
    Rule("validation", NODE),
    Rule("validation.fraction", OPEN_UNIT, "0.2"),
    Rule("validation.seed", SEED),
    Rule("validation.allow_test_selection", BOOLEAN),
    Rule("eval.name", TEXT, "default"),
    Rule("eval.seed", SEED),
    Rule("eval.mia.variant", choice(MIA_VARIANTS)),
    Rule("eval.mia.variants", list_of(choice(MIA_VARIANTS)), "[confidence,entropy]"),
    Rule("eval.mia.max_samples", optional(POSITIVE_INT), "null"),
    Rule("eval.mia.combined", BOOLEAN),
    Rule("eval.mia.combined_samples", POSITIVE_INT, "2000"),
    Rule("eval.entanglement.p", number(1, 10), "2"),
    Rule("eval.entanglement.num_itermax", integer(1000), "1000000"),
    Rule("eval.landscape.radius", number(0, 100, low_open=True), "1.0"),
    Rule("eval.landscape.steps_1d", integer(3), "11"),
    Rule("eval.landscape.steps_2d", integer(3), "9"),
    Rule("eval.landscape.plots", BOOLEAN),
    Rule("eval.hessian.iterations", POSITIVE_INT, "30"),
    Rule("eval.hessian.tol", number(0, 1, low_open=True), "0.01"),
    Rule("eval.relearn.retain_samples", COUNT, "256"),
    Rule("eval.relearn.lr", POSITIVE, "0.01"),
    Rule("eval.relearn.momentum", number(0, 1, high_open=True), "0.9"),
    Rule("eval.relearn.batch_size", POSITIVE_INT, "32"),
    Rule("eval.relearn.max_steps", POSITIVE_INT, "500"),
    Rule("eval.relearn.tolerance", number(0, 1, high_open=True), "0.0"),
    Rule("eval.klom.models", integer(2), "100"),
    Rule("eval.klom.bins", integer(2), "20"),
    Rule("eval.klom.clip", number(0, 1e6, low_open=True), "100.0"),
    Rule("eval.klom.percentile", number(0, 100), "95.0"),
    Rule("eval.*", NODE),
    Rule("eval.*.enabled", BOOLEAN),
    Rule("eval.*.max_samples", POSITIVE_INT, "500"),
    Rule("eval.*.sets", list_of(choice(SETS)), "[test,forget]"),
    # the per-example attacks on the same ensembles (families/ulira.py, forgetting_quality.py)
    Rule("eval.ulira.models", integer(4), "8"),
    Rule("eval.ulira.folds", optional(integer(2)), "null"),
    Rule("eval.ulira.original", BOOLEAN),
    Rule("eval.forgetting_quality.models", integer(3), "8"),
    Rule("eval.forgetting_quality.original", BOOLEAN),
)
#: keys inside an instantiated node that the pipeline reads itself (not the target's arguments)
READ_BY_PIPELINE = (*(f"dataset.{key}" for key in LABEL_NOISE_KEYS), "eval.*.enabled")

#: the table with the most specific patterns first (fewest ``*``), in written order otherwise
_BY_PRIORITY = sorted(TABLE, key=lambda rule: rule.pattern.count("*"))
#: the top-level keys of the config (Hydra's own ``hydra`` node is not the job's)
TOP_LEVEL = frozenset(rule.pattern.split(".")[0] for rule in TABLE) - {"*"}


def _matches(pattern: str, key: str, prefix: bool = False) -> bool:
    """Whether ``key`` matches ``pattern`` segment by segment (``prefix``: whether ``key`` is
    a node above some key of ``pattern``)."""
    parts, segments = pattern.split("."), key.split(".")
    fits = len(parts) > len(segments) if prefix else len(parts) == len(segments)
    return fits and all(fnmatchcase(s, p) for s, p in zip(segments, parts))


def rule_for(key: str) -> Rule | None:
    """The rule that governs ``key`` (dotted), if the table has one."""
    return next((r for r in _BY_PRIORITY if _matches(r.pattern, key)), None)


def declares_below(key: str) -> bool:
    """Whether the table names keys below ``key`` (``pretrain`` → ``pretrain.lr``)."""
    return any(_matches(r.pattern, key, prefix=True) for r in TABLE)


def declared_children(path: str) -> list[str]:
    """The key names the table declares directly below ``path`` (``""``: the top level)."""
    depth = len(path.split(".")) if path else 0
    names = {
        r.pattern.split(".")[depth]
        for r in TABLE
        if (not path or _matches(r.pattern, path, prefix=True))
        and "*" not in r.pattern.split(".")[depth]
    }
    return sorted(names)


# ------------------------------------------------------------------------------ signatures


def accepted_keywords(obj: Any) -> frozenset[str] | None:
    """The keyword arguments ``obj`` (a class or function) takes, or ``None`` when it takes any.

    A class's ``__init__`` that passes ``**kwargs`` on to ``super()`` takes its own names and
    those of the next ``__init__`` up the MRO, until one without ``**kwargs``: that is how the
    methods chain to :class:`~unlearning.methods.base.UnlearningMethod`.
    """
    if isinstance(obj, type):
        owners = [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__]
    else:
        owners = [obj]
    names: set[str] = set()
    for function in owners:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
        names |= {p.name for p in parameters if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return frozenset(names - {"self"})
    return None


# ------------------------------------------------------------------------------ the walk


def check_keys(cfg: DictConfig) -> None:
    """Apply the table to every key of ``cfg``: each value has its rule's kind, each
    ``_target_`` imports, and each key is declared or taken by its node's ``_target_``.
    Raises :class:`ConfigError` for the first key that is not so (in config order)."""
    _walk(cfg, "")


def _value(node: DictConfig, key: str, full: str) -> Any:
    """``node[key]`` resolved; an interpolation that does not resolve is a config error."""
    try:
        value = node[key]
    except OmegaConfBaseException as error:
        raw = OmegaConf.to_container(node, resolve=False).get(key)
        reason = str(error).splitlines()[0]
        raise ConfigError(full, raw, f"must be set to a value that resolves ({reason})") from None
    return value


def _walk(node: DictConfig, path: str) -> None:
    """Check the keys of ``node`` (at dotted ``path``) and walk into the nodes below it that
    the table declares or that carry a ``_target_``; argument values (the W&B run config)
    are left alone."""
    accepted: frozenset[str] | None = frozenset()
    owner = None
    if "_target_" in node:
        key = f"{path}._target_"
        rule = rule_for(key)
        owner = _value(node, "_target_", key)
        require(key, owner, rule.kind if rule else HYDRA_KEYS["_target_"])
        accepted = accepted_keywords(locate(owner))
    for name in node:
        key = f"{path}.{name}" if path else name
        if not path and name == "hydra":
            continue
        value = _value(node, name, key)
        rule = rule_for(key)
        is_argument = owner is not None and (accepted is None or name in accepted)
        if owner is not None and name not in HYDRA_KEYS and not is_argument:
            if not any(_matches(p, key) for p in READ_BY_PIPELINE):
                raise _unknown(key, value, path, owner, accepted)
        if name in HYDRA_KEYS:
            if name != "_target_":
                require(key, value, HYDRA_KEYS[name])
            continue
        if rule is not None:
            require(key, value, rule.kind, rule.example)
        elif not (is_argument or declares_below(key)):
            raise _unknown(key, value, path, owner, accepted)
        if isinstance(value, DictConfig) and (
            rule is not None or declares_below(key) or "_target_" in value
        ):
            _walk(value, key)


def _unknown(
    key: str, value: Any, path: str, owner: str | None, accepted: frozenset[str] | None
) -> ConfigError:
    """The error for a key that no rule declares and no ``_target_`` takes, listing what the
    node does know (its target's arguments, else the table's keys) or the closest names."""
    if owner is not None:
        depth = len(path.split(".")) + 1
        own = {
            pattern.split(".")[-1]
            for pattern in READ_BY_PIPELINE
            if len(pattern.split(".")) == depth and _matches(pattern, path, prefix=True)
        }
        known = sorted(set(accepted or ()) | own)
    else:
        known = declared_children(path)
    node = owner or path or "the config"
    close = difflib.get_close_matches(key.split(".")[-1], known, n=3)
    if close:
        allowed = f"a key {node} knows (did you mean {' or '.join(close)}?)"
    elif len(known) > 30:
        allowed = f"a key {node} knows"
    else:
        allowed = f"one of the keys {node} knows: {', '.join(known)}"
    return reject(key, value, allowed, "fix its spelling, or drop the override that adds it")
