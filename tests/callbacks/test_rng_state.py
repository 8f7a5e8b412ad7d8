import random

import numpy as np
import torch

from callbacks.rng_state import RNGStateCheckpoint


def test_rng_states_survive_a_weights_only_checkpoint_and_restore_exactly(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    callback = RNGStateCheckpoint()
    torch.save(callback.state_dict(), tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # move every generator elsewhere
    callback.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
