"""The documentation's code and config examples work as written."""

import re
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _blocks(page: str, language: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_adding_a_method_example_runs_and_its_yaml_targets_the_class(tmp_path, monkeypatch):
    code, config = (
        _blocks("docs/adding_a_method.md", "python")[0],
        _blocks("docs/adding_a_method.md", "yaml")[0],
    )
    namespace: dict = {}
    exec(compile(code, "adding_a_method.md", "exec"), namespace)
    method_cls = namespace["ForgetMargin"]
    net = torch.nn.Linear(4, 3)
    module = method_cls(net, lam=0.5)
    batch = {
        "retain": (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])),
        "forget": (torch.randn(2, 4), torch.tensor([2, 2])),
    }
    loss, parts = module.loss(batch)
    assert loss.ndim == 0 and set(parts) == {"loss_retain"}
    spec = yaml.safe_load(config)
    assert spec["_target_"].endswith(".ForgetMargin") and spec["lam"] == 1.0
    assert {"name", "epochs", "lr", "batch_size", "scheduler"} <= set(spec)


def test_every_config_group_has_a_docs_page():
    documented = (ROOT / "docs" / "config" / "README.md").read_text()
    groups = [p for p in (ROOT / "conf").iterdir() if p.is_dir()]
    nested = [sub for g in groups if not any(g.glob("*.yaml")) for sub in g.iterdir()]
    names = [g.name for g in groups if any(g.glob("*.yaml"))]
    names += [f"{sub.parent.name}/{sub.name}" for sub in nested]  # e.g. pretrain/optim
    for name in sorted(names):
        assert f"`{name}`" in documented, name
