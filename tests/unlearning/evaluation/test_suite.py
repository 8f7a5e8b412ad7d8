"""The evaluation suite (issue 6): the presets and the families' needs, the orchestration on tiny
data (keys, notes for evaluations that cannot run, plots, KLoM on the ensembles the pipeline
builds, the cached oracle ensemble) and one pipeline run that writes the metrics into
results.json. The eval group's value checks live in the validation layer (tests/unlearning/
config)."""

import ast
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unlearning.evaluation.fakes import TensorSets
from unlearning.evaluation.families.landscape import LossLandscape
from unlearning.evaluation.family import (
    EVAL_SETS,
    MODELS,
    Ensemble,
    EnsembleNeed,
    SampleNeed,
)
from unlearning.evaluation.metrics.mia import VARIANTS
from unlearning.evaluation.store import OutputStore
from unlearning.evaluation.suite import Suite, run_evaluations
from unlearning.models import SmallCNN
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.stages.ensembles import EnsembleBuilder

CHEAP_KEYS = {
    *(f"{pre}{k}" for pre in ("", "oracle/", "original/") for k in (
        "mia", "mia_efficacy", "mia_combined",
        *(f"mia_efficacy/{v}" for v in VARIANTS),
    )),
    "avg_gap",
    *(f"{pre}{k}" for pre in ("", "original/") for k in (
        "e_var_all", "e_var_cls", "e_var_all_raw", "e_var_cls_raw", "e_wp_all", "e_wp_cls",
        "basin_ratio/test", "basin_ratio/forget", "hessian_top/retain", "hessian_top/forget",
    )),
    "relearn/steps", "oracle/relearn/steps", "relearn/ratio",
    "time/mia", "time/entanglement", "time/landscape", "time/hessian", "time/relearn",
}  # fmt: skip
# the default suite (named, so the test does not depend on the fixtures' default) at small sizes
SMALL = [
    "eval=default",
    "eval.landscape.steps_1d=5",
    "eval.landscape.steps_2d=5",
    "eval.landscape.max_samples=64",
    "eval.hessian.max_samples=64",
    "eval.hessian.iterations=5",
    "eval.entanglement.max_samples=50",
]


class TinyData(TensorSets):
    """Stands in for UnlearningDataModule: fixed tensors per set, the same loader interface."""

    def __init__(self, forget_class: int | None = None, n: int = 120) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2 * n, 1, 8, 8, generator=gen)
        y = torch.arange(2 * n) % 10
        if forget_class is None:
            f = torch.arange(n) % 6 == 0
        else:  # class forgetting: F is one whole class, R and D_test have none of it
            f = y[:n] == forget_class
            keep = y[n:] != forget_class
        super().__init__(
            {
                "retain": (x[:n][~f], y[:n][~f]),
                "forget": (x[:n][f], y[:n][f]),
                "test": (x[n:], y[n:]) if forget_class is None else (x[n:][keep], y[n:][keep]),
            }
        )


def _models() -> dict[str, SmallCNN]:
    out = {}
    for seed, name in enumerate(("original", "oracle", "unlearned")):
        torch.manual_seed(seed)
        out[name] = SmallCNN(10).eval()
    return out


ACC = {"ua": 0.1, "ra": 0.9, "ta": 0.8, "oracle/acc_forget": 0.8, "oracle/acc_retain": 0.9,
       "oracle/acc_test": 0.8}  # fmt: skip


def test_eval_presets_switch_the_families_in_config_order(config):
    order = ["mia", "entanglement", "landscape", "hessian", "relearn", "klom", "features"]
    presets = ("default", "full", "none")
    default, full, none = (Suite.from_config(config(f"eval={p}")) for p in presets)
    assert [name for name, _ in default.families] == order[:5]
    assert [name for name, _ in full.families] == order
    assert none.families == ()
    landscape = dict(full.families)["landscape"]
    assert isinstance(landscape, LossLandscape) and landscape.plots and landscape.steps_2d == 21
    assert Suite.from_config(config("eval=default", "eval.mia.enabled=false")).families[0][0] == (
        "entanglement"
    )


