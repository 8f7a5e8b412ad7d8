"""The optimizer presets: `pretrain/optim=<p>` reuses `conf/optim/<p>.yaml` and composes to the
values each preset had when it was a copy (hard-coded below, docs/config/optim.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
PRESETS = ("sgd", "sam", "asam", "sharpmax")

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.9, "weight_decay": 5.0e-4}
#: every preset's composed values, as written out in conf/pretrain/optim/*.yaml before the reuse
EXPECTED: dict[str, dict[str, Any]] = {
    "sgd": {"name": "sgd", "optimizer": SGD, "sharpness": None},
    "sam": {
        "name": "sam",
        "optimizer": SGD,
        "sharpness": {"_target_": "callbacks.sharpness.SAM", "rho": 0.1},
    },
    "asam": {
        "name": "asam",
        "optimizer": SGD,
        "sharpness": {
            "_target_": "callbacks.sharpness.ASAM",
            "rho": 1.0,
            "eta": 0.01,
            "adaptive_params": "weight",
        },
    },
    "sharpmax": {
        "name": "sharpmax",
        "optimizer": SGD,
        "sharpness": {
            "_target_": "callbacks.sharpness.SharpnessMax",
            "rho": 0.1,
            "variant": "first_order",
            "adaptive": False,
            "eta": 0.01,
            "adaptive_params": "weight",
        },
    },
}


def composed(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("preset", PRESETS)
def test_each_pretraining_preset_composes_to_its_former_values(preset: str) -> None:
    cfg = composed(f"pretrain/optim={preset}")
    assert OmegaConf.to_container(cfg.pretrain.optim) == EXPECTED[preset]
    assert OmegaConf.to_container(cfg.optim) == EXPECTED["sgd"]  # the unlearning default


@pytest.mark.parametrize("preset", PRESETS)
def test_each_unlearning_preset_composes_to_the_same_values(preset: str) -> None:
    cfg = composed(f"optim={preset}", "method=neggrad")
    assert OmegaConf.to_container(cfg.optim) == EXPECTED[preset]
    assert OmegaConf.to_container(cfg.pretrain.optim) == EXPECTED["sgd"]


def test_the_two_choices_are_independent_and_keys_override_one_phase() -> None:
    cfg = composed(
        "optim=asam", "pretrain/optim=sam", "pretrain.optim.sharpness.rho=0.05", "method=minmax"
    )
    assert cfg.pretrain.optim.name == "sam" and cfg.pretrain.optim.sharpness.rho == 0.05
    assert cfg.optim.name == "asam" and cfg.optim.sharpness.rho == 1.0
    minmax = composed("method=minmax")  # minmax overrides the `optim` group only
    assert minmax.optim.name == "sam" and minmax.pretrain.optim.name == "sgd"


@pytest.mark.parametrize("preset", PRESETS)
def test_pretraining_presets_hold_no_values_of_their_own(preset: str) -> None:
    text = yaml.safe_load((CONF / "pretrain" / "optim" / f"{preset}.yaml").read_text())
    assert text == {"defaults": [f"/optim/{preset}@_here_", "_self_"]}
