"""User errors: raised before any expensive work, printed as one message without a traceback."""

from __future__ import annotations

from datamodules.errors import DataConfigError


class ConfigError(ValueError):
    """A config value is invalid. The message names the key, the bad value and the fix."""

    def __init__(self, key: str, value: object, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key}={value!r}: {fix}")


class WriteError(ConfigError):
    """A file could not be written: a full disk or quota, a read-only folder, no permission
    (issue 19). Names the path, what was being written and the setting that chose the place;
    nothing partial becomes a cache entry, so a rerun after freeing space resumes."""

    def __init__(self, key: str, path: object, what: str, reason: str) -> None:
        self.path, self.what, self.reason = str(path), what, reason
        super().__init__(
            key,
            self.path,
            f"must be writable with free space (writing {what} failed: {reason}), e.g. free "
            f"space or point {key} at another disk, then rerun: finished stages are kept and the "
            "interrupted one resumes",
        )


class DivergedStageError(ConfigError):
    """Pretraining or the oracle diverged (non-finite loss or weights): its result is not a
    usable model, so it is never cached (issue 19). Names the key that most likely caused it,
    the stage and the step."""

    def __init__(self, key: str, value: object, stage: str, step: int, reason: str) -> None:
        self.stage, self.step, self.reason = stage, step, reason
        super().__init__(
            key,
            value,
            f"must let the {stage} stage train to finite weights ({reason} at step {step}; "
            f"nothing was cached), e.g. a smaller {key} such as {key}=0.1",
        )


#: exception types that ``train.py`` reports as a user error (exit code 2, no traceback).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataConfigError)


def unwrap_user_error(error: BaseException) -> BaseException:
    """The user error behind ``error`` if it wraps one (``hydra.utils.instantiate`` re-raises a
    constructor's :class:`DataConfigError` as ``InstantiationException``), else ``error``."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, USER_ERRORS):
        cause = cause.__cause__
    return cause if cause is not None else error
