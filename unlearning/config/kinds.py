"""The kinds of value a config key can hold, written once and reused by every check.

A :class:`Kind` says what a key allows (``allowed``, read after "must be"), how to test a value
and an example value that passes. :func:`require` turns a failed test into the one message
shape of every user error (docs/errors.md)::

    <key>=<value>: must be <allowed> [(<why>)], e.g. <key>=<example>

The rule table (:mod:`unlearning.config.rules`) maps config keys to kinds; the theory labs'
checks (:mod:`unlearning.theory.checks`) use the same kinds for their ``lab.*`` settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unlearning.errors import ConfigError

#: what a kind's test returns: ``True`` (allowed), ``False`` (not allowed) or why not
Verdict = bool | str


@dataclass(frozen=True)
class Kind:
    """What a key allows: ``allowed`` completes "must be ...", ``test`` judges a value
    (``True``, ``False`` or a reason why not) and ``example`` is a value that passes."""

    allowed: str
    test: Callable[[Any], Verdict]
    example: str

    def __or__(self, other: Kind) -> Kind:
        """A value of either kind (e.g. a positive integer or ``auto``)."""

        def either(value: Any) -> Verdict:
            first = self.test(value)
            return True if first is True else other.test(value) is True or first

        return Kind(f"{self.allowed} or {other.allowed}", either, self.example)


def require(key: str, value: Any, kind: Kind, example: str | None = None) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is of ``kind``."""
    verdict = kind.test(value)
    if verdict is not True:
        why = verdict if isinstance(verdict, str) else None
        shown = example if example is not None else kind.example
        raise reject(key, value, kind.allowed, shown, why)


def reject(key: str, value: Any, allowed: str, example: str, why: str | None = None) -> ConfigError:
    """The one message shape: ``<key>=<value>: must be <allowed> (<why>), e.g. <key>=<example>``
    (``example`` that already reads ``key=...`` or another fix is used as it is)."""
    reason = f" ({why})" if why else ""
    fix = example if "=" in example or " " in example else f"{key}={example}"
    return ConfigError(key, value, f"must be {allowed}{reason}, e.g. {fix}")


# ------------------------------------------------------------------------------ primitives


def is_int(value: Any) -> bool:
    """An integer, not a boolean (``True`` is an ``int`` in Python, never one in a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number, not a boolean: ``nan`` and ``inf`` are no learning rates."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else str(value)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """``[0, 1]``, ``(0, 1)``, ``> 0``, ``≥ 1`` (one-sided when a bound is infinite)."""
    if math.isinf(high):
        return f"{'>' if low_open else '≥'} {_bound(low)}"
    if math.isinf(low):
        return f"{'<' if high_open else '≤'} {_bound(high)}"
    return f"{'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"


def integer(low: float = -math.inf, high: float = math.inf, example: str | None = None) -> Kind:
    """An integer in ``[low, high]``; ``integer(1)`` is a positive integer."""
    if low == 1 and math.isinf(high):
        allowed = "a positive integer"
    elif math.isinf(low) and math.isinf(high):
        allowed = "an integer"
    elif math.isinf(high):
        allowed = f"an integer {_interval(low, high, False, False)}"
    else:
        allowed = f"an integer in {_interval(low, high, False, False)}"
    default = _bound(max(low, min(high, 1)))
    return Kind(allowed, lambda v: is_int(v) and low <= v <= high, example if example else default)


def number(
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    example: str | None = None,
) -> Kind:
    """A finite number between ``low`` and ``high`` (each bound open or closed)."""

    def test(value: Any) -> bool:
        if not is_number(value):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    if low == 0 and low_open and math.isinf(high):
        allowed = "a positive finite number"
    elif math.isinf(low) and math.isinf(high):
        allowed = "a finite number"
    elif math.isinf(low) or math.isinf(high):
        allowed = f"a finite number {_interval(low, high, low_open, high_open)}"
    else:
        allowed = f"a number in {_interval(low, high, low_open, high_open)}"
    if example is None:
        inside = [v for v in (0.1, 1.0, low, high) if test(v)]
        example = _bound(inside[0]) if inside else "1"
    return Kind(allowed, test, example)


def choice(options: Sequence[Any], shown: Sequence[Any] | None = None) -> Kind:
    """One of ``options`` (``shown``: the subset the message lists, e.g. without aliases)."""
    allowed = list(shown if shown is not None else options)
    return Kind(f"one of {allowed}", lambda v: _is_member(v, options), str(allowed[0]))


def _is_member(value: Any, options: Sequence[Any]) -> bool:
    # 1 == True in Python; a boolean is never an integer option, nor 1.0 a string option
    return any(type(value) is type(o) and value == o for o in options)


def literal(value: Any) -> Kind:
    """Exactly ``value`` (``null``, ``auto``), to combine with ``|``."""
    shown = "null" if value is None else str(value)
    return Kind(shown, lambda v: _is_member(v, [value]), shown)


def optional(kind: Kind) -> Kind:
    """``null`` or a value of ``kind``."""
    either = literal(None) | kind
    return Kind(f"{kind.allowed} or null", either.test, kind.example)


def list_of(kind: Kind, length: int | None = None, example: str | None = None) -> Kind:
    """A non-empty list of values of ``kind`` (of exactly ``length`` items if given)."""

    def test(values: Any) -> bool:
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            return False
        if not values or (length is not None and len(values) != length):
            return False
        return all(kind.test(v) is True for v in values)

    size = f"a list of {length}" if length is not None else "a non-empty list of"
    items = kind.allowed.removeprefix("a ").removeprefix("an ").removeprefix("one of ")
    plural = f"values in {items}" if kind.allowed.startswith("one of ") else _plural(items)
    return Kind(f"{size} {plural}", test, example or f"[{kind.example}]")


def _plural(text: str) -> str:
    head, _, tail = text.partition(" in ")
    for noun in ("integer", "number", "string", "seed"):
        head = head.replace(noun, noun + "s")
    return f"{head} in {tail}" if tail else head


#: ``true`` or ``false`` — a YAML boolean, not the strings "yes", "1" or "True"
BOOLEAN = Kind("true or false", lambda v: isinstance(v, bool), "false")
#: a non-empty string (names, keys, paths that are read)
TEXT = Kind("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "", "name")
#: an integer > 0 (epochs, batch sizes, counts)
POSITIVE_INT = integer(1)
#: an integer ≥ 0 (workers, lags)
COUNT = integer(0, example="0")
#: a finite number > 0 (learning rates, radii, thresholds)
POSITIVE = number(0, low_open=True, example="0.1")
#: a finite number ≥ 0 (weight decay, momentum)
NON_NEGATIVE = number(0, example="0")
#: a fraction in [0, 1] (retain weight α)
UNIT = number(0, 1, example="0.5")
#: a fraction in (0, 1) (subset fractions, mask fractions)
OPEN_UNIT = number(0, 1, low_open=True, high_open=True, example="0.5")
#: a seed: what ``lightning.seed_everything`` and numpy's generators accept, [0, 2**32 − 1]
SEED = integer(0, 2**32 - 1, example="0")
