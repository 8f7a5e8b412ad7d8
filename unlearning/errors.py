"""User errors: raised before any expensive work, printed as one message without a traceback."""

from __future__ import annotations

from datamodules.errors import DataConfigError


class ConfigError(ValueError):
    """A config value is invalid. The message names the key, the bad value and the fix."""

    def __init__(self, key: str, value: object, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key}={value!r}: {fix}")


#: exception types that ``train.py`` reports as a user error (exit code 2, no traceback).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataConfigError)


def unwrap_user_error(error: BaseException) -> BaseException:
    """The user error behind ``error`` if it wraps one (``hydra.utils.instantiate`` re-raises a
    constructor's :class:`DataConfigError` as ``InstantiationException``), else ``error``."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, USER_ERRORS):
        cause = cause.__cause__
    return cause if cause is not None else error
