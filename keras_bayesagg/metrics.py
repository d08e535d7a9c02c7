"""Δm%: the average relative change of a multi-task model against single-task baselines."""

from __future__ import annotations

import math
from typing import Mapping, Union

MetricValues = Union[float, Mapping[str, float]]
Direction = Union[bool, Mapping[str, bool]]


def delta_m(
    results: Mapping[str, MetricValues],
    single_task_results: Mapping[str, MetricValues],
    higher_is_better: Mapping[str, Direction],
) -> float:
    """Δm% of Maninis et al. (CVPR 2019), as used by BayesAgg-MTL (Achituve et al. 2024): lower is better.

    Δm = (100/K) Σ_k (1/|M_k|) Σ_{m ∈ M_k} (-1)^{δ_km} (M_km - S_km) / S_km,
    with K the tasks in `results`, M_k the metrics of task k, S the single-task baseline and
    δ_km = 1 when higher is better. A task with several metrics is averaged inside the task
    first, so every task counts once however many metrics it reports.

    Args:
        results: per task, one value or {metric name: value}, of the multi-task model.
        single_task_results: the same structure for the single-task baselines; every task and
            metric of `results` must be present (there is no fallback).
        higher_is_better: whether a larger value is better, keyed by task ({task: bool} or
            {task: {metric: bool}}) or by metric name ({"accuracy": True, "mae": False}).

    Raises:
        ValueError: a baseline, a direction or a usable value is missing, or a baseline is 0.
    """
    if not results:
        raise ValueError("delta_m: results is empty; give at least one task's metrics.")
    per_task = []
    for task, values in results.items():
        metrics = _as_metric_dict(task, values)
        if not metrics:
            raise ValueError(f"delta_m: task '{task}' has no metrics in results.")
        if task not in single_task_results:
            raise ValueError(
                f"delta_m: no single-task baseline for task '{task}'; single_task_results has {sorted(single_task_results)}."
            )
        baseline = _as_metric_dict(task, single_task_results[task])
        changes = []
        for metric, value in metrics.items():
            if metric not in baseline:
                raise ValueError(
                    f"delta_m: no single-task baseline for metric '{metric}' of task '{task}'; "
                    f"the baseline of '{task}' has {sorted(baseline)}."
                )
            reference = float(baseline[metric])
            value = float(value)
            if not (math.isfinite(value) and math.isfinite(reference)):
                raise ValueError(
                    f"delta_m: task '{task}', metric '{metric}': values must be finite; got {value} vs {reference}."
                )
            if reference == 0.0:
                raise ValueError(
                    f"delta_m: the single-task baseline of task '{task}', metric '{metric}' is 0; Δm divides by it."
                )
            sign = -1.0 if _higher_is_better(task, metric, higher_is_better) else 1.0
            changes.append(sign * (value - reference) / reference)
        per_task.append(sum(changes) / len(changes))
    return 100.0 * sum(per_task) / len(per_task)


def _as_metric_dict(task: str, values: MetricValues) -> dict[str, float]:
    """A bare value of task t is its only metric, named t."""
    if isinstance(values, Mapping):
        return dict(values)
    return {task: values}


def _higher_is_better(task: str, metric: str, directions: Mapping[str, Direction]) -> bool:
    direction = directions.get(task)
    if isinstance(direction, Mapping):
        if metric in direction:
            return bool(direction[metric])
    elif direction is not None:
        return bool(direction)
    if metric in directions and not isinstance(directions[metric], Mapping):
        return bool(directions[metric])
    raise ValueError(
        f"delta_m: higher_is_better says nothing about metric '{metric}' of task '{task}'; "
        f"give {{'{task}': {{'{metric}': True/False}}}} or {{'{metric}': True/False}}."
    )
