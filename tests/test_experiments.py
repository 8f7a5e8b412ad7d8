"""Paper presets (``experiment=``) compose and run end to end on tiny stand-in data (SPEC §7)."""

import pytest

from tests.datamodules.test_real_datasets import write_cifar10, write_cifar100
from unlearning.pipeline import run


@pytest.mark.parametrize(
    ("experiment", "writer", "folder", "model"),
    [
        pytest.param("cifar100_resnet50", write_cifar100, "cifar100", 50, marks=pytest.mark.slow),
        ("cifar10_resnet18", write_cifar10, "cifar10", 18),
    ],
)
def test_paper_preset_runs_on_tiny_stand_in_data(
    config, tmp_path, experiment, writer, folder, model
):
    cfg = config(f"experiment={experiment}", cache=tmp_path / "cache")
    assert cfg.model.depth == model and cfg.model.cifar_stem
    assert cfg.pretrain.epochs >= 50 and cfg.method.epochs == 10 and cfg.alpha == 0.99
    writer(tmp_path / "run" / "data" / folder)
    shrunk = config(
        f"experiment={experiment}",
        "pretrain.epochs=1",
        "method.epochs=1",
        "split.size=2",
        "num_workers=0",
        cache=tmp_path / "cache",
    )
    result = run(shrunk)
    assert result["status"] == "ok"
    assert result["metrics"]["split/n_forget"] == 2
