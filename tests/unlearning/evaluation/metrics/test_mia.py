"""Membership inference (000 App. C.3): chance on indistinguishable sets, ~1 on memorised F."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.evaluation.metrics.mia import attack_features, avg_gap, membership_inference


def test_attack_features_are_softmax_confidence_and_entropy():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    feats = attack_features(logits, torch.tensor([0, 1]))
    assert feats.shape == (2, 4)
    assert feats[0] == pytest.approx([0.5, 0.5, 0.5, 0.6931471805599453])
    assert feats[1, 2] == pytest.approx(0.0, abs=1e-8) and feats[1, 3] == pytest.approx(0, abs=1e-6)


def test_mia_is_near_chance_when_members_and_non_members_are_indistinguishable():
    gen = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randn(n, 5, generator=gen) * 2, torch.randint(0, 5, (n,), generator=gen)

    value = membership_inference(draw(600), draw(600), draw(600), seed=0)
    assert 0.35 <= value <= 0.65


@pytest.fixture(scope="module")
def overfit():
    """An MLP that memorises random labels of R ∪ F; held-out points come from the same
    distribution (so only membership distinguishes them)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 20, generator=gen)
    y = torch.randint(0, 4, (600,), generator=gen)
    train = slice(0, 300)  # R = [0, 250), F = [250, 300)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
    assert (logits[train].argmax(1) == y[train]).float().mean() == 1.0  # memorised
    return logits, y


def test_mia_is_about_one_on_a_memorised_forget_set(overfit):
    logits, y = overfit
    retain, forget, test = slice(0, 250), slice(250, 300), slice(300, 500)
    value = membership_inference(
        (logits[retain], y[retain]), (logits[test], y[test]), (logits[forget], y[forget])
    )
    assert value >= 0.9


def test_mia_judges_held_out_samples_from_the_test_distribution_non_members(overfit):
    logits, y = overfit
    retain, test, held_out = slice(0, 250), slice(300, 500), slice(500, 600)
    value = membership_inference(
        (logits[retain], y[retain]), (logits[test], y[test]), (logits[held_out], y[held_out])
    )
    assert value <= 0.2


def test_avg_gap_is_the_mean_absolute_gap_over_ua_mia_ra_ta():
    unlearned = {"ua": 0.10, "mia_efficacy": 0.50, "ra": 0.95, "ta": 0.90}
    oracle = {"ua": 0.05, "mia_efficacy": 0.60, "ra": 0.99, "ta": 0.90}
    assert avg_gap(unlearned, oracle) == pytest.approx((0.05 + 0.10 + 0.04 + 0.0) / 4)
