"""The evaluation suite (issue 6): config groups, start-up checks, the orchestration on tiny data
(keys, notes for evaluations that cannot run, plots, the cached KLoM oracle ensemble) and one
pipeline run that writes the metrics into results.json."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from unlearning.config.errors import ConfigError
from unlearning.config.validation import validate_config
from unlearning.evaluation.suite import EVALS, check_eval_config, run_evaluations
from unlearning.models import SmallCNN
from unlearning.pipeline.cache import StageCache

CHEAP_KEYS = {
    "mia", "mia_efficacy", "oracle/mia", "oracle/mia_efficacy", "original/mia",
    "original/mia_efficacy", "avg_gap",
    *(f"{pre}{k}" for pre in ("", "original/") for k in (
        "e_var_all", "e_var_cls", "e_var_all_raw", "e_var_cls_raw", "e_wp_all", "e_wp_cls",
        "basin_ratio/test", "basin_ratio/forget", "hessian_top/retain", "hessian_top/forget",
    )),
    "time/mia", "time/entanglement", "time/landscape", "time/hessian",
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


class TinyData:
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
        self.sets = {
            "retain": (x[:n][~f], y[:n][~f]),
            "forget": (x[:n][f], y[:n][f]),
            "test": (x[n:], y[n:]) if forget_class is None else (x[n:][keep], y[n:][keep]),
        }

    def set_size(self, name: str) -> int:
        return len(self.sets[name][1])

    def eval_dataloader(self, name: str, batch_size: int | None = None, positions=None):
        x, y = self.sets[name]
        if positions is not None:
            x, y = x[positions], y[positions]
        return DataLoader(TensorDataset(x, y), batch_size=batch_size or 64)


def _models() -> dict[str, SmallCNN]:
    out = {}
    for seed, name in enumerate(("original", "oracle", "unlearned")):
        torch.manual_seed(seed)
        out[name] = SmallCNN(10).eval()
    return out


ACC = {"ua": 0.1, "ra": 0.9, "ta": 0.8, "oracle/acc_forget": 0.8, "oracle/acc_retain": 0.9,
       "oracle/acc_test": 0.8}  # fmt: skip


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.klom.models=1", "eval.klom.models"),
        ("eval.mia.max_samples=0", "eval.mia.max_samples"),
        ("eval.landscape.sets=[test,validation]", "eval.landscape.sets"),
        ("eval.landscape.steps_2d=2", "eval.landscape.steps_2d"),
        ("eval.landscape.radius=0", "eval.landscape.radius"),
        ("eval.hessian.tol=-1", "eval.hessian.tol"),
        ("eval.entanglement.p=0.5", "eval.entanglement.p"),
        ("eval.klom.strategy=processes", "eval.klom.strategy"),
        ("eval.klom.percentile=120", "eval.klom.percentile"),
        ("eval.features.enabled=maybe", "eval.features.enabled"),
    ],
)
def test_bad_eval_settings_raise_config_error_naming_the_key(config, override, key):
    with pytest.raises(ConfigError) as info:
        check_eval_config(config(override))
    assert info.value.key == key and key in str(info.value)


def test_validate_config_checks_the_eval_group(config):
    with pytest.raises(ConfigError, match=r"eval\.klom\.models"):
        validate_config(config("eval.klom.models=0"))


def test_eval_presets_switch_the_families(config):
    default, full, none = config("eval=default"), config("eval=full"), config("eval=none")
    assert [default.eval[n].enabled for n in EVALS] == [True, True, True, True, False, False]
    assert all(full.eval[n].enabled for n in EVALS) and full.eval.landscape.plots
    assert not any(none.eval[n].enabled for n in EVALS)
    for cfg in (default, full, none):
        check_eval_config(cfg)


def test_default_suite_reports_every_cheap_metric(config, tmp_path):
    cfg = config(*SMALL)
    result = run_evaluations(cfg, _models(), TinyData(), tmp_path, dict(ACC))
    assert set(result.metrics) == CHEAP_KEYS
    finite = {k for k, v in result.metrics.items() if math.isfinite(v)}
    assert finite == CHEAP_KEYS, result.notes
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


def test_full_suite_writes_the_plots_and_klom_uses_a_cached_oracle_ensemble(config, tmp_path):
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

    cache = StageCache(tmp_path / "cache")
    key = {"test": "klom", "models": 2}
    out = tmp_path / "out"
    out.mkdir()
    result = run_evaluations(
        cfg, models, TinyData(), out, dict(ACC), unlearn=unlearn, cache=cache, klom_key=key
    )
    assert calls == [cfg.seed + 1]  # the job's own model is member 0
    for s in ("forget", "retain", "test"):
        assert result.metrics[f"klom/{s}"] >= 0.0
    assert cache.has("klom_oracles", key)
    assert {p.name for p in out.glob("*.png")} == {
        "landscape_test.png",
        "landscape_forget.png",
        "features.png",
    }
    assert result.metrics["time/klom"] > 0 and result.metrics["time/features"] > 0


def test_klom_is_zero_for_identical_ensembles_served_from_the_cache(config, tmp_path):
    """Pre-seed the oracle ensemble's cache entry with the unlearned models' own margins."""
    from unlearning.evaluation.metrics.features import model_outputs
    from unlearning.evaluation.metrics.klom import margins

    cfg = config(*SMALL, "eval=none", "eval.klom.enabled=true", "eval.klom.models=2")
    models, data = _models(), TinyData()
    parts = {}
    for s in ("retain", "forget", "test"):
        out = model_outputs(models["unlearned"], data.eval_dataloader(s))
        parts[s] = np.stack([margins(out.logits, out.labels)] * 2)
    cache = StageCache(tmp_path / "cache")
    key = {"identical": True}
    cache.get_or_compute("klom_oracles", key, lambda d: np.savez(d / "margins.npz", **parts))
    result = run_evaluations(
        cfg,
        models,
        data,
        tmp_path,
        {},
        unlearn=lambda c, d: copy.deepcopy(models["unlearned"]),
        cache=cache,
        klom_key=key,
    )
    assert all(result.metrics[f"klom/{s}"] == 0.0 for s in ("retain", "forget", "test"))


def test_oracle_ensemble_is_the_same_trained_vectorised_or_sequentially(config, tmp_path):
    from unlearning.evaluation.suite import OutputStore, oracle_margins

    margins = {}
    for strategy in ("vmap", "sequential"):
        cfg = config(
            *SMALL, "eval.klom.models=3", f"eval.klom.strategy={strategy}", "pretrain.epochs=2"
        )
        cache = StageCache(tmp_path / strategy)
        margins[strategy] = oracle_margins(cfg, OutputStore(_models(), TinyData()), cache, {"k": 1})
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


@pytest.mark.slow
def test_full_eval_on_digits_adds_klom_and_plots(config):
    from unlearning.pipeline.run import run

    cfg = config("method=neggrad", "eval=full", "eval.klom.models=3")
    metrics = run(cfg)["metrics"]
    assert all(math.isfinite(metrics[f"klom/{s}"]) for s in ("forget", "retain", "test"))
    pngs = {p.name for p in Path(cfg.paths.output_dir).glob("*.png")}
    assert {"landscape_test.png", "landscape_forget.png", "features.png"} <= pngs
