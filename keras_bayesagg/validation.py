"""Argument checks shared by every constructor, with one message style.

Each check returns the value in canonical form (int or float) or raises
`ValueError("<Owner>: <argument> must be <what>; got <value>.")`, also for wrong types
(a string, a bool, None), NaN and infinity.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence


def _fail(owner: str, argument: str, expectation: str, value: Any) -> ValueError:
    return ValueError(f"{owner}: {argument} must be {expectation}; got {value!r}.")


def _real(owner: str, argument: str, value: Any, expectation: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _fail(owner, argument, expectation, value)
    return float(value)


def finite_float(
    owner: str,
    argument: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A finite real number in the given range (bounds optional, inclusive by default)."""
    parts = ["a finite number"]
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high:g}")
    expectation = " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if len(parts) > 1 else "")
    number = _real(owner, argument, value, expectation)
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        raise _fail(owner, argument, expectation, value)
    return number


def positive_float(owner: str, argument: str, value: Any, expectation: str | None = None) -> float:
    """A finite number > 0 (`expectation` rewords the message when other values are accepted too)."""
    try:
        return finite_float(owner, argument, value, low=0.0, low_inclusive=False)
    except ValueError:
        if expectation is None:
            raise
        raise _fail(owner, argument, expectation, value) from None


def nonnegative_float(owner: str, argument: str, value: Any) -> float:
    return finite_float(owner, argument, value, low=0.0)


def power(owner: str, argument: str, value: Any) -> float:
    """An exponent in (0, 1]."""
    return finite_float(owner, argument, value, low=0.0, low_inclusive=False, high=1.0)


def whole_number(owner: str, argument: str, value: Any, *, minimum: int = 1) -> int:
    """A whole number >= minimum (integral floats such as 3.0 are accepted)."""
    expectation = f"a whole number >= {minimum}"
    number = _real(owner, argument, value, expectation)
    if number != int(number) or number < minimum:
        raise _fail(owner, argument, expectation, value)
    return int(number)


def optional_seed(owner: str, argument: str, value: Any) -> int | None:
    """None (a random seed) or a whole number >= 0."""
    return None if value is None else whole_number(owner, argument, value, minimum=0)


def optional_positive_float(owner: str, argument: str, value: Any) -> float | None:
    return None if value is None else positive_float(owner, argument, value)


def one_of(owner: str, argument: str, value: Any, choices: Sequence[Any]) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise _fail(owner, argument, f"one of {tuple(choices)}", value)
    return value


def optional_vector(owner: str, argument: str, value: Any, *, nonnegative: bool = False) -> tuple[float, ...] | None:
    """None, or a non-empty sequence of finite numbers (>= 0 with a positive sum if `nonnegative`), as floats."""
    if value is None:
        return None
    expectation = (
        "None or a non-empty sequence of finite numbers >= 0 with a positive sum"
        if nonnegative
        else "None or a non-empty sequence of finite numbers"
    )
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise _fail(owner, argument, expectation, value)
    entries = list(value)
    if not entries:
        raise _fail(owner, argument, expectation, value)
    numbers_ = []
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, numbers.Real) or not math.isfinite(float(entry)):
            raise _fail(owner, argument, expectation, value)
        numbers_.append(float(entry))
    if nonnegative and (min(numbers_) < 0.0 or sum(numbers_) <= 0.0):
        raise _fail(owner, argument, expectation, value)
    return tuple(numbers_)
