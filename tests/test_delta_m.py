"""Δm% (Maninis et al. 2019): known answers, averaging inside tasks, and clear errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_bayesagg as kb

positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_known_answer_two_tasks() -> None:
    # accuracy 0.9 vs 0.8 (higher better): -(0.1/0.8) = -12.5%; mae 1.2 vs 1.0 (lower better): +20%.
    result = kb.metrics.delta_m(
        {"gender": 0.9, "age": 1.2}, {"gender": 0.8, "age": 1.0}, {"gender": True, "age": False}
    )
    assert result == pytest.approx((-12.5 + 20.0) / 2)


def test_several_metrics_are_averaged_inside_the_task_first() -> None:
    results = {"depth": {"abs_err": 0.5, "rel_err": 0.3}, "seg": {"miou": 0.55}}
    baseline = {"depth": {"abs_err": 0.4, "rel_err": 0.3}, "seg": {"miou": 0.5}}
    directions = {"abs_err": False, "rel_err": False, "miou": True}
    depth = (25.0 + 0.0) / 2
    seg = -10.0
    assert kb.metrics.delta_m(results, baseline, directions) == pytest.approx((depth + seg) / 2)


def test_per_task_directions_override_metric_directions() -> None:
    results = {"a": {"score": 2.0}, "b": {"score": 2.0}}
    baseline = {"a": {"score": 1.0}, "b": {"score": 1.0}}
    directions = {"a": {"score": True}, "score": False}
    assert kb.metrics.delta_m(results, baseline, directions) == pytest.approx((-100.0 + 100.0) / 2)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(positive, min_size=1, max_size=6), higher=st.lists(st.booleans(), min_size=6, max_size=6))
def test_equal_to_baseline_is_zero(values: list[float], higher: list[bool]) -> None:
    results = {f"t{i}": v for i, v in enumerate(values)}
    directions = {f"t{i}": higher[i] for i in range(len(values))}
    assert kb.metrics.delta_m(results, dict(results), directions) == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(baseline=positive, factor=st.floats(min_value=1e-3, max_value=1e3))
def test_a_better_model_has_negative_delta_for_either_direction(baseline: float, factor: float) -> None:
    lower_better = kb.metrics.delta_m({"t": baseline / (1 + factor)}, {"t": baseline}, {"t": False})
    higher_better = kb.metrics.delta_m({"t": baseline * (1 + factor)}, {"t": baseline}, {"t": True})
    assert lower_better < 0 and higher_better < 0
    assert math.isfinite(lower_better) and math.isfinite(higher_better)


def test_missing_baseline_task_is_named() -> None:
    with pytest.raises(ValueError, match="no single-task baseline for task 'age'"):
        kb.metrics.delta_m({"age": 1.0, "gender": 0.9}, {"gender": 0.8}, {"age": False, "gender": True})


def test_missing_baseline_metric_is_named() -> None:
    with pytest.raises(ValueError, match="metric 'rmse' of task 'age'"):
        kb.metrics.delta_m({"age": {"mae": 1.0, "rmse": 2.0}}, {"age": {"mae": 1.1}}, {"mae": False, "rmse": False})


def test_missing_direction_is_named() -> None:
    with pytest.raises(ValueError, match="higher_is_better says nothing about metric 'mae' of task 'age'"):
        kb.metrics.delta_m({"age": {"mae": 1.0}}, {"age": {"mae": 1.1}}, {"gender": True})


def test_zero_baseline_is_rejected() -> None:
    with pytest.raises(ValueError, match="baseline of task 'age', metric 'age' is 0"):
        kb.metrics.delta_m({"age": 1.0}, {"age": 0.0}, {"age": False})
