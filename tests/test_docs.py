"""The documentation's code and config examples work as written."""

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from callbacks.sharpness import SAM
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs, unlearn_key
from unlearning.pipeline.run import run
from unlearning.pipeline.stages import MASK_FILE, MODEL_FILE

ROOT = Path(__file__).resolve().parents[1]
PAGE = "docs/adding_a_method.md"


def _blocks(page: str, language: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _method_class(name: str) -> type:
    """The class ``name`` defined by the page's Python block that defines it, run as written."""
    (code,) = [b for b in _blocks(PAGE, "python") if f"class {name}(" in b]
    namespace: dict = {}
    exec(compile(code, f"{PAGE}:{name}", "exec"), namespace)
    return namespace[name]


def _method_yaml(name: str) -> str:
    """The page's YAML block whose ``_target_`` ends with ``.name``."""
    (config,) = [b for b in _blocks(PAGE, "yaml") if re.search(rf"_target_: \S+\.{name}\n", b)]
    return config


def _install(name: str, conf: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the documented class importable under its YAML's ``_target_`` and write the YAML
    as ``<conf>/method/<method name>.yaml``, as a user adding the method would; returns the
    method's name."""
    config = _method_yaml(name)
    spec = yaml.safe_load(config)
    module_name = spec["_target_"].rsplit(".", 1)[0]
    module = types.ModuleType(module_name)
    setattr(module, name, _method_class(name))
    monkeypatch.setitem(sys.modules, module_name, module)
    (conf / "method").mkdir(parents=True, exist_ok=True)
    (conf / "method" / f"{spec['name']}.yaml").write_text(config)
    return spec["name"]


def test_adding_a_method_example_runs_and_its_yaml_targets_the_class():
    method_cls = _method_class("ForgetMargin")
    net = torch.nn.Linear(4, 3)
    module = method_cls(net, lam=0.5)
    batch = {
        "retain": (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])),
        "forget": (torch.randn(2, 4), torch.tensor([2, 2])),
    }
    loss, parts = module.loss(batch)
    assert loss.ndim == 0 and set(parts) == {"loss_retain"}
    spec = yaml.safe_load(_method_yaml("ForgetMargin"))
    assert spec["_target_"].endswith(".ForgetMargin") and spec["lam"] == 1.0
    assert {"name", "epochs", "lr", "batch_size"} <= set(spec)
    assert "scheduler" not in spec  # it comes from the scheduler@method group


def test_a_method_that_defaults_to_cosine_still_yields_to_the_command_line(config, tmp_path):
    (defaults,) = [b for b in _blocks(PAGE, "yaml") if "override /scheduler" in b]
    (tmp_path / "conf" / "method").mkdir(parents=True)
    text = defaults + _method_yaml("ForgetMargin").replace("lam: 1.0\n", "")
    text = text.replace(
        "unlearning.methods.forget_margin.ForgetMargin", "unlearning.methods.NegGrad"
    )
    (tmp_path / "conf" / "method" / "forget_margin.yaml").write_text(text)
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    cfg = config(search, "method=forget_margin", "method.epochs=4")
    scheduler = OmegaConf.to_container(cfg.method.scheduler, resolve=True)
    assert scheduler["_target_"].endswith("CosineAnnealingLR") and scheduler["T_max"] == 4
    assert (
        config(search, "method=forget_margin", "scheduler@method=constant").method.scheduler is None
    )


def test_documented_masked_method_runs_through_the_pipeline_on_its_mask(
    config, tmp_path, monkeypatch
):
    """Example 2 as a user adds it (class + YAML): the mask stage sizes its mask by
    ``method.fraction`` and ``method.batch_size``; only salient entries move (no weight decay,
    so masking the gradient is enough)."""
    name = _install("SalientAscent", tmp_path / "conf", monkeypatch)
    cfg = config(
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"method={name}",
        "method.epochs=3",
        "method.lr=0.2",
        "optim.optimizer.weight_decay=0",
    )
    result = run(cfg)
    assert result["status"] == "ok"
    metrics = result["metrics"]
    assert metrics["unlearned/acc_forget"] < metrics["original/acc_forget"] - 0.05
    assert metrics["unlearned/acc_retain"] > 0.9  # only F is unlearned
    cache = StageCache(cfg.paths.cache_dir)
    keys = stage_configs(cfg)
    assert keys["mask"]["fraction"] == 0.1 and keys["mask"]["batch_size"] == 64
    masks = torch.load(cache.path("mask", keys["mask"]) / MASK_FILE, weights_only=True)
    f_a = torch.load(cache.path("pretrain", keys["pretrain"]) / MODEL_FILE, weights_only=True)
    out = StageCache(Path(cfg.paths.output_dir)).path("unlearn", unlearn_key(cfg))
    unlearned = torch.load(out / MODEL_FILE, weights_only=True)
    for key, mask in masks.items():
        assert torch.equal(unlearned[key][~mask], f_a[key][~mask]), key
    assert any(not torch.equal(unlearned[k][m], f_a[k][m]) for k, m in masks.items())


def test_documented_self_stepping_method_takes_two_steps_and_refuses_sam():
    """Example 3: one batch = an SGD step on CE(R), then one on -CE(F); SAM is refused."""
    method_cls = _method_class("AlternatingNegGrad")
    spec = yaml.safe_load(_method_yaml("AlternatingNegGrad"))
    assert spec["_target_"].endswith(".AlternatingNegGrad") and "scheduler" not in spec
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(1)
    x_r, y_r = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    x_f, y_f = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    expected = [p.detach().clone() for p in net.parameters()]
    for x, y, sign in ((x_r, y_r, 1.0), (x_f, y_f, -1.0)):
        w, b = (p.clone().requires_grad_() for p in expected)
        loss = sign * torch.nn.functional.cross_entropy(x @ w.T + b, y)
        grads = torch.autograd.grad(loss, (w, b))
        expected = [p.detach() - 0.1 * d for p, d in zip((w, b), grads, strict=True)]

    module = method_cls(net, lr=0.1)
    with pytest.raises(ValueError, match="optim"):
        module.use_sharpness(SAM(rho=0.1))
    module.use_sharpness(None)
    loader = {
        "retain": DataLoader(TensorDataset(x_r, y_r), batch_size=6),
        "forget": DataLoader(TensorDataset(x_f, y_f), batch_size=6),
    }
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    for p, e in zip(net.parameters(), expected, strict=True):
        assert torch.allclose(p.detach(), e, atol=1e-6)


def test_every_config_group_has_a_docs_page():
    documented = (ROOT / "docs" / "config" / "README.md").read_text()
    groups = [p for p in (ROOT / "conf").iterdir() if p.is_dir()]
    nested = [sub for g in groups if not any(g.glob("*.yaml")) for sub in g.iterdir()]
    names = [g.name for g in groups if any(g.glob("*.yaml"))]
    names += [f"{sub.parent.name}/{sub.name}" for sub in nested]  # e.g. pretrain/optim
    for name in sorted(names):
        assert f"`{name}`" in documented, name
