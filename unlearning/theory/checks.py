"""Validation of a lab's settings (``lab.<key>``), run before any computation.

Each check raises :class:`unlearning.config.errors.ConfigError` naming the key, the bad value and
the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from unlearning.config.errors import ConfigError


def _key(name: str) -> str:
    return f"lab.{name}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(name: str, value: Any, example: str, integer: bool = False) -> None:
    """``value`` is a positive number (integer when ``integer``)."""
    ok = _is_number(value) and value > 0 and (not integer or float(value).is_integer())
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(_key(name), value, f"must be {kind}, e.g. {_key(name)}={example}")


def in_range(name: str, value: Any, low: float, high: float, example: str) -> None:
    """``low ≤ value ≤ high``."""
    if not (_is_number(value) and low <= value <= high):
        raise ConfigError(
            _key(name), value, f"must lie in [{low}, {high}], e.g. {_key(name)}={example}"
        )


def number_list(
    name: str,
    values: Any,
    low: float,
    high: float,
    example: str,
    integer: bool = False,
    open_high: bool = False,
) -> list[float]:
    """A non-empty list of numbers in ``[low, high]`` (``[low, high)`` with ``open_high``)."""
    bad = not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0
    if not bad:
        for v in values:
            inside = _is_number(v) and low <= v and (v < high if open_high else v <= high)
            if not inside or (integer and not float(v).is_integer()):
                bad = True
                break
    if bad:
        bracket = ")" if open_high else "]"
        kind = "integers" if integer else "numbers"
        raise ConfigError(
            _key(name),
            values,
            f"must be a non-empty list of {kind} in [{low}, {high}{bracket}, "
            f"e.g. {_key(name)}={example}",
        )
    return [int(v) if integer else float(v) for v in values]


def choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(_key(name), value, f"choose one of {list(allowed)}")
