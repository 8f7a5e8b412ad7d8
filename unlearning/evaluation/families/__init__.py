"""The evaluation families, one module each, selected by ``_target_`` in ``conf/eval/*.yaml``
(docs/evaluation.md): MIA and Avg. Gap, entanglement, loss landscape, Hessian sharpness, KLoM and
the feature plots."""
