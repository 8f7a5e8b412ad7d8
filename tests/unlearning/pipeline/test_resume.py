"""A pretraining stage interrupted mid-way leaves no cache entry and resumes to the same model."""

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from unlearning.pipeline import stages
from unlearning.pipeline.cache import StageCache
from unlearning.pipeline.keys import stage_configs
from unlearning.pipeline.run import check_inputs
from unlearning.pipeline.stages import training


class CrashAfterEpoch(Callback):
    """A fault injected through the trainer's callbacks: dies at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("injected crash")


def _pretrain(cfg, cache_dir):
    source = check_inputs(cfg)
    cache = StageCache(cache_dir)
    key = stage_configs(cfg)["pretrain"]
    entry = cache.get_or_compute(
        "pretrain", key, lambda d: stages.train_from_scratch(cfg, source, None, "train", d)
    )
    return entry, cache, key


def test_interrupted_pretraining_resumes_to_the_uninterrupted_weights(
    config, tmp_path, monkeypatch
):
    cfg = config("pretrain.epochs=4", cache=tmp_path / "unused")
    reference, _, _ = _pretrain(cfg, tmp_path / "clean")

    make_trainer = training.make_trainer

    def crashing_trainer(cfg, max_epochs, callbacks, logger, root, **overrides):
        callbacks = [*callbacks, CrashAfterEpoch(1)]
        return make_trainer(cfg, max_epochs, callbacks, logger, root, **overrides)

    monkeypatch.setattr(training, "make_trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="injected crash"):
        _pretrain(cfg, tmp_path / "faulty")
    cache = StageCache(tmp_path / "faulty")
    key = stage_configs(cfg)["pretrain"]
    assert not cache.has("pretrain", key), "an interrupted stage must not become an entry"
    partial = cache.path("pretrain", key).with_name(cache.path("pretrain", key).name + ".partial")
    assert (partial / "checkpoints" / "latest.ckpt").is_file()

    monkeypatch.setattr(training, "make_trainer", make_trainer)
    resumed, _, _ = _pretrain(cfg, tmp_path / "faulty")
    a = torch.load(reference / stages.MODEL_FILE, weights_only=True)
    b = torch.load(resumed / stages.MODEL_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed training must match bit for bit"


def test_the_latest_checkpoint_keeps_modelcheckpoints_state_key(tmp_path):
    """The cached key is the one ModelCheckpoint computes (so a checkpoint's callback state is
    found again on resume), and computing it once is what the cache is for."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unlearning.pipeline.resume import LatestCheckpoint

    latest = LatestCheckpoint(tmp_path)
    plain = ModelCheckpoint(
        dirpath=tmp_path, filename="latest", save_top_k=1, enable_version_counter=False
    )
    assert latest.state_key == plain.state_key.replace("ModelCheckpoint", "LatestCheckpoint")
    assert latest.state_key is latest.state_key  # one string, built once
    assert latest.filename == "latest" and latest.save_top_k == 1
