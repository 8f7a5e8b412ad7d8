"""Membership inference attacks on the forget set (000 App. C.3, 004 §5.1; SPEC §5), and the
Avg. Gap of 004 §5.1.

Every attack here is a binary classifier trained on the model's outputs on the retain set R
(label *member*) and on the test set D_test (label *non-member*), then applied to the forget set
F (000 App. C.3, after Jia et al. 2023, [18] there).

Two attacks:

* :func:`svc_mia` — the published protocol, Jia et al.'s ``SVC_MIA`` (the Unlearn-Sparse and
  SalUn code bases, whose numbers 004 and SalUn report): one scikit-learn RBF SVC
  (``C=3, gamma="auto"``, raw features) per *variant* — correctness 1[argmax p = y], confidence
  p_y, entropy, modified entropy (Song & Mittal 2021) or the softmax vector p — trained on the
  first min(|R|, |D_test|) retain samples (members) and all of D_test (non-members); the result
  is the fraction of F judged *non-member*, MIA-efficacy (higher is better). The confidence
  variant is what 004 (Table 2's "MIA_Score") and SalUn report.
* :func:`membership_inference` — the framework's earlier combined attack: one RBF SVC on the
  standardised concatenation of the softmax vector, confidence and entropy, trained on equal
  seeded subsamples of R and D_test; the result is the fraction of F judged *member*.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

#: the metrics averaged by Avg. Gap (004 §5.1), as keys of the metrics dict
AVG_GAP_METRICS = ("ua", "mia_efficacy", "ra", "ta")
#: the feature variants of Jia et al.'s ``SVC_MIA``, in the reference code's order
VARIANTS = ("correctness", "confidence", "entropy", "m_entropy", "prob")
#: log(0) is read as log(1e-30), as the reference code does
LOG_FLOOR = 1e-30


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(LOG_FLOOR))


def variant_features(logits: torch.Tensor, labels: torch.Tensor, variant: str) -> np.ndarray:
    """``(n, d)`` features of one ``SVC_MIA`` variant (Jia et al. 2023) from logits z and labels
    y, with p = softmax(z):

    * ``correctness``: 1[argmax_k p_k = y];
    * ``confidence``: p_y;
    * ``entropy``: −Σ_k p_k log p_k;
    * ``m_entropy``: the modified entropy of Song & Mittal 2021 (eq. 9 there),
      −(1 − p_y) log p_y − Σ_{k≠y} p_k log(1 − p_k). The reference code's ``m_entropy`` indexes
      ``probs[:, labels]`` — every row at every label of the batch — so its value depends on the
      batch's other labels; this is the paper's per-sample formula;
    * ``prob``: the softmax vector p.
    """
    probs = torch.softmax(logits.double(), dim=1)
    idx = labels.long().view(-1, 1)
    p_y = probs.gather(1, idx)
    if variant == "correctness":
        feats = (probs.argmax(1, keepdim=True) == idx).double()
    elif variant == "confidence":
        feats = p_y
    elif variant == "entropy":
        feats = -(probs * _log(probs)).sum(1, keepdim=True)
    elif variant == "m_entropy":
        others = probs.scatter(1, idx, 0.0)  # p_k for k ≠ y, 0 at y
        feats = -(1 - p_y) * _log(p_y) - (others * _log(1 - others)).sum(1, keepdim=True)
    elif variant == "prob":
        feats = probs
    else:
        raise ValueError(f"unknown SVC_MIA variant {variant!r}; one of {VARIANTS}")
    return feats.numpy()


def svc_mia(
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    targets: tuple[torch.Tensor, torch.Tensor],
    variants: tuple[str, ...] = VARIANTS,
    max_samples: int | None = None,
) -> dict[str, float]:
    """MIA-efficacy of each variant (Jia et al. 2023's ``SVC_MIA``, as 004 and SalUn evaluate):
    the fraction of ``targets`` (F) that the variant's attack judges *non-member*.

    The shadow training set is the reference code's: the first ``n = |non_members|`` samples of
    ``members`` (``Subset(retain, range(len(test)))``; all of them if R is smaller) labelled 1
    and all ``non_members`` labelled 0; ``SVC(C=3, gamma="auto", kernel="rbf")`` on the raw
    features. ``max_samples`` (``None``: the protocol) keeps only the first ``max_samples`` of
    each, for data sets whose D_test makes an SVC fit too slow.

    Raises ``ValueError`` if any set is empty or a feature is not finite.
    """
    from sklearn.svm import SVC

    for name, (logits, _) in (("R", members), ("D_test", non_members), ("F", targets)):
        if len(logits) == 0:
            raise ValueError(f"membership inference needs a non-empty {name}")
    n_out = len(non_members[0]) if max_samples is None else min(len(non_members[0]), max_samples)
    n_in = min(len(members[0]), n_out)
    result = {}
    for variant in variants:
        x_in = variant_features(members[0][:n_in], members[1][:n_in], variant)
        x_out = variant_features(non_members[0][:n_out], non_members[1][:n_out], variant)
        x_target = variant_features(*targets, variant)
        if not all(np.isfinite(x).all() for x in (x_in, x_out, x_target)):
            raise ValueError(f"the {variant} features hold NaN or inf")
        attack = SVC(C=3.0, gamma="auto", kernel="rbf")
        attack.fit(np.concatenate([x_in, x_out]), np.r_[np.ones(n_in), np.zeros(n_out)])
        result[variant] = float(1.0 - attack.predict(x_target).mean())
    return result


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
