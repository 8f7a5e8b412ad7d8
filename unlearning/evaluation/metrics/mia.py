"""Membership inference attack on the forget set (000 App. C.3, 004 §5.1; SPEC §5), and the
Avg. Gap of 004 §5.1.

The attack follows the evaluation of 000 App. C.3 (after Jia et al. 2023, [18] there): a binary
classifier is trained on the model's outputs on the retain set R (label *member*) and on the test
set D_test (label *non-member*), then applied to the forget set F. ``mia`` is the fraction of F
judged *member* (000's "MIA correctness", lower is better, ~0.5 or below after good unlearning);
``mia_efficacy = 1 − mia`` (004's MIA score, higher is better).

Features of a sample with logits z and label y: the softmax vector p = softmax(z), the
confidence p_y and the entropy −Σ_k p_k log p_k. The classifier is scikit-learn's RBF support
vector machine on standardised features (the classifier of Jia et al.'s ``SVC_MIA``), trained on
equal numbers of members and non-members.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

#: the metrics averaged by Avg. Gap (004 §5.1), as keys of the metrics dict
AVG_GAP_METRICS = ("ua", "mia_efficacy", "ra", "ta")


def attack_features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``(n, K + 2)`` features: softmax vector, confidence p_y and entropy (000 App. C.3)."""
    probs = torch.softmax(logits.double(), dim=1)
    confidence = probs.gather(1, labels.long().view(-1, 1))
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(1, keepdim=True)
    return torch.cat([probs, confidence, entropy], dim=1).numpy()


def membership_inference(
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor],
    max_samples: int = 2000,
    seed: int = 0,
) -> float:
    """Fraction of ``targets`` that the attack classifies as members (000 App. C.3).

    Args:
        members: ``(logits, labels)`` of the retain set R (training members).
        non_members: ``(logits, labels)`` of D_test.
        targets: ``(logits, labels)`` of the set under attack, the forget set F.
        max_samples: at most this many members and as many non-members train the attack; both
            are subsampled (seeded) to the same size ``min(|R|, |D_test|, max_samples)``.
        seed: seeds the subsampling.

    Raises ``ValueError`` if any set is empty.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    for name, (logits, _) in (("R", members), ("D_test", non_members), ("F", targets)):
        if len(logits) == 0:
            raise ValueError(f"membership inference needs a non-empty {name}")
    rng = np.random.default_rng(seed)
    n = min(len(members[0]), len(non_members[0]), max_samples)
    x_in = attack_features(*members)[rng.choice(len(members[0]), n, replace=False)]
    x_out = attack_features(*non_members)[rng.choice(len(non_members[0]), n, replace=False)]
    x = np.concatenate([x_in, x_out])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    attack = make_pipeline(StandardScaler(), SVC(C=3.0, gamma="auto", kernel="rbf"))
    attack.fit(x, y)
    return float(attack.predict(attack_features(*targets)).mean())


def avg_gap(unlearned: Mapping[str, float], oracle: Mapping[str, float]) -> float:
    """Avg. Gap (004 §5.1): mean over {UA, MIA-efficacy, RA, TA} of |unlearned − oracle|."""
    return float(np.mean([abs(unlearned[k] - oracle[k]) for k in AVG_GAP_METRICS]))
