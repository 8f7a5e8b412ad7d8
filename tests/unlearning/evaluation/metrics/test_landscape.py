"""Loss landscapes along filter-normalised directions (Li et al. 2018); basin ratio (000 §4.3)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearning.evaluation.metrics.landscape import (
    basin_ratio,
    filter_normalized_direction,
    loss_landscape,
)
from unlearning.models import SmallCNN


def test_basin_ratio_counts_losses_within_half_a_std_of_the_centre():
    losses = np.array([1.0, 1.0, 1.0, 3.0])  # std = sqrt(0.75) ≈ 0.866
    assert basin_ratio(losses, 1.0) == 0.75
    assert basin_ratio(losses, 3.0) == 0.25
    assert basin_ratio(np.full(9, 2.0), 2.0) == 1.0  # a perfectly flat grid


def test_directions_have_the_filter_norms_of_the_weights_and_skip_biases_and_bn():
    model = SmallCNN(10)
    params = {k: p.detach() for k, p in model.named_parameters()}
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for name, p in params.items():
        if p.dim() <= 1:
            assert torch.all(d[name] == 0), name
        else:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), p.flatten(1).norm(dim=1))


def test_the_grids_are_centred_on_the_model_and_seeded():
    torch.manual_seed(0)
    model = SmallCNN(10).eval()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    with torch.no_grad():
        center = float(F.cross_entropy(model(x), y))
    ls = loss_landscape(model, x, y, steps_1d=5, steps_2d=5, seed=3)
    assert ls.center == pytest.approx(center, rel=1e-5)
    assert ls.curve[2] == pytest.approx(center, rel=1e-5)
    assert ls.surface[2, 2] == pytest.approx(center, rel=1e-5)
    assert ls.surface.shape == (5, 5) and ls.surface.max() > center  # moving away costs loss
    again = loss_landscape(model, x, y, steps_1d=5, steps_2d=5, seed=3)
    assert np.array_equal(ls.surface, again.surface)
    assert 0.0 < ls.basin_ratio <= 1.0
