"""``memorization.strategy=processes`` from the pipeline and from ``train.py`` (issue 19 item 4).

The estimator's own test (``test_processes_match_sequential``) passes a picklable factory; these
check that the pipeline's scores stage hands its spawned workers one too.
"""

import pickle

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules.sources import build_source
from tests.conftest import cli_dirs, run_cli
from unlearning.pipeline.stages.scores import SCORES_FILE, compute_memorization, model_factory

TINY = [
    "split=mem_high",
    "memorization.members=4",
    "memorization.epochs=1",
    "memorization.workers=2",
]


def test_model_factory_pickles_and_builds_the_configured_model(config) -> None:
    cfg = config("model.width=8")
    factory = pickle.loads(pickle.dumps(model_factory(cfg)))
    torch.manual_seed(0)
    built = factory()
    torch.manual_seed(0)
    expected = instantiate(cfg.model)
    assert repr(built) == repr(expected)
    for (name, a), (_, b) in zip(built.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.slow  # a CLI start-up plus two spawned workers importing train.py (~17 s)
def test_processes_strategy_from_the_cli_equals_sequential(config, tmp_path) -> None:
    common = [*TINY, "pretrain.epochs=1", "method=finetune", "method.epochs=1"]
    proc = run_cli(
        [*common, "memorization.strategy=processes", *cli_dirs(tmp_path)],
        cwd=tmp_path,
        env_extra={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cli_file,) = (tmp_path / "cache" / "memorization").glob(f"*/{SCORES_FILE}")
    cfg = config(*TINY, "memorization.strategy=sequential")
    compute_memorization(cfg, build_source(cfg.dataset), tmp_path)
    with np.load(cli_file) as got, np.load(tmp_path / SCORES_FILE) as want:
        # members are seeded by (seed, k) only and each trains in one thread: equal bit for bit
        for key in ("in_mask", "correct", "scores", "stderr"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert np.isfinite(got["scores"]).sum() > 100, "a degenerate estimate proves nothing"
