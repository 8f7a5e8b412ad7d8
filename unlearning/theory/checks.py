"""Validation of a lab's settings (``lab.<key>``), run before any computation.

The labs' keys depend on each lab's ``run`` signature, so each lab checks its own values with
these functions; they apply the shared kinds of :mod:`unlearning.config.kinds` and raise
:class:`unlearning.errors.ConfigError` in the one message shape (docs/errors.md). The
lab's seeds and unknown ``lab.*`` keys are checked before the lab starts
(:func:`unlearning.config.validation.validate_config`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from unlearning.config import kinds


def _key(name: str) -> str:
    return f"lab.{name}"


def positive(name: str, value: Any, example: str, integer: bool = False) -> None:
    """``value`` is a positive finite number (integer when ``integer``)."""
    kinds.require(_key(name), value, kinds.POSITIVE_INT if integer else kinds.POSITIVE, example)


def in_range(name: str, value: Any, low: float, high: float, example: str) -> None:
    """``low ≤ value ≤ high``, a finite number (``high`` may be ``inf``)."""
    kinds.require(_key(name), value, kinds.number(low, high), example)


def number_list(
    name: str,
    values: Any,
    low: float,
    high: float,
    example: str,
    integer: bool = False,
    open_high: bool = False,
) -> list[float]:
    """A non-empty list of numbers in ``[low, high]`` (``[low, high)`` with ``open_high``),
    returned as floats (as ints with ``integer``)."""
    if integer:
        top = math.ceil(high) - 1 if open_high and float(high).is_integer() else math.floor(high)
        item = kinds.integer(math.ceil(low), top)
    else:
        item = kinds.number(low, high, high_open=open_high)
    values = (
        list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
    )
    kinds.require(_key(name), values, kinds.list_of(item), example)
    return [int(v) if integer else float(v) for v in values]


def choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """``value`` is one of ``allowed``."""
    kinds.require(_key(name), value, kinds.choice(allowed))
