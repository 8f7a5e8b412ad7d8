"""Train×train influence matrices and their principal components, for the influence-PC forget
sets of 002 App. M (after Georgiev et al. 2024).

Two constructions of the n×n matrix ``infl[i, j]`` = the effect of training on sample i on the
model's margin on training sample j:

* :func:`datamodel_influence` (the *datamodel* estimate): from K models trained on random
  subsets S_k ⊂ S (the memorization stage's members), the difference of sample j's mean margin
  over the members that trained on i and those that did not — Feldman & Zhang's influence
  estimator (Feldman & Zhang 2020, eq. 2/§2.1, with the margin in place of the 0/1 correctness;
  000 eq. 9 is its diagonal).
* :func:`trak_influence` (the *TRAK* estimate): TRAK scores (Park et al. 2023, eq. 16) of one or
  more trained models, computed by MadryLab's ``traker`` library with random projections.

:func:`principal_components` then treats each target j's column ``infl[:, j]`` as its datamodel
embedding (Ilyas et al. 2022, §4.2) and projects the embeddings on their top principal components;
:func:`datamodules.splits.influence_forget_set` picks F from one component's projections.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import svds
from torch import nn

log = logging.getLogger(__name__)

#: the constructions of the influence matrix (``split.attribution``)
ATTRIBUTIONS = ("datamodel", "trak")


def datamodel_influence(in_mask: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """The datamodel estimate ``infl[i, j] = E[m_j | i ∈ S_k] − E[m_j | i ∉ S_k]`` (float32,
    n×n) from ``in_mask`` ((K, n) bool, i ∈ S_k) and ``margins`` ((K, n), member k's margin on
    sample j).

    This is Feldman & Zhang's (2020) influence estimator with margins instead of correctness; the
    diagonal is the margin version of the memorization score (000 eq. 9). Chosen over the linear
    datamodel regression of Ilyas et al. (2022, eq. 3) because it is closed-form and defined for
    any K (the regression has n unknowns per target and needs K ≫ n models or a LASSO penalty to
    tune), and under independent random inclusion it estimates the same first-order effect
    (the regression coefficient of a linear datamodel is E[m_j | i in] − E[m_j | i out]).

    One matrix product gives all n² pairs: ``infl = Wᵀ·margins`` with the (K, n) weights
    ``W[k, i] = [i ∈ S_k]/n_in(i) − [i ∉ S_k]/n_out(i)``. Each column of W sums to 0, so the
    margins are centred per sample first (same result, float32 product without cancellation);
    the only n×n array is the float32 result (10 GB for CIFAR-10's 50,000 samples).

    A sample that every member trained on, or none did, has no estimate: its row is 0 (no
    effect) and a warning counts such samples (|S|·(0.7^K + 0.3^K) expected; none from K ≈ 32).
    """
    mask = np.asarray(in_mask, dtype=bool)
    values = np.asarray(margins, dtype=np.float64)
    if mask.ndim != 2 or mask.shape != values.shape:
        raise ValueError(
            f"in_mask {mask.shape} and margins {values.shape} must both be (members, samples)"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"{int((~np.isfinite(values)).sum())} margins are not finite: a member diverged; "
            "retrain the memorization members"
        )
    members = mask.shape[0]
    n_in = mask.sum(axis=0).astype(np.float64)
    n_out = members - n_in
    defined = (n_in > 0) & (n_out > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(mask, 1.0 / n_in, -1.0 / n_out)
    weights[:, ~defined] = 0.0
    centred = values - values.mean(axis=0, keepdims=True)
    infl = weights.T.astype(np.float32) @ centred.astype(np.float32)
    if not defined.all():
        log.warning(
            "influence: %d of %d samples were in every member's subset or in none; their "
            "influence is set to 0 (train more members)",
            int((~defined).sum()),
            len(defined),
        )
    return infl


def trak_influence(
    models: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    proj_dim: int,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """TRAK scores of S on S (float32, n×n, ``[i, j]`` = train sample i on target j) from the
    trained ``models``, with ``traker`` (Park et al. 2023, eq. 16: the model output function is
    the margin log p/(1−p), per-sample gradients projected to ``proj_dim`` dimensions with a
    Gaussian JL matrix seeded by ``seed``, scores averaged over the models).

    Float32 throughout (``use_half_precision=False``); traker's memory-mapped store lives in a
    temporary directory that is removed afterwards.
    """
    from trak import TRAKer

    n = len(y)
    with tempfile.TemporaryDirectory(prefix="trak_") as save_dir:

        def open_traker() -> TRAKer:
            return TRAKer(
                model=models[0].to(device).eval(),
                task="image_classification",
                train_set_size=n,
                save_dir=save_dir,
                device=str(device),
                proj_dim=proj_dim,
                projector_seed=seed,
                use_half_precision=False,
                logging_level=logging.WARNING,
            )

        batches = [
            (x[start : start + batch_size].to(device), y[start : start + batch_size].to(device))
            for start in range(0, n, batch_size)
        ]
        states = [{k: v.to(device) for k, v in m.state_dict().items()} for m in models]
        traker = open_traker()
        for model_id, state in enumerate(states):
            traker.load_checkpoint(state, model_id=model_id)
            for batch in batches:
                traker.featurize(batch=batch, num_samples=len(batch[1]))
        traker.finalize_features()
        # a second TRAKer reads the features back from save_dir, as traker's own examples do
        # between featurizing and scoring: finalize_features frees the first one's projection
        # matrix and it is not rebuilt for a model ID it has already seen (traker 0.3.2)
        traker = open_traker()
        for model_id, state in enumerate(states):
            traker.start_scoring_checkpoint("train", state, model_id=model_id, num_targets=n)
            for batch in batches:
                traker.score(batch=batch, num_samples=len(batch[1]))
        scores = np.array(traker.finalize_scores(exp_name="train"), dtype=np.float32)
    if not np.isfinite(scores).all():
        raise ValueError("TRAK scores are not finite: lower split.proj_dim or check the model")
    return scores


@dataclass
class Components:
    """The top principal components of the targets' datamodel embeddings.

    ``projections[j, c]``: target j's projection on component c+1; ``loadings[:, c]``: the unit
    direction in the space of training samples; ``explained[c]``: the share of the embeddings'
    total variance that component c+1 carries."""

    projections: np.ndarray
    loadings: np.ndarray
    explained: np.ndarray


def principal_components(
    infl: np.ndarray, components: int = 2, self_influence: bool = False
) -> Components:
    """PCA of the datamodel embeddings: row j of ``infl.T`` (target j's weights over the training
    samples, Ilyas et al. 2022 §4.2), centred over the targets; the top ``components`` singular
    triplets by ARPACK (``scipy.sparse.linalg.svds``, to machine precision, from a fixed start
    vector): O(n²) per iteration, where a full SVD of CIFAR-10's 50,000 × 50,000 would be O(n³).

    The matrix is not symmetrised: influence is not symmetric (i → j differs from j → i), and
    002 App. M projects each target's datamodel, a row of the datamodel matrix, so the rows are the
    observations and the training samples the features. ``self_influence=False`` zeroes the
    diagonal first: a sample's effect on itself (its memorization) is much larger than any
    cross-effect, and each diagonal entry is a direction of its own, so with it the top components
    single out individual memorized samples instead of the coherent subpopulations 002 studies
    (docs/influence.md).

    Each component's sign is fixed so that the target with the largest |projection| projects
    positively (an SVD's signs are arbitrary; "highest projection" needs one).
    """
    embeddings = np.array(infl, dtype=np.float32).T  # float32: 10 GB, not 20, for CIFAR-10
    n = embeddings.shape[0]
    if embeddings.shape != (n, n):
        raise ValueError(f"the influence matrix must be square, got {infl.shape}")
    if not 1 <= components < n - 1:
        raise ValueError(f"components must be in [1, {n - 2}], got {components}")
    if not self_influence:
        np.fill_diagonal(embeddings, 0.0)
    embeddings -= embeddings.mean(axis=0, keepdims=True)
    start = np.random.default_rng(0).standard_normal(n)
    left, singular, right_t = svds(embeddings, k=components, tol=0, v0=start)
    order = np.argsort(-singular)
    projections = left[:, order] * singular[order]
    loadings = right_t[order].T.copy()
    for c in range(components):
        if projections[np.argmax(np.abs(projections[:, c])), c] < 0:
            projections[:, c] *= -1
            loadings[:, c] *= -1
    total = float(np.square(embeddings).sum(dtype=np.float64))
    explained = singular[order] ** 2 / total if total > 0 else np.zeros(components)
    return Components(projections, loadings, explained)


def agreement(a: Components, b: Components, top: int = 100) -> dict[str, float]:
    """How far two constructions agree, per component c: ``|cos|`` between their projection
    vectors (``cos_pc<c>``; the sign of a PC is arbitrary) and, with b's sign aligned to a's, the
    overlap |A ∩ B| / top of their ``top`` targets of highest projection (``top_pc<c>``: the
    forget sets 4/5 of 002 App. M that each would choose)."""
    out: dict[str, float] = {}
    for c in range(min(a.projections.shape[1], b.projections.shape[1])):
        pa, pb = a.projections[:, c], b.projections[:, c]
        denom = float(np.linalg.norm(pa) * np.linalg.norm(pb))
        cos = float(pa @ pb) / denom if denom > 0 else 0.0
        out[f"cos_pc{c + 1}"] = abs(cos)
        k = min(top, len(pa))
        top_a = np.argsort(-pa, kind="stable")[:k]
        top_b = np.argsort(-pb if cos >= 0 else pb, kind="stable")[:k]
        out[f"top_pc{c + 1}"] = len(np.intersect1d(top_a, top_b)) / k
    return out


def save_components(path: Path, infl: np.ndarray, pcs: Components) -> None:
    """Write the matrix and its components as one ``.npz`` (``influence``, ``projections``,
    ``loadings``, ``explained``)."""
    np.savez(
        path,
        influence=infl.astype(np.float32),
        projections=pcs.projections,
        loadings=pcs.loadings,
        explained=pcs.explained,
    )
