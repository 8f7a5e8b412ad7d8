"""DirectBatches serves exactly the DataLoader's batches and RNG draws, so a job's results do
not depend on which of the two serves its in-memory training data."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from datamodules.embedded import Digits
from datamodules.loaders import DirectBatches, TensorBatches, keep_batch
from datamodules.unlearning_datamodule import UnlearningDataModule


def _data(n: int, with_ids: bool = False) -> TensorBatches:
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    y = torch.arange(n) % 3
    return TensorBatches(x, y, torch.arange(n) + 100 if with_ids else None)


def _epochs(make, epochs: int) -> tuple[list, torch.Tensor]:
    """Batches of ``epochs`` passes over a CombinedLoader of a long and a short (cycled) set,
    and the global RNG state afterwards."""
    torch.manual_seed(7)
    seen = []
    for _ in range(epochs):
        combined = CombinedLoader(
            {"retain": make(_data(50), 8), "forget": make(_data(11), 8)}, "max_size_cycle"
        )
        for batch, _, _ in combined:
            seen.append({k: tuple(t.clone() for t in v) for k, v in batch.items()})
    return seen, torch.get_rng_state()


@pytest.mark.parametrize("shuffle", [True, False])
def test_direct_batches_equal_the_dataloaders_batches_and_rng_draws(shuffle):
    direct, direct_rng = _epochs(lambda d, b: DirectBatches(d, b, shuffle), epochs=3)
    loader, loader_rng = _epochs(
        lambda d, b: DataLoader(d, batch_size=b, shuffle=shuffle, collate_fn=keep_batch), 3
    )
    assert len(direct) == len(loader) == 3 * 7  # ⌈50/8⌉ steps an epoch, F cycled
    for a, b in zip(direct, loader, strict=True):
        for name in ("retain", "forget"):
            assert all(torch.equal(s, t) for s, t in zip(a[name], b[name], strict=True))
    assert torch.equal(direct_rng, loader_rng), "the same global RNG draws"
    if shuffle:
        assert not torch.equal(direct[0]["retain"][0], direct[7]["retain"][0]), "reshuffled"


def test_direct_batches_keep_sample_ids_and_length():
    batches = DirectBatches(_data(10, with_ids=True), 4, shuffle=True)
    assert len(batches) == 3
    ids = torch.cat([b[2] for b in batches])
    assert sorted(ids.tolist()) == list(range(100, 110))
    with pytest.raises(ValueError, match="batch_size"):
        DirectBatches(_data(4), 0, shuffle=False)


def test_the_datamodule_serves_in_memory_training_sets_directly_in_one_process():
    source = Digits()
    forget = np.arange(20)
    data = UnlearningDataModule(source, forget, ("retain", "forget"), 16)
    data.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    combined = data.train_dataloader()
    assert all(isinstance(it, DirectBatches) for it in combined.iterables.values())
    workers = UnlearningDataModule(source, forget, ("retain",), 16, num_workers=1)
    assert isinstance(workers.train_dataloader().iterables["retain"], DataLoader)


class _FirstLabels(L.Callback):
    """Records each epoch's first batch labels and a draw from the global RNG at epoch end."""

    def __init__(self) -> None:
        self.seen: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.seen.append({k: v[1].tolist() for k, v in batch.items()})

    def on_train_epoch_end(self, trainer, module):
        state = torch.get_rng_state()
        self.seen.append(torch.rand(3).tolist())
        torch.set_rng_state(state)


def _fit_records(direct: bool) -> list:
    from unlearning.methods.ascent import NegGrad
    from unlearning.models import SmallCNN

    class Data(UnlearningDataModule):
        def _train_loader(self, name):
            if direct:
                return super()._train_loader(name)
            return self.loader(name, self.batch_size, True, self.augment)

    L.seed_everything(0, verbose=False)
    module = NegGrad(SmallCNN(10), alpha=0.9, lr=0.01)
    data = Data(Digits(), np.arange(30), module.train_sets, 64)
    recorder = _FirstLabels()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        deterministic=True,
    )
    trainer.fit(module, data)
    return recorder.seen


def test_through_a_trainer_direct_batches_give_the_dataloaders_batches_and_rng():
    """Lightning treats the two alike (it probes non-DataLoader iterables with an extra
    ``iter()``, which would shift every draw): same batches, same RNG state, epoch by epoch."""
    assert _fit_records(direct=True) == _fit_records(direct=False)


@pytest.mark.parametrize(
    ("in_memory", "direct", "workers", "expected"),
    [
        (True, True, 0, "direct"),  # one process, tensors, no workers
        (True, False, 0, "tensor DataLoader"),  # under DDP: the trainer shards a DataLoader
        (True, True, 1, "tensor DataLoader"),  # workers need the DataLoader's machinery
        (False, True, 0, "sample DataLoader"),  # per-sample fetches and collate
    ],
)
def test_the_loader_choice(in_memory, direct, workers, expected):
    data = UnlearningDataModule(
        Digits(), np.arange(20), ("retain",), 16, num_workers=workers, in_memory=in_memory
    )
    loader = data.loader("retain", 16, True, False, with_ids=True, direct=direct)
    assert (type(loader) is DirectBatches) == (expected == "direct")
    assert isinstance(loader.dataset, TensorBatches) == expected.startswith(("direct", "tensor"))
    if expected != "direct":
        assert type(loader) is DataLoader
        assert (loader.collate_fn is keep_batch) == (expected == "tensor DataLoader")
        assert loader.persistent_workers == (workers > 0)
    eval_loader = data.loader("forget", 4, False, False, with_ids=True, positions=[5, 0, 7])
    x, y, ids = next(iter(eval_loader))
    assert ids.tolist() == [5, 0, 7]  # the forget set is S[0:20]: positions are indices in S
    expected_x = torch.stack([Digits().dataset("train", augment=False)[i][0] for i in (5, 0, 7)])
    assert torch.equal(x, expected_x) and len(y) == 3
