"""Errors a user can fix by changing the config or the data on disk.

``datamodules`` does not import ``unlearning`` (see STYLE.md), so the data layer has its own
user-error type; ``train.py`` treats it like ``unlearning.errors.ConfigError``: one clear
message,
no stack trace.
"""

from __future__ import annotations


class DataConfigError(ValueError):
    """A data-related config value is wrong: names the key, the value and the fix."""

    def __init__(self, key: str, value: object, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key}={value!r}: {fix}")


class DatasetNotFoundError(DataConfigError):
    """A real dataset is not where the config says: the path looked in and the expected layout."""

    def __init__(self, key: str, path: object, layout: str) -> None:
        super().__init__(
            key,
            str(path),
            f"dataset not found at {path}. Expected layout:\n{layout}\n"
            "Datasets are never downloaded at run time: put the files there, or point "
            "paths.data_dir (or the dataset's root) at them.",
        )
