"""Machine unlearning on image classifiers (docs/architecture.md): pipeline, methods,
evaluation, memorization, outputs, report, config and theory labs."""
