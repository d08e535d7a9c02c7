"""Argument checks shared by every constructor, with one message style; and the checks of what Keras's logs and
data adapters need from the user's task names and labels (at construction, compile and fit).

Each check returns the value in canonical form (int or float) or raises
`ValueError("<Owner>: <argument> must be <what>; got <value>.")`, also for wrong types
(a string, a bool, None), NaN and infinity.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np


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


# ---------------------------------------------------------------------- what Keras's logs and data adapters need

RESERVED_TASK_NAMES = ("loss",)


def _metric_name(metric: Any) -> str:
    """The name Keras logs a compiled metric under (after the task's prefix): a string as given, else `.name`."""
    if isinstance(metric, str):
        return metric
    return str(getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__))


def check_log_keys(task_names: Sequence[str], *metric_dicts: Mapping[str, Sequence[Any]] | None) -> None:
    """Refuse task names (and, at compile, metric names) whose Keras log keys collide.

    Keras logs `loss`, `<task>_loss`, `<task>_<metric>` and the same keys with `val_` for validation data;
    two of them with one key would be silently mixed in `History` and every callback (e.g. tasks `a` and
    `val_a`: the validation loss of `a` and the training loss of `val_a` are both `val_a_loss`).
    """
    reserved = [name for name in task_names if name in RESERVED_TASK_NAMES]
    if reserved:
        raise ValueError(
            f"Task name {reserved[0]!r} is reserved: Keras logs the total loss as 'loss' (and 'val_loss'); "
            "rename the task."
        )
    owners: dict[str, list[str]] = {"loss": ["the total loss"]}
    for name in task_names:
        owners.setdefault(f"{name}_loss", []).append(f"the loss of task '{name}'")
    for metrics in metric_dicts:
        for name, listed in (metrics or {}).items():
            for metric in listed:
                owners.setdefault(f"{name}_{_metric_name(metric)}", []).append(
                    f"metric '{_metric_name(metric)}' of task '{name}'"
                )
    for key, who in list(owners.items()):
        for owner in who:
            owners.setdefault(f"val_{key}", []).append(f"{owner} on validation data")
    for key, who in owners.items():
        if len(set(who)) > 1:
            raise ValueError(
                f"Task names {list(task_names)} give two values the same Keras log key '{key}': {who[0]} and "
                f"{who[1]}; History and callbacks would mix them. Rename a task (or the metric)."
            )


def _is_text(values: Any) -> bool:
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        if not isinstance(values, (list, tuple)):
            return False
        dtype = np.asarray(values).dtype
    if getattr(dtype, "name", None) == "string":  # a tf.string tensor
        return True
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    if kind == "O":
        flat = np.asarray(values).ravel()
        return bool(len(flat)) and isinstance(flat[0], (str, bytes))
    return kind in "US"


def check_numeric_labels(task_names: Sequence[str], y: Any, where: str = "The labels") -> None:
    """Refuse text labels (numpy str/bytes arrays, lists of strings, tf.string) naming the task, before Keras's
    data adapter fails on them without a name ("Invalid dtype: str32")."""
    if not isinstance(y, Mapping):
        return
    for name, values in y.items():
        if name in task_names and _is_text(values):
            raise ValueError(
                f"{where} of task '{name}' are text (dtype {getattr(values, 'dtype', 'str')}); the task expects "
                "numbers: class indices 0..C-1 for a Multiclass head, 0/1 for Binary, real values for Regression. "
                "Map the strings to numbers first (e.g. with keras.layers.StringLookup or pandas.factorize)."
            )


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
