"""Machine unlearning on image classifiers: pipeline stages, methods, metrics, cache."""
