"""``python -m unlearning.report DIR``: aggregate finished jobs into tables shaped like 000 Table 1
and plots."""
