"""Membership inference (000 App. C.3): chance on indistinguishable sets, ~1 on memorised F;
Jia et al.'s SVC_MIA variants as published."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearning.evaluation.metrics.mia import (
    attack_features,
    avg_gap,
    membership_inference,
    svc_mia,
    variant_features,
)


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


# ------------------------------------------------------- Jia et al.'s SVC_MIA, as published


def test_variant_features_match_a_hand_computation():
    """p = softmax([ln 6, ln 3, ln 1]) = (0.6, 0.3, 0.1), label 0."""
    logits = torch.log(torch.tensor([[6.0, 3.0, 1.0]]))
    label = torch.tensor([0])
    assert variant_features(logits, label, "confidence")[0, 0] == pytest.approx(0.6)
    assert variant_features(logits, label, "correctness")[0, 0] == 1.0
    assert variant_features(logits, torch.tensor([1]), "correctness")[0, 0] == 0.0
    entropy = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert variant_features(logits, label, "entropy")[0, 0] == pytest.approx(entropy)
    # Song & Mittal 2021: −(1 − p_y) log p_y − Σ_{k≠y} p_k log(1 − p_k)
    m_entropy = -(0.4 * math.log(0.6)) - 0.3 * math.log(0.7) - 0.1 * math.log(0.9)
    assert variant_features(logits, label, "m_entropy")[0, 0] == pytest.approx(m_entropy)
    assert variant_features(logits, label, "prob")[0] == pytest.approx([0.6, 0.3, 0.1])


def test_modified_entropy_of_a_sample_does_not_depend_on_the_batch():
    """The reference code indexes ``probs[:, labels]`` across the batch; the paper's formula is
    per sample, so a sample's value is the same alone and among others."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 4, generator=gen), torch.randint(0, 4, (8,), generator=gen)
    batch = variant_features(logits, labels, "m_entropy")[:, 0]
    alone = [
        variant_features(logits[i : i + 1], labels[i : i + 1], "m_entropy")[0, 0] for i in range(8)
    ]
    assert batch == pytest.approx(alone)


def _confident(n, p_y, gen):
    """``n`` two-class samples of label 0 whose confidence p_y is about ``p_y``."""
    margin = math.log(p_y / (1 - p_y)) + 0.05 * torch.randn(n, generator=gen)
    return torch.stack([margin, torch.zeros(n)], 1), torch.zeros(n, dtype=torch.long)


def test_svc_mia_efficacy_is_the_fraction_of_f_judged_non_member():
    gen = torch.Generator().manual_seed(0)
    members, non_members = _confident(200, 0.99, gen), _confident(200, 0.6, gen)
    forgotten, remembered = _confident(50, 0.6, gen), _confident(50, 0.99, gen)
    assert svc_mia(members, non_members, forgotten, ("confidence",)) == {"confidence": 1.0}
    assert svc_mia(members, non_members, remembered, ("confidence",)) == {"confidence": 0.0}


def test_svc_mia_trains_on_the_first_test_size_retain_samples_as_the_reference_code():
    """Shadow members are ``Subset(retain, range(len(test)))``: with R's first |D_test| samples
    confident and the rest not, unconfident F samples are still judged non-members."""
    gen = torch.Generator().manual_seed(0)
    first, rest = _confident(100, 0.99, gen), _confident(300, 0.6, gen)
    retain = (torch.cat([first[0], rest[0]]), torch.cat([first[1], rest[1]]))
    efficacy = svc_mia(retain, _confident(100, 0.6, gen), _confident(50, 0.6, gen), ("confidence",))
    assert efficacy == {"confidence": 1.0}


def test_retrain_has_high_and_the_original_model_low_mia_efficacy(config):
    """004 Table 1 (class-wise forgetting): Retrain's MIA-efficacy is 100%, the original model's
    near 0. On digits, class 0 forgotten (measured: oracle 1.0, original 0.0)."""
    from unlearning.pipeline.run import run

    cfg = config("split=class", "method=retrain", "eval=none", "eval.mia.enabled=true")
    m = run(cfg)["metrics"]
    assert m["oracle/mia_efficacy"] >= 0.9 and m["mia_efficacy"] == m["oracle/mia_efficacy"]
    assert m["original/mia_efficacy"] <= 0.1
    assert m["mia"] == pytest.approx(1 - m["mia_efficacy"])
    assert m["mia_efficacy"] == m["mia_efficacy/confidence"]
