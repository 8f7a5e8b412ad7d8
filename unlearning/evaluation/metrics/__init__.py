"""Evaluation metrics, one module per family. Metrics take models and loaders, never a method."""
