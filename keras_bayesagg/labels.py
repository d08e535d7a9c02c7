"""Labels of a batch: structure checks (in Python, before tracing) and value checks (in-graph faults)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from keras_bayesagg.engine.faults import Fault, all_finite
from keras_bayesagg.tasks import Task


def prepare_labels(tasks: Mapping[str, Task], y: Any, where: str = "The batch") -> dict[str, tf.Tensor]:
    """Canonical float32 labels per task; a ValueError naming the task for a missing/unknown task,
    a wrong shape or dtype."""
    if not isinstance(y, Mapping):
        raise ValueError(
            f"MultiTaskModel expects labels as a dict {{task name: labels}} for tasks {list(tasks)}; "
            f"{where} has {type(y).__name__}."
        )
    missing = [name for name in tasks if name not in y]
    if missing:
        raise ValueError(f"{where} has no labels for task(s) {missing}; every batch needs labels for {list(tasks)}.")
    extra = [name for name in y if name not in tasks]
    if extra:
        raise ValueError(f"{where} has labels for unknown task(s) {extra}; the model's tasks are {list(tasks)}.")
    return {name: task.prepare_labels(name, y[name]) for name, task in tasks.items()}


def present_and_filled(
    tasks: Mapping[str, Task], labels: Mapping[str, tf.Tensor]
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """(present [B, K] float32: 1 where the label of (sample, task unit) is given, 0 where it is marked
    missing; the labels with finite placeholders in the missing entries). Masks, no data-dependent shapes."""
    present = {name: task.present(labels[name]) for name, task in tasks.items()}
    filled = {name: task.fill_missing(labels[name], present[name]) for name, task in tasks.items()}
    return tf.concat(list(present.values()), axis=1), filled


def check_label_spec(tasks: Mapping[str, Task], spec: Any, where: str) -> None:
    """Structure checks on label *specs* (shapes and dtypes, e.g. a dataset's element_spec) before any step."""

    def placeholder(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {key: placeholder(value) for key, value in item.items()}
        if not (hasattr(item, "shape") and hasattr(item, "dtype")):
            item = np.asarray(item)
        dims = [1 if d is None else int(d) for d in tf.TensorShape(item.shape).as_list() or []]
        return tf.zeros([1] + dims[1:] if dims else [], tf.as_dtype(item.dtype))

    prepare_labels(tasks, placeholder(spec), where)


def validation_label_spec(validation_data: Any) -> Any:
    """The labels part of `validation_data` (a dataset's element spec, or the arrays of a tuple), or None."""
    if isinstance(validation_data, tf.data.Dataset):
        spec = validation_data.element_spec
        return spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    if isinstance(validation_data, (tuple, list)) and len(validation_data) > 1:
        return validation_data[1]
    return None


def label_faults(tasks: Mapping[str, Task], labels: Mapping[str, tf.Tensor]) -> list[Fault]:
    """One in-graph check per task: its label *values* fit it (class in range, binary in [0, 1], finite),
    or are the task's missing-label marker."""
    return [
        Fault(
            ~task.labels_valid(labels[name]),
            f"Task '{name}' ({task.describe()}) got label values that do not fit it: {task.value_expectation()}.",
        )
        for name, task in tasks.items()
    ]


def loss_faults(tasks: Mapping[str, Task], per_sample_losses: tf.Tensor) -> list[Fault]:
    """One in-graph check per task: its per-sample losses [B, units of the task] are finite."""
    faults, start = [], 0
    for name, task in tasks.items():
        stop = start + task.num_task_units
        faults.append(
            Fault(
                ~all_finite([per_sample_losses[:, start:stop]]),
                f"The loss of task '{name}' ({task.describe()}) is not finite: labels or predictions too large for "
                "float32 (e.g. a target of 1e30) or a diverged model.",
            )
        )
        start = stop
    return faults