def test_the_suite_merges_the_needs_the_families_declare(config):
    """MIA reads logits of every pair, entanglement the embeddings of f_A and f_U on R and F,
    the landscape and Hessian samples; with KLoM the two ensembles, oracles first."""
    needs = Suite.from_config(config("eval=default")).needs()
    pairs = needs.output_map()
    assert set(pairs) == {(m, s) for m in MODELS for s in EVAL_SETS}
    assert {k for k, embeds in pairs.items() if embeds} == {
        (m, s) for m in ("original", "unlearned") for s in ("retain", "forget")
    }
    assert needs.samples == {
        *(SampleNeed(s, 256) for s in ("test", "forget", "retain")),
        SampleNeed("forget", 500),  # relearn time's F sample
    }
    assert needs.ensembles == ()
    klom_only = Suite.from_config(
        config("eval=none", "eval.klom.enabled=true", "eval.klom.models=3")
    ).needs()
    assert set(klom_only.output_map()) == {("unlearned", s) for s in EVAL_SETS}
    assert klom_only.ensembles == (EnsembleNeed("oracle", 3), EnsembleNeed("unlearned", 3))


def test_default_suite_reports_every_cheap_metric(config, tmp_path):
    cfg = config(*SMALL)
    result = run_evaluations(cfg, _models(), TinyData(), tmp_path, dict(ACC))
    assert set(result.metrics) == CHEAP_KEYS
    finite = {k for k, v in result.metrics.items() if math.isfinite(v)}
    # untrained stand-in models: the oracle is at the original model's F accuracy already
    assert finite == CHEAP_KEYS - {"relearn/ratio"}, result.notes
    assert "no relearning" in result.notes["relearn/ratio"]
    m = result.metrics
    assert m["mia"] + m["mia_efficacy"] == pytest.approx(1.0)
    assert 0.0 <= m["avg_gap"] <= 1.0 and 0.0 <= m["basin_ratio/test"] <= 1.0
    rescaled = [m[f"{p}e_var_{k}"] for p in ("", "original/") for k in ("all", "cls")]
    assert min(rescaled) == 0.0 and max(rescaled) == 1.0  # rescaled over the four raw values
    assert not list(tmp_path.glob("*.png"))  # plots are off by default


def test_an_evaluation_that_cannot_run_says_so_instead_of_crashing(config, tmp_path):
    """Class forgetting: R has no sample of F's class, so class-wise entanglement is undefined."""
    cfg = config(*SMALL, "eval.landscape.enabled=false", "eval.hessian.enabled=false")
    result = run_evaluations(cfg, _models(), TinyData(forget_class=3), tmp_path, dict(ACC))
    for key in ("e_var_cls", "e_wp_cls", "original/e_wp_cls", "e_var_cls_raw"):
        assert math.isnan(result.metrics[key])
        assert "no class has samples in both R and F" in result.notes[key]
    assert math.isfinite(result.metrics["e_wp_all"]) and math.isfinite(result.metrics["mia"])


def test_a_diverged_unlearned_model_does_not_crash_the_suite(config, tmp_path):
    models = _models()
    with torch.no_grad():
        for p in models["unlearned"].parameters():
            p.fill_(float("nan"))
    result = run_evaluations(config(*SMALL), models, TinyData(), tmp_path, dict(ACC))
    assert math.isnan(result.metrics["mia"]) and "NaN" in result.notes["mia"]
    assert math.isnan(result.metrics["avg_gap"]) and "avg_gap" in result.notes
    assert math.isfinite(result.metrics["original/mia"])
    assert math.isnan(result.metrics["basin_ratio/test"])
    assert math.isfinite(result.metrics["original/basin_ratio/test"])
    assert math.isfinite(result.metrics["original/hessian_top/retain"])


def test_disabled_evaluations_do_not_run(config, tmp_path):
    result = run_evaluations(config("eval=none"), _models(), TinyData(), tmp_path, dict(ACC))
    assert result.metrics == {} and result.notes == {}


