"""The evaluation of a job's three models: the output store (one forward pass per model and set),
the pluggable metric families selected from ``conf/eval/`` and the pure metric functions they
call (``metrics/``)."""
