"""The training-stage runner with the config's schedulers and callbacks: schedulers reach the
stage they are placed in, user callbacks join the unlearning stage only, and an early stop ends
unlearning normally but never becomes a cached pretraining or oracle model."""

import csv
import math
from pathlib import Path
from typing import ClassVar

import pytest
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch import nn

from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs, unlearn_key
from unlearning.pipeline.run import run
from unlearning.pipeline.stages import training


class Recorder(Callback):
    """Records the name of every module it is fitted with."""

    seen: ClassVar[list[str]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        Recorder.seen.append(pl_module.method_name)


class StopAfter(Callback):
    """Asks the fit to stop at the end of epoch ``epoch`` (as ``EarlyStopping`` does)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _scheduler(node):
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def test_scheduler_presets_go_to_the_stage_they_are_placed_in(config):
    cfg = config()
    assert _scheduler(cfg.pretrain.scheduler) == {
        "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "_partial_": True,
        "T_max": cfg.pretrain.epochs,
    }
    assert cfg.method.scheduler is None  # unlearning: constant lr
    cosine = config("scheduler@method=cosine", "method.epochs=4")
    assert _scheduler(cosine.method.scheduler)["T_max"] == 4
    assert _scheduler(cosine.pretrain.scheduler)["T_max"] == cfg.pretrain.epochs
    assert config("scheduler@pretrain=constant").pretrain.scheduler is None
    assert config("dataset=signal_noise").pretrain.scheduler is None
    assert config("dataset=signal_noise", "scheduler@pretrain=cosine").pretrain.scheduler
    retrain = config("method=retrain", "pretrain.epochs=7")
    assert _scheduler(retrain.method.scheduler)["T_max"] == 7  # retrain is the oracle's recipe
    paper = config("experiment=cifar10_resnet18")
    assert _scheduler(paper.pretrain.scheduler)["T_max"] == 50


def test_the_method_steps_its_scheduler_node_once_per_epoch(config):
    cfg = config("scheduler@method=cosine", "method.epochs=4")
    module = instantiate(cfg.method, net=nn.Linear(2, 2), optimizer=None)
    setup = module.configure_optimizers()
    scheduler = setup["lr_scheduler"]["scheduler"]
    assert setup["lr_scheduler"]["interval"] == "epoch" and scheduler.T_max == 4
    optimizer, lrs, lr = setup["optimizer"], [], cfg.method.lr
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_lr_monitor_logs_the_annealed_unlearning_lr(config):
    cfg = config("callbacks=lr_monitor", "logger=csv", "scheduler@method=cosine", "method.epochs=4")
    assert run(cfg)["status"] == "ok"
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        lrs = [float(row["lr-SGD"]) for row in csv.DictReader(f) if row.get("lr-SGD")]
    lr = cfg.method.lr
    assert lrs == pytest.approx([lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    entry = StageCache(Path(cfg.paths.output_dir)).path("unlearn", unlearn_key(cfg))
    assert StageCache.meta(entry)["stopped_early_at_epoch"] is None  # every epoch ran


def test_user_callbacks_join_the_unlearning_stage_only(config, tmp_path):
    Recorder.seen = []
    cfg = config(
        f"+callbacks.recorder._target_={__name__}.Recorder",
        "pretrain.epochs=1",
        "method.epochs=1",
        cache=tmp_path / "fresh",  # pretraining and the oracle run in this job
    )
    assert run(cfg)["status"] == "ok"
    assert Recorder.seen == [cfg.method.name]
    assert "callbacks" in unlearn_key(cfg) and "callbacks" not in str(stage_configs(cfg))


def test_early_stopping_ends_unlearning_with_the_model_of_that_epoch(config):
    cfg = config("method=ga", "callbacks=early_stopping", "callbacks.early_stopping.patience=1")
    result = run(cfg)
    assert result["status"] == "ok"
    entry = StageCache(Path(cfg.paths.output_dir)).path("unlearn", unlearn_key(cfg))
    stopped = StageCache.meta(entry)["stopped_early_at_epoch"]
    assert 1 <= stopped < cfg.method.epochs


def test_an_early_stop_in_pretraining_raises_and_caches_nothing(config, tmp_path, monkeypatch):
    make_trainer = training.make_trainer

    def stopping_trainer(cfg, max_epochs, callbacks, logger, root, **overrides):
        return make_trainer(cfg, max_epochs, [*callbacks, StopAfter(0)], logger, root, **overrides)

    monkeypatch.setattr(training, "make_trainer", stopping_trainer)
    cfg = config("pretrain.epochs=2", cache=tmp_path / "cache")
    with pytest.raises(RuntimeError, match="pretrain stopped at epoch 1 of 2"):
        run(cfg)
    assert not StageCache(tmp_path / "cache").has("pretrain", stage_configs(cfg)["pretrain"])


def test_a_stop_asked_by_a_user_callback_keeps_the_unlearned_model(config):
    cfg = config(f"+callbacks.stop._target_={__name__}.StopAfter", "+callbacks.stop.epoch=1")
    assert run(cfg)["status"] == "ok"
    entry = StageCache(Path(cfg.paths.output_dir)).path("unlearn", unlearn_key(cfg))
    assert StageCache.meta(entry)["stopped_early_at_epoch"] == 2
    assert (entry / training.MODEL_FILE).is_file()