def _builder(cfg, store, cache, unlearn=None, from_scratch=False) -> EnsembleBuilder:
    return EnsembleBuilder(
        cfg,
        store,
        cache,
        {"test": "klom"},
        unlearn=unlearn or (lambda c, d: pytest.fail("no unlearning run expected")),
        from_scratch=from_scratch,
        device=torch.device("cpu"),
    )


def test_full_suite_writes_the_plots_and_klom_reads_the_pipelines_ensembles(config, tmp_path):
    cfg = config(
        *SMALL,
        "eval=full",
        "eval.klom.models=2",
        "eval.features.max_samples=40",
        "pretrain.epochs=1",
    )
    models = _models()
    calls = []

    def unlearn(seeded_cfg, work_dir):
        calls.append(seeded_cfg.seed)
        return copy.deepcopy(models["unlearned"])

    suite = Suite.from_config(cfg)
    store = OutputStore(models, TinyData(), needs=suite.needs())
    cache = StageCache(tmp_path / "cache")
    ensembles = _builder(cfg, store, cache, unlearn).build_all(suite.needs().ensembles)
    assert calls == [cfg.seed + 1]  # the job's own model is member 0
    assert cache.has("klom_oracles", {"test": "klom", "models": 2})
    out = tmp_path / "out"
    out.mkdir()
    result = suite.run(store, out, dict(ACC), ensembles)
    for s in ("forget", "retain", "test"):
        assert result.metrics[f"klom/{s}"] >= 0.0
    assert {p.name for p in out.glob("*.png")} == {
        "landscape_test.png",
        "landscape_forget.png",
        "features.png",
    }
    built = sum(e.seconds for e in ensembles.values())
    assert result.metrics["time/klom"] >= built > 0  # the ensembles' build time counts
    assert result.metrics["time/features"] > 0


def test_klom_is_zero_for_identical_ensembles_and_skips_without_them(config, tmp_path):
    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.evaluation.metrics.klom import margins

    cfg = config("eval=none", "eval.klom.enabled=true", "eval.klom.models=2")
    models, data = _models(), TinyData()
    parts = {}
    for s in EVAL_SETS:
        out = model_outputs(models["unlearned"], data.eval_dataloader(s))
        parts[s] = np.stack([margins(out.logits, out.labels)] * 2)
    same = Ensemble(parts)
    ensembles = {EnsembleNeed("oracle", 2): same, EnsembleNeed("unlearned", 2): same}
    result = run_evaluations(cfg, models, data, tmp_path, {}, ensembles=ensembles)
    assert all(result.metrics[f"klom/{s}"] == 0.0 for s in EVAL_SETS)
    shifted = {EnsembleNeed("oracle", 2): Ensemble({s: v + 50 for s, v in parts.items()}),
               EnsembleNeed("unlearned", 2): same}  # fmt: skip
    result = run_evaluations(cfg, models, data, tmp_path, {}, ensembles=shifted)
    assert all(result.metrics[f"klom/{s}"] > 1.0 for s in EVAL_SETS)
    result = run_evaluations(cfg, models, data, tmp_path, {})
    assert all(math.isnan(result.metrics[f"klom/{s}"]) for s in EVAL_SETS)
    assert "ensembles" in result.notes["klom/forget"]


def test_retrain_serves_the_oracle_ensemble_as_the_unlearned_one(config, tmp_path):
    cfg = config("eval=none", "eval.klom.enabled=true", "eval.klom.models=2", "pretrain.epochs=1")
    suite = Suite.from_config(cfg)
    store = OutputStore(_models(), TinyData(), needs=suite.needs())
    builder = _builder(cfg, store, StageCache(tmp_path / "cache"), from_scratch=True)
    ensembles = builder.build_all(suite.needs().ensembles)
    oracle, unlearned = ensembles.values()
    assert unlearned.margins is oracle.margins and "retrain" in unlearned.note
    result = suite.run(store, tmp_path, {}, ensembles)
    assert all(result.metrics[f"klom/{s}"] == 0.0 for s in EVAL_SETS)
    assert "retrain" in result.notes["klom/forget"]


