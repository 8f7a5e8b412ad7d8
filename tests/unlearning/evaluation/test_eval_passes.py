"""Issue #10: a job forwards each of its models over each set (R, F, D_test) once — the
accuracies and the evaluation suite read the same outputs — and those accuracies are exactly
what :func:`unlearning.evaluation.metrics.accuracy.accuracy` gives."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.unlearning_datamodule import UnlearningDataModule
from unlearning.evaluation.family import Needs, SampleNeed
from unlearning.evaluation.metrics.accuracy import accuracy, logits_accuracy
from unlearning.evaluation.metrics.features import model_outputs
from unlearning.evaluation.store import OutputStore
from unlearning.models import Backbone, SmallCNN, TwoLayerCNN
from unlearning.outputs.results import MODELS, SETS, accuracy_key
from unlearning.pipeline import run as pipeline

# the default suite with small landscape/Hessian sizes (they forward samples, not whole sets)
SMALL_DEFAULT = [
    "eval=default",
    "eval.landscape.steps_1d=3",
    "eval.landscape.steps_2d=3",
    "eval.landscape.max_samples=16",
    "eval.hessian.max_samples=16",
    "eval.hessian.iterations=2",
    "eval.entanglement.max_samples=30",
]
JOB = ["method=finetune", "method.epochs=1"]


class _Tagged:
    """An eval loader that records which set is being iterated while it yields batches."""

    def __init__(self, loader: DataLoader, name: str, current: list[str | None]) -> None:
        self.loader, self.name, self.current = loader, name, current

    def __iter__(self) -> Iterator:
        self.current[0] = self.name
        try:
            yield from self.loader
        finally:
            self.current[0] = None

    def __len__(self) -> int:
        return len(self.loader)


@pytest.fixture
def passes(monkeypatch):
    """Samples each backbone (by id) is forwarded over, per set, while a whole-set eval loader
    of the job's datamodule is iterated; plus the job's :class:`OutputStore`."""
    current: list[str | None] = [None]
    seen: Counter = Counter()
    captured: dict[str, OutputStore] = {}
    original_loader = UnlearningDataModule.eval_dataloader
    original_evaluate = pipeline.evaluate

    def tagged(self, name, batch_size=None, positions=None):
        loader = original_loader(self, name, batch_size, positions)
        return loader if positions is not None else _Tagged(loader, name, current)

    def evaluate(store: OutputStore) -> dict[str, float]:
        captured["store"] = store
        return original_evaluate(store)

    def hook(module, args, _output):
        if isinstance(module, Backbone) and current[0] is not None:
            seen[(id(module), current[0])] += len(args[0])

    monkeypatch.setattr(UnlearningDataModule, "eval_dataloader", tagged)
    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen, captured
    handle.remove()


@pytest.mark.parametrize("suite", [["eval=none"], SMALL_DEFAULT], ids=["none", "default"])
def test_each_model_sees_each_set_exactly_once(config, passes, suite):
    seen, captured = passes
    result = pipeline.run(config(*JOB, *suite))
    store = captured["store"]
    sizes = {s: store.data.set_size(s) for s in SETS}
    assert all(n > 0 for n in sizes.values())
    for name in MODELS:
        per_set = {s: seen[(id(store.models[name]), s)] for s in SETS}
        assert per_set == sizes, f"{name}: samples forwarded per set {per_set}, sets {sizes}"
    assert len({model for model, _ in seen}) == len(MODELS), "no other model was evaluated"
    if suite != ["eval=none"]:
        assert "mia" in result["metrics"] and "e_var_all" in result["metrics"]


def test_job_accuracies_equal_accuracy_of_a_separate_pass(config, passes):
    _, captured = passes
    metrics = pipeline.run(config(*JOB, "eval=default", "eval.landscape.enabled=false"))["metrics"]
    store = captured["store"]
    for name in MODELS:
        for s in SETS:
            loader = store.data.eval_dataloader(s)
            expected = accuracy(store.models[name], loader, store.num_classes)
            assert metrics[accuracy_key(name, s)] == expected, (name, s)


class _Sets:
    """Fixed random tensors per set behind the datamodule's loader interface."""

    def __init__(self, classes: int, sizes: dict[str, int]) -> None:
        gen = torch.Generator().manual_seed(1)
        self.sets = {
            s: (torch.randn(n, 1, 8, 8, generator=gen), torch.randint(classes, (n,), generator=gen))
            for s, n in sizes.items()
        }

    def set_size(self, name: str) -> int:
        return len(self.sets[name][1])

    def eval_dataloader(self, name: str, batch_size: int | None = None, positions=None):
        return DataLoader(TensorDataset(*self.sets[name]), batch_size=batch_size or 37)


