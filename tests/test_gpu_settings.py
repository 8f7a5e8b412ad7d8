"""The GPU speed settings (issue #10): the ``trainer=gpu_bf16`` preset, ``channels_last`` and
``compile``, checked on the CPU (their plumbing; the speed-ups need a GPU)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from unlearning.config.consistency import check_compile
from unlearning.config.rules import check_keys
from unlearning.errors import ConfigError
from unlearning.models import SmallCNN
from unlearning.pipeline.stages.training import prepare_backbone


def test_gpu_bf16_preset_sets_bf16_channels_last_and_the_gpu(config):
    cfg = config("trainer=gpu_bf16")
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.deterministic is False
    assert cfg.channels_last is True and cfg.compile is False
    assert config().channels_last is False  # the default stays fp32, contiguous


@pytest.mark.parametrize("key", ["channels_last", "compile"])
def test_speed_flags_must_be_booleans(config, key):
    cfg = config()
    with open_dict(cfg):
        cfg[key] = "yes"
    with pytest.raises(ConfigError, match=rf"^{key}='yes': must be true or false"):
        check_keys(cfg)


def test_compile_on_cpu_without_a_compiler_is_refused_up_front(config, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    cfg = config("compile=true")
    with pytest.raises(ConfigError, match=r"^compile=True: on the CPU torch.compile needs a C\+\+"):
        check_compile(cfg)
    check_compile(config("compile=false"))  # off: nothing to check


def test_prepare_backbone_keeps_weights_and_names(config):
    net = SmallCNN(num_classes=10, in_channels=3, width=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = prepare_backbone(config("channels_last=true", "compile=true"), net)
    assert out is net  # in place
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert net._compiled_call_impl is not None  # compiled lazily, at the first forward
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_prepare_backbone_is_a_no_op_by_default(config):
    net = SmallCNN(num_classes=10, in_channels=3, width=8)
    prepare_backbone(config(), net)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and net._compiled_call_impl is None


@pytest.mark.slow
def test_a_compiled_backbone_trains_like_the_eager_one(config):
    torch.manual_seed(0)
    eager = SmallCNN(num_classes=10, in_channels=3, width=8)
    compiled = prepare_backbone(
        config("compile=true"), SmallCNN(num_classes=10, in_channels=3, width=8)
    )
    compiled.load_state_dict(eager.state_dict())
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for net in (eager, compiled):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
