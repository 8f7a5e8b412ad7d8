"""LightningDataModules and data sources: datasets, transforms, retain/forget/test loaders and
forget-set selection. Imports neither ``unlearning`` nor ``callbacks`` (STYLE.md)."""