@pytest.mark.parametrize("kept", [True, False], ids=["memoised", "streamed"])
def test_store_accuracies_equal_accuracy_on_untrained_models(kept):
    """Untrained models on random labels: accuracies far from 0 and 1, so an off-by-one sample
    shows. ``kept`` reads them from memoised outputs, else from a streamed pass."""
    classes, sizes = 4, {"retain": 301, "forget": 45, "test": 0}
    models = {}
    for seed, name in enumerate(MODELS):
        torch.manual_seed(seed)
        models[name] = SmallCNN(classes)
    data = _Sets(classes, sizes)
    needs = Needs.of(MODELS, SETS) if kept else Needs()
    store = OutputStore(models, data, classes, needs=needs)
    values = set()
    for name, model in models.items():
        for s in SETS:
            got = store.accuracy(name, s)
            expected = accuracy(model, data.eval_dataloader(s), classes)
            assert got == expected or (math.isnan(got) and math.isnan(expected)), (name, s)
            values.add(got)
    assert any(0.05 < v < 0.95 for v in values)
    assert bool(store._outputs) is kept, "only the pairs the suite needs are kept"


def test_logits_accuracy_counts_arg_max_hits():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    assert logits_accuracy(logits, torch.tensor([0, 1, 0, 2]), 3) == pytest.approx(0.5)
    assert math.isnan(logits_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3))


@pytest.mark.parametrize(
    ("make", "embeds_per_batch"),
    [(lambda: SmallCNN(10), 1), (lambda: TwoLayerCNN(num_classes=2, dim=16, width=4), 2)],
    ids=["backbone", "two-layer-cnn"],
)
def test_model_outputs_reads_embeddings_from_the_same_forward_pass(make, embeds_per_batch):
    """For a backbone ``head(embed(x))`` the embeddings are the head's input during the forward
    pass (one ``embed`` per batch); the two-layer CNN, whose forward bypasses its head, gets a
    second ``embed`` call. Either way the values equal ``model.embed(x)``."""
    torch.manual_seed(0)
    model = make().eval()
    shape = (1, 8, 8) if isinstance(model, SmallCNN) else (4, 16)
    x = torch.randn(50, *shape)
    loader = DataLoader(TensorDataset(x, torch.zeros(50, dtype=torch.long)), batch_size=20)
    calls = []
    embed = model.embed

    def counting(inp):
        calls.append(len(inp))
        return embed(inp)

    model.embed = counting
    out = model_outputs(model, loader)
    assert len(calls) == embeds_per_batch * len(loader)
    model.embed = embed
    with torch.no_grad():
        assert torch.equal(out.embeddings, model.embed(x).float())
        assert torch.equal(out.logits, model(x).float())
    calls.clear()
    model.embed = counting
    lean = model_outputs(model, loader, embeddings=False)
    assert lean.embeddings is None and torch.equal(lean.logits, out.logits)
    assert len(calls) == len(loader), "without embeddings: the forward pass alone"
    with pytest.raises(RuntimeError, match="without embeddings"):
        lean.normalized_embeddings()


def test_the_evaluation_runs_on_the_trainers_device():
    """CPU trainers evaluate on the CPU; a GPU accelerator means the GPU when one is visible
    (this machine has none: then the CPU, and trainer=gpu is refused at start-up anyway)."""
    import torch
    from omegaconf import OmegaConf

    from unlearning.pipeline.run import evaluation_device

    cpu = OmegaConf.create({"trainer": {"accelerator": "cpu"}})
    assert evaluation_device(cpu) == torch.device("cpu")
    for accelerator in ("gpu", "cuda", "auto"):
        cfg = OmegaConf.create({"trainer": {"accelerator": accelerator}})
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert evaluation_device(cfg).type == expected


def test_store_keeps_the_samples_a_family_declared_and_loads_them_once():
    """Two families declaring the same sample read one draw; an undeclared sample is drawn
    (identically, from the seed) each time it is asked for and not kept."""
    data = _Sets(4, {"retain": 301, "forget": 45, "test": 0})
    loads: list[str] = []
    plain = data.eval_dataloader

    def loader(name, batch_size=None, positions=None):
        if positions is not None:
            loads.append(name)
            x, y = data.sets[name]
            return DataLoader(TensorDataset(x[positions], y[positions]), batch_size=37)
        return plain(name, batch_size)

    data.eval_dataloader = loader
    store = OutputStore({}, data, needs=Needs(samples=frozenset({SampleNeed("retain", 100)})))
    first, again = store.sample("retain", 100, seed=3), store.sample("retain", 100, seed=3)
    assert loads == ["retain"] and first[0] is again[0] and len(first[1]) == 100
    other = store.sample("retain", 50, seed=3)
    assert torch.equal(store.sample("retain", 50, seed=3)[0], other[0])
    assert loads == ["retain", "retain", "retain"]
    assert store.sample("forget", 100, seed=3)[1].shape == (45,)  # a small set: all of it
