"""``eval_batch_size=auto`` (issue #10): the largest inference batch that fits, found by halving
after out-of-memory errors (exercised on the CPU with a model that runs out of memory above a
threshold), memoised per model and input shape, and resolved once per job by the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from datamodules.sources import build_source
from unlearning.evaluation import batch_fit
from unlearning.evaluation.batch_fit import CPU_BATCH_SIZE, MAX_START, largest_batch, start_size
from unlearning.pipeline.run import resolve_eval_batch_size, run


class OutOfMemoryAbove(nn.Module):
    """A linear model whose forward raises the error a GPU raises when a batch is larger than
    ``limit``; records every batch size it is given."""

    def __init__(self, limit: int, error: type[Exception] = torch.cuda.OutOfMemoryError) -> None:
        super().__init__()
        self.limit, self.error, self.tried = limit, error, []
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tried.append(len(x))
        if len(x) > self.limit:
            raise self.error(f"CUDA out of memory. Tried to allocate {len(x)} samples")
        return self.linear(x)


@pytest.fixture(autouse=True)
def fresh_memo():
    batch_fit.forget_fits()
    yield
    batch_fit.forget_fits()


def test_halves_from_the_start_size_until_the_batch_fits():
    model = OutOfMemoryAbove(limit=600)
    assert largest_batch(model, (4,), "cpu", set_size=5000, probe=True) == 512
    assert model.tried == [4096, 2048, 1024, 512]


def test_a_generic_runtime_error_saying_out_of_memory_also_halves():
    model = OutOfMemoryAbove(limit=100, error=RuntimeError)
    assert largest_batch(model, (4,), "cpu", set_size=300, probe=True) == 64
    assert model.tried == [256, 128, 64]


def test_other_errors_propagate_and_a_batch_of_one_that_does_not_fit_raises():
    class Broken(OutOfMemoryAbove):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        largest_batch(Broken(limit=10), (4,), "cpu", probe=True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        largest_batch(OutOfMemoryAbove(limit=0), (4,), "cpu", set_size=8, probe=True)


def test_the_answer_is_memoised_per_model_and_input_shape():
    model = OutOfMemoryAbove(limit=600)
    first = largest_batch(model, (4,), "cpu", set_size=5000, probe=True)
    model.tried.clear()
    assert largest_batch(model, (4,), "cpu", set_size=5000, probe=True) == first
    assert model.tried == [], "a second call does not probe again"
    other = OutOfMemoryAbove(limit=100)  # same class and size, another input shape: probes
    assert largest_batch(other, (3, 4), "cpu", set_size=5000, probe=True) == 64


def test_no_probing_on_the_cpu_and_the_mode_is_restored():
    model = OutOfMemoryAbove(limit=10).train()
    assert largest_batch(model, (4,), "cpu", set_size=100_000) == CPU_BATCH_SIZE
    assert model.tried == [], "the CPU answer is fixed, nothing is run"
    assert largest_batch(model, (4,), "cpu", set_size=64, probe=True) == 8
    assert model.training, "the model's train/eval mode is restored"


@pytest.mark.parametrize(
    ("set_size", "expected"), [(1, 1), (100, 64), (1024, 1024), (10**6, MAX_START), (None, 8192)]
)
def test_start_size_is_the_largest_power_of_two_within_set_and_cap(set_size, expected):
    assert start_size(set_size) == expected


def test_auto_resolves_to_an_int_copy_and_an_int_passes_through(config):
    cfg = config("eval_batch_size=auto")
    source = build_source(cfg.dataset)
    resolved = resolve_eval_batch_size(cfg, source)
    assert resolved.eval_batch_size == CPU_BATCH_SIZE and cfg.eval_batch_size == "auto"
    probed = resolve_eval_batch_size(cfg, source, probe=True)  # digits: |S| = 1438 → 1024
    assert probed.eval_batch_size == start_size(len(source.targets("train")))
    fixed = config("eval_batch_size=256")
    assert resolve_eval_batch_size(fixed, source) is fixed


def test_an_auto_job_gives_the_1024_job_its_metrics_and_records_auto(config):
    job = ["method=finetune", "method.epochs=1"]
    auto = run(config(*job, "eval_batch_size=auto"))
    written = json.loads((Path(auto["config"]["paths"]["output_dir"]) / "results.json").read_text())
    assert written["config"]["eval_batch_size"] == "auto", "results.json keeps the config as set"
    fixed = run(config(*job, "eval_batch_size=1024"))
    acc = [k for k in fixed["metrics"] if "/acc_" in k]
    assert acc and all(auto["metrics"][k] == fixed["metrics"][k] for k in acc)
