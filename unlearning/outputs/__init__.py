"""What a job leaves behind: ``results.json`` and the summary table, the figures, and what goes to
the loggers (CSV, Weights & Biases)."""