def test_oracle_ensemble_is_the_same_trained_vectorised_or_sequentially(config, tmp_path):
    margins = {}
    for strategy in ("vmap", "sequential"):
        cfg = config(*SMALL, "pretrain.epochs=2")
        store = OutputStore(_models(), TinyData())
        builder = _builder(cfg, store, StageCache(tmp_path / strategy))
        margins[strategy] = builder.build(EnsembleNeed("oracle", 3, strategy)).margins
        meta = StageCache.meta(StageCache(tmp_path / strategy).path("klom_oracles", {
            "test": "klom", "models": 3}))  # fmt: skip
        assert meta["strategy"] == strategy and meta["models"] == 3
    for s in ("retain", "forget", "test"):
        assert margins["vmap"][s].shape == (3, len(TinyData().sets[s][1]))
        np.testing.assert_allclose(margins["vmap"][s], margins["sequential"][s], atol=1e-5)
        assert np.ptp(margins["vmap"][s], axis=0).max() > 1e-3  # members differ (own seeds)


def test_pipeline_writes_eval_metrics_and_notes_to_results_json(config):
    from unlearning.pipeline.run import run

    cfg = config("method=finetune", "method.epochs=1", *SMALL)
    payload = run(cfg)
    on_disk = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert CHEAP_KEYS <= set(on_disk["metrics"])
    assert isinstance(on_disk["notes"], dict) and on_disk["notes"] == payload["notes"]
    assert on_disk["metrics"]["mia"] == payload["metrics"]["mia"]


def test_the_pipeline_builds_the_oracle_ensemble_as_a_cached_stage_before_the_suite(
    config, monkeypatch
):
    """KLoM only reads margins: every member is trained before the family runs, and a second
    job with the same stage keys reads the ``klom_oracles`` entry instead of training."""
    from unlearning.evaluation.families.klom import KLoM
    from unlearning.pipeline import run as pipeline
    from unlearning.pipeline.stages import ensembles

    events: list[str] = []
    train, klom_run = ensembles.train_members, KLoM.run

    def counted_train(*args, **kwargs):
        events.append("train")
        return train(*args, **kwargs)

    def logged_run(self, ctx, result):
        events.append("klom")
        return klom_run(self, ctx, result)

    monkeypatch.setattr(ensembles, "train_members", counted_train)
    monkeypatch.setattr(KLoM, "run", logged_run)
    overrides = ["method=finetune", "method.epochs=1", "pretrain.epochs=1", "eval=none"]
    cfg = config(*overrides, "eval.klom.enabled=true", "eval.klom.models=2")
    first = pipeline.run(cfg)["metrics"]
    assert events == ["train", "klom"]
    key = pipeline.stage_configs(cfg)["klom_oracles"]
    assert StageCache(cfg.paths.cache_dir).has("klom_oracles", key)
    events.clear()
    second = pipeline.run(cfg)["metrics"]
    assert events == ["klom"]  # the cached ensemble: nothing trained
    for s in EVAL_SETS:
        assert math.isfinite(first[f"klom/{s}"]) and first[f"klom/{s}"] == second[f"klom/{s}"]


def test_the_evaluation_imports_neither_the_pipeline_nor_a_trainer():
    """Families read models, outputs and margins; what trains models (the stages, the
    memorization trainer) lives on the pipeline's side of the import arrow."""
    root = Path(__file__).resolve().parents[3] / "unlearning" / "evaluation"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(root)}: {n}" for n in names]
    assert any("unlearning.evaluation.metrics" in f for f in found)  # the walk sees imports
    banned = ("unlearning.pipeline", "unlearning.memorization", "lightning")
    assert [f for f in found if f.split(": ")[1].startswith(banned)] == []


@pytest.mark.slow
def test_full_eval_on_digits_adds_klom_and_plots(config):
    from unlearning.pipeline.run import run

    cfg = config("method=neggrad", "eval=full", "eval.klom.models=3")
    metrics = run(cfg)["metrics"]
    assert all(math.isfinite(metrics[f"klom/{s}"]) for s in ("forget", "retain", "test"))
    pngs = {p.name for p in Path(cfg.paths.output_dir).glob("*.png")}
    assert {"landscape_test.png", "landscape_forget.png", "features.png"} <= pngs
