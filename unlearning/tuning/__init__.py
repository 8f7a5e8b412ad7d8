"""Equal-budget tuning (issue 16): every method searched with the same rules, trials and
objective, its selection rerun over seeds and reported (``python -m unlearning.tuning``)."""
