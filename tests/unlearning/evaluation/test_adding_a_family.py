"""docs/evaluation.md, "Adding a metric family": the worked example's class, YAML block,
command-line override and test, run as written. The class is served as the module the page
names (``unlearning.evaluation.families.confidence``) without a file in the package."""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import unlearning.evaluation.families as families
from tests.unlearning.evaluation.fakes import TensorSets
from unlearning.evaluation.store import OutputStore
from unlearning.evaluation.suite import Suite
from unlearning.models import SmallCNN

DOC = Path(__file__).resolve().parents[3] / "docs" / "evaluation.md"
MODULE = "unlearning.evaluation.families.confidence"


def _blocks() -> dict[str, list[str]]:
    """The fenced code blocks of the section, by language, in page order."""
    text = DOC.read_text()
    section = text.split("## Adding a metric family", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The page's family class, importable under the module path its ``_target_`` names."""
    module = types.ModuleType(MODULE)
    exec(compile(_blocks()["python"][0], f"{DOC}:family", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, MODULE, module)
    monkeypatch.setattr(families, "confidence", module, raising=False)
    return module


class _Data(TensorSets):
    """R, F and D_test of random 8×8 images behind the datamodule's loader interface."""

    batch_size = 32

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        sizes = {"retain": 90, "forget": 30, "test": 60}
        super().__init__(
            {
                s: (torch.randn(n, 1, 8, 8, generator=gen), torch.randint(10, (n,), generator=gen))
                for s, n in sizes.items()
            }
        )


def _models() -> dict[str, SmallCNN]:
    torch.manual_seed(0)
    return {name: SmallCNN(10).eval() for name in ("original", "oracle", "unlearned")}


def test_the_yaml_block_adds_the_family_with_its_defaults(example, config, tmp_path):
    block = OmegaConf.create(_blocks()["yaml"][0])
    (name,) = block.keys()
    cfg = config("eval=none")
    with open_dict(cfg):
        cfg.eval[name] = block[name]
    cfg.eval[name].enabled = True
    suite = Suite.from_config(cfg)
    assert [n for n, _ in suite.families] == ["confidence"]
    family = suite.families[0][1]
    assert isinstance(family, example.ForgetConfidence) and family.temperature == 1.0
    store = OutputStore(_models(), _Data(), needs=suite.needs())
    result = suite.run(store, tmp_path, {})
    assert set(store._outputs) == {("original", "forget"), ("unlearned", "forget")}
    for key in ("confidence/forget", "original/confidence/forget"):
        assert 0.0 < result.metrics[key] < 1.0
    # a higher temperature flattens the softmax towards 1 / classes
    cfg.eval[name].temperature = 100.0
    hot = Suite.from_config(cfg).run(store, tmp_path, {})
    assert abs(hot.metrics["confidence/forget"] - 0.1) < abs(
        result.metrics["confidence/forget"] - 0.1
    )


def test_the_command_line_override_runs_the_family_after_the_presets(example, config, tmp_path):
    (override,) = [a for a in shlex.split(_blocks()["bash"][0]) if a.startswith("+eval.")]
    cfg = config("eval=default", "eval.landscape.enabled=false", "eval.hessian.enabled=false",
                 "eval.relearn.enabled=false", "eval.entanglement.max_samples=20",
                 override)  # fmt: skip
    suite = Suite.from_config(cfg)
    assert [n for n, _ in suite.families] == ["mia", "entanglement", "confidence"]
    result = suite.run(OutputStore(_models(), _Data(), needs=suite.needs()), tmp_path, {})
    times = [k for k in result.metrics if k.startswith("time/")]
    assert times == ["time/mia", "time/entanglement", "time/confidence"]
    assert 0.0 < result.metrics["confidence/forget"] < 1.0


def test_the_pages_test_passes(example, config):
    namespace: dict = {}
    exec(compile(_blocks()["python"][1], f"{DOC}:test", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0](config)
