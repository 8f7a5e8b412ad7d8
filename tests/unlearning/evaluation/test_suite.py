"""The evaluation suite (issue 6): the presets and the families' needs, the orchestration on tiny
data (keys, notes for evaluations that cannot run, plots, KLoM on the ensembles the pipeline
builds, its ensembles built before the suite and cached) and one pipeline run that writes the
metrics into results.json. The eval group's value checks live in the validation layer
(tests/unlearning/config); the ensemble engine's own tests are tests/unlearning/pipeline/
test_ensembles.py."""

import ast
import importlib
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

CHEAP_KEYS = {
    *(f"{pre}{k}" for pre in ("", "oracle/", "original/") for k in (
        "mia", "mia_efficacy", "mia_combined",
        *(f"mia_efficacy/{v}" for v in VARIANTS),
    )),
    "avg_gap", "mia_efficacy_val", "oracle/mia_efficacy_val", "avg_gap_val",
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


ACC = {"ua": 0.1, "ra": 0.9, "ta": 0.8, "ta_val": 0.8, "oracle/acc_forget": 0.8,
       "oracle/acc_retain": 0.9, "oracle/acc_test": 0.8, "oracle/acc_val": 0.8}  # fmt: skip


def test_eval_presets_switch_the_families_in_config_order(config):
    order = ["mia", "entanglement", "landscape", "hessian", "relearn", "klom", "features",
             "ulira", "forgetting_quality"]  # fmt: skip
    presets = ("default", "full", "none", "klom")
    default, full, none, klom = (Suite.from_config(config(f"eval={p}")) for p in presets)
    assert [name for name, _ in default.families] == order[:5]
    assert [name for name, _ in full.families] == order
    assert none.families == ()
    # eval=klom: 002 App. M's protocol, N = 100, on top of the cheap families
    assert [name for name, _ in klom.families] == [*order[:6], *order[7:]]
    assert dict(klom.families)["klom"].models == 100 and dict(full.families)["klom"].models == 8
    landscape = dict(full.families)["landscape"]
    assert isinstance(landscape, LossLandscape) and landscape.plots and landscape.steps_2d == 21
    assert Suite.from_config(config("eval=default", "eval.mia.enabled=false")).families[0][0] == (
        "entanglement"
    )


def test_the_suite_merges_the_needs_the_families_declare(config):
    """MIA reads logits of every pair, entanglement the embeddings of f_A and f_U on R and F,
    the landscape and Hessian samples; with KLoM the three ensembles, oracles first, and the
    outputs of the three models (each ensemble's member 0)."""
    needs = Suite.from_config(config("eval=default")).needs()
    pairs = needs.output_map()
    assert set(pairs) == {(m, s) for m in MODELS for s in EVAL_SETS} | {
        (m, "val")
        for m in ("unlearned", "oracle")  # mia_efficacy_val
    }
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
    assert set(klom_only.output_map()) == {(m, s) for m in MODELS for s in EVAL_SETS}
    assert klom_only.ensembles == tuple(
        EnsembleNeed(kind, 3) for kind in ("oracle", "original", "unlearned")
    )


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


def _ensembles(models, data, n: int = 2, shift: float = 0.0) -> dict[EnsembleNeed, Ensemble]:
    """``n``-member ensembles of every kind made of the tiny models' own margins (each member
    the same model); the oracle ensemble's margins shifted by ``shift``."""
    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.evaluation.metrics.klom import margins

    ensembles = {}
    for kind, model in (("oracle", "oracle"), ("original", "original"), ("unlearned", "oracle")):
        rows = {}
        for s in EVAL_SETS:
            out = model_outputs(models[model], data.eval_dataloader(s), embeddings=False)
            rows[s] = np.stack([margins(out.logits, out.labels)] * n)
            rows[s] += shift if kind == "oracle" else 0.0
        ensembles[EnsembleNeed(kind, n)] = Ensemble(rows, seconds=0.5)
    return ensembles


def test_full_suite_writes_the_plots_and_klom_reads_the_pipelines_ensembles(config, tmp_path):
    cfg = config(
        *SMALL,
        "eval=full",
        "eval.klom.models=2",
        "eval.features.max_samples=40",
        "eval.ulira.enabled=false",  # the attacks need N >= 4; their own tests run them
        "eval.forgetting_quality.enabled=false",
    )
    models, data = _models(), TinyData()
    suite = Suite.from_config(cfg)
    store = OutputStore(models, data, needs=suite.needs())
    ensembles = _ensembles(models, data)
    assert set(ensembles) == set(suite.needs().ensembles)
    out = tmp_path / "out"
    out.mkdir()
    result = suite.run(store, out, dict(ACC), ensembles)
    for s in ("forget", "retain", "test"):
        assert result.metrics[f"klom/{s}"] >= 0.0 and result.metrics[f"klom_original/{s}"] > 0.0
    assert result.metrics["klom/models"] == 2.0
    assert {p.name for p in out.glob("*.png")} == {
        "landscape_test.png",
        "landscape_forget.png",
        "features.png",
    }
    assert result.metrics["time/klom"] >= 1.5  # the three ensembles' build time counts
    assert result.metrics["time/features"] > 0


def test_klom_is_zero_for_identical_ensembles_notes_a_small_n_and_skips_without_them(
    config, tmp_path
):
    cfg = config("eval=none", "eval.klom.enabled=true", "eval.klom.models=2")
    models, data = _models(), TinyData()
    # unlearned members = oracle members: KLoM 0; the pretrained ones differ from the oracles
    result = run_evaluations(cfg, models, data, tmp_path, {}, ensembles=_ensembles(models, data))
    assert all(result.metrics[f"klom/{s}"] == 0.0 for s in EVAL_SETS)
    assert all(result.metrics[f"klom_original/{s}"] > 1.0 for s in EVAL_SETS)
    assert "N = 2" in result.notes["klom/models"] and "80" in result.notes["klom/models"]
    shifted = _ensembles(models, data, shift=50.0)
    result = run_evaluations(cfg, models, data, tmp_path, {}, ensembles=shifted)
    assert all(result.metrics[f"klom/{s}"] > 1.0 for s in EVAL_SETS)
    result = run_evaluations(cfg, models, data, tmp_path, {})
    assert all(math.isnan(result.metrics[f"klom/{s}"]) for s in EVAL_SETS)
    assert all(math.isnan(result.metrics[f"klom_original/{s}"]) for s in EVAL_SETS)
    assert "ensembles" in result.notes["klom/forget"]


def test_klom_notes_nothing_about_n_from_80_models_on(config, tmp_path):
    cfg = config("eval=none", "eval.klom.enabled=true", "eval.klom.models=80")
    models, data = _models(), TinyData()
    ensembles = _ensembles(models, data, 80)
    result = run_evaluations(cfg, models, data, tmp_path, {}, ensembles=ensembles)
    assert result.metrics["klom/models"] == 80.0 and "klom/models" not in result.notes


def test_pipeline_writes_eval_metrics_and_notes_to_results_json(config):
    from unlearning.pipeline.run import run

    cfg = config("method=finetune", "method.epochs=1", *SMALL)
    payload = run(cfg)
    on_disk = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert CHEAP_KEYS <= set(on_disk["metrics"])
    assert isinstance(on_disk["notes"], dict) and on_disk["notes"] == payload["notes"]
    assert on_disk["metrics"]["mia"] == payload["metrics"]["mia"]


def test_the_pipeline_builds_the_ensembles_as_cached_stages_before_the_suite(
    config, monkeypatch, tmp_path
):
    """KLoM only reads margins: every member is trained (by the training stages) before the
    family runs, and a second job with the same keys trains nothing: its pretraining, oracle
    and unlearned members are entries of the shared stage cache."""
    from unlearning.evaluation.families.klom import KLoM
    from unlearning.pipeline import run as pipeline
    from unlearning.pipeline.stages import training

    # the module, not the function the package exports under the same name
    unlearn = importlib.import_module("unlearning.pipeline.stages.unlearn")

    events: list[str] = []
    train, klom_run = training.run_training_stage, KLoM.run

    def counted_train(cfg, source, forget, stage, work_dir):
        events.append(f"{stage.name}:{cfg.pretrain.seed}")
        return train(cfg, source, forget, stage, work_dir)

    def logged_run(self, ctx, result):
        events.append("klom")
        return klom_run(self, ctx, result)

    for module in (training, unlearn):
        monkeypatch.setattr(module, "run_training_stage", counted_train)
    member_trainer = pipeline.member_trainer

    def counted_members(cfg):
        """The members' trainer, counted (the fast path bypasses run_training_stage)."""
        trainer = member_trainer(cfg)
        if trainer is training.train_from_scratch:
            return trainer

        def counted(member, source, forget, train_set, work_dir):
            events.append(
                f"{'pretrain' if train_set == 'train' else 'oracle'}:{member.pretrain.seed}"
            )
            return trainer(member, source, forget, train_set, work_dir)

        return counted

    monkeypatch.setattr(pipeline, "member_trainer", counted_members)
    monkeypatch.setattr(KLoM, "run", logged_run)
    overrides = ["method=finetune", "method.epochs=1", "pretrain.epochs=1", "eval=none"]
    # a cache of its own: no other test's member may be found in it
    cfg = config(*overrides, "eval.klom.enabled=true", "eval.klom.models=2", cache=tmp_path / "c")
    first = pipeline.run(cfg)["metrics"]
    assert events[-1] == "klom"
    # member 1 of each kind (seed 1), after the job's own stages; f_A^1 before its unlearning
    assert events[-4:-1] == ["oracle:1", "pretrain:1", "unlearn:1"]
    events.clear()
    second = pipeline.run(cfg)["metrics"]
    assert events == ["klom"]  # every member cached: nothing trained
    for key in (f"{name}/{s}" for name in ("klom", "klom_original") for s in EVAL_SETS):
        assert math.isfinite(first[key]) and first[key] == second[key]


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
