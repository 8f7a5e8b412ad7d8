"""Theory labs: CPU-sized synthetic experiments that check the source papers' claims (SPEC §6).

One module per lab, each with a ``run(cfg, **settings)`` called by ``train.py`` when
``experiment=theory/<lab>`` sets the top-level ``lab`` key (docs/theory/README.md):

* :mod:`.signal_noise` — 000 §2-3: κ/ζ under SGD vs SAM and NegGrad, Lemma 3.1, ToW vs α;
* :mod:`.stability_frontier` — 003 §4.1: the linear unlearning recursion vs Thm 3.6/3.7;
* :mod:`.memorization_forgetting` — 003 §4.2: memorization region vs forget loss;
* :mod:`.logistic_da` — 002 §4: descent-ascent vs retraining in ridge logistic regression.

Reusable pieces: :mod:`.coherence` (per-sample Hessians with ``torch.func``, σ and λ_max(D) of
003 Def. 3.1-3.4 for any model and retain/forget split), :mod:`.recursion` (003 eq. 3-4 and its
exact second moment), :mod:`.decomposition` (000 eq. 2).
"""
