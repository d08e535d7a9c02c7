"""Sample and class weights: one non-negative weight w_ik per (sample i, task unit k).

A weight is a repetition count: w = 2 means what two copies of the row would mean, w = 0 what leaving
it out would mean. A missing label is the special case w = 0, so the engine carries one tensor, the
`present` [B, K] of `AggregatorInputs` (the presence mask times the sample and class weights).

Accepted forms (docs/contract.md): `sample_weight` as [B] or [B, 1] (every task unit), or a dict
{task: [B]} (every unit of that task), {task: [B, units]} for a `Regression(k)` / `Binary(k)` task;
tasks left out of the dict weigh 1. `class_weight={task: {class: weight}}` for a `Multiclass` task and
{task: {0: w0, 1: w1}} for a `Binary` set (applied to each output); classes left out weigh 1. Shapes and
types are checked while tracing (ValueError naming the task); the values in-graph (a fault: no update).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.engine.faults import Fault
from keras_bayesagg.tasks import Binary, Multiclass, Task

ClassWeights = tuple[tuple[str, tuple[float, ...]], ...]  # hashable: it is baked into the traced step


def _as_weights(where: str, value: Any) -> tf.Tensor:
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: sample weights could not be converted to a tensor: {error}") from None
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer or tensor.dtype == tf.bool):
        raise ValueError(f"{where}: sample weights must be numbers; got dtype {tensor.dtype.name}.")
    return tf.cast(tensor, tf.float32)


def _task_columns(name: str, task: Task, value: Any) -> tf.Tensor:
    """One task's weights as [B, units of the task]: from [B] / [B, 1] (every unit) or [B, units]."""
    where = f"Task '{name}' ({task.describe()})"
    weights = _as_weights(where, value)
    shape = weights.shape.as_list() if weights.shape.rank is not None else None
    units = task.num_task_units
    if shape is not None and len(shape) == 1:
        return tf.tile(weights[:, None], [1, units])
    if shape is not None and len(shape) == 2 and shape[1] == 1:
        return tf.tile(weights, [1, units])
    if shape is not None and len(shape) == 2 and shape[1] == units:
        return weights
    per_output = f" or (batch, {units})" if units > 1 else ""
    raise ValueError(f"{where} expects sample weights of shape (batch,) or (batch, 1){per_output}; got {shape}.")


def unit_weights(tasks: Mapping[str, Task], sample_weight: Any, batch_of: tf.Tensor) -> tf.Tensor | None:
    """The sample weights as [B, K] float32 in layout order (None when not given). `batch_of`: any [B, ...]
    tensor of the batch (for tasks a dict leaves out)."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Mapping):
        unknown = [name for name in sample_weight if name not in tasks]
        if unknown:
            raise ValueError(
                f"sample_weight has weights for unknown task(s) {unknown}; the model's tasks are {list(tasks)}."
            )
        ones = tf.ones([tf.shape(batch_of)[0]], tf.float32)
        columns = [
            _task_columns(name, task, ones if sample_weight.get(name) is None else sample_weight[name])
            for name, task in tasks.items()
        ]
        return tf.concat(columns, axis=1)
    weights = _as_weights("sample_weight", sample_weight)
    if weights.shape.rank == 1 or (weights.shape.rank == 2 and weights.shape[1] == 1):
        units = sum(task.num_task_units for task in tasks.values())
        return tf.tile(tf.reshape(weights, [-1, 1]), [1, units])
    raise ValueError(
        "sample_weight must be one weight per sample, shape (batch,), or a dict {task: weights} per task; "
        f"got shape {weights.shape}."
    )


def check_class_weight(tasks: Mapping[str, Task], class_weight: Any) -> ClassWeights:
    """{task: {class: weight}} in canonical form: per task one weight per class (Binary: (w0, w1)).
    A ValueError names the task for a regression task, an unknown class or a weight that is not finite and >= 0."""
    if class_weight is None:
        return ()
    if not isinstance(class_weight, Mapping) or not all(isinstance(v, Mapping) for v in class_weight.values()):
        raise ValueError(
            "MultiTaskModel: class_weight must be a dict {task: {class: weight}} for Multiclass or Binary tasks; "
            f"got {class_weight!r}."
        )
    canonical = []
    for name, weights in class_weight.items():
        if name not in tasks:
            raise ValueError(f"class_weight names unknown task '{name}'; the model's tasks are {list(tasks)}.")
        task = tasks[name]
        if not isinstance(task, (Binary, Multiclass)):
            raise ValueError(
                f"class_weight['{name}']: task '{name}' ({task.describe()}) has no classes; "
                "class weights apply to Multiclass and Binary tasks (use sample_weight for others)."
            )
        classes = task.units if isinstance(task, Multiclass) else 2
        values = [1.0] * classes
        for label, weight in weights.items():
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= int(label) < classes:
                raise ValueError(
                    f"class_weight['{name}']: task '{name}' ({task.describe()}) has classes 0..{classes - 1}; "
                    f"got class {label!r}."
                )
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"class_weight['{name}'][{label}] must be a finite number >= 0; got {weight!r}.")
            if weight < 0:
                raise ValueError(f"class_weight['{name}'][{label}] must be a finite number >= 0; got {weight!r}.")
            values[int(label)] = float(weight)
        canonical.append((name, tuple(values)))
    return tuple(canonical)


def class_factors(tasks: Mapping[str, Task], labels: Mapping[str, tf.Tensor], class_weights: ClassWeights) -> tf.Tensor:
    """[B, K] per-unit factors from the canonical labels: a multiclass row's weight y·c (its class's weight for
    a one-hot row) and a binary output's y·w1 + (1 − y)·w0; 1 for units without class weights."""
    given = dict(class_weights)
    columns = []
    for name, task in tasks.items():
        label = labels[name]
        if name not in given:
            columns.append(tf.ones([tf.shape(label)[0], task.num_task_units], tf.float32))
        elif isinstance(task, Multiclass):
            columns.append(tf.linalg.matvec(label, tf.constant(given[name], tf.float32))[:, None])
        else:
            negative, positive = given[name]
            columns.append(label * positive + (1.0 - label) * negative)
    return tf.concat(columns, axis=1)


def weighted_presence(
    tasks: Mapping[str, Task],
    present: tf.Tensor,
    labels: Mapping[str, tf.Tensor],
    sample_weight: Any = None,
    class_weights: ClassWeights = (),
) -> tuple[tf.Tensor, list[Fault]]:
    """(w [B, K] = presence mask × sample weight × class weight, one fault per task whose sample weights are
    negative, NaN or infinite). Invalid weights are replaced by 0 so nothing non-finite flows on; the fault
    makes the step skip. `labels`: the canonical labels with missing entries filled."""
    weights = present
    if class_weights:
        weights = weights * class_factors(tasks, labels, class_weights)
    given = unit_weights(tasks, sample_weight, present)
    if given is None:
        return weights, []
    valid = tf.math.is_finite(given) & (given >= 0.0)
    faults, start = [], 0
    for name, task in tasks.items():
        stop = start + task.num_task_units
        faults.append(
            Fault(
                ~tf.reduce_all(valid[:, start:stop]),
                f"Task '{name}' ({task.describe()}) got sample weights that are negative, NaN or infinite; "
                "sample weights must be finite and >= 0 (0 leaves the sample out).",
            )
        )
        start = stop
    return weights * tf.where(valid, given, tf.zeros_like(given)), faults


def completed(tasks: Mapping[str, Task], sample_weight: Any) -> Any:
    """A dict of array weights with every task (ones for those left out), as Keras's array adapter wants one
    entry per output; anything else unchanged."""
    if not isinstance(sample_weight, Mapping) or all(name in sample_weight for name in tasks):
        return sample_weight
    given = [value for value in sample_weight.values() if value is not None and hasattr(value, "shape")]
    if not given or not all(len(value.shape) >= 1 for value in given):
        return sample_weight
    ones = np.ones(int(given[0].shape[0]), np.float32)
    return {**{name: ones for name in tasks}, **sample_weight}


def keras_arguments(tasks: Mapping[str, Task], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`fit` / `evaluate` keyword arguments with a partial `sample_weight` dict `completed`."""
    if kwargs.get("sample_weight") is None:
        return kwargs
    return {**kwargs, "sample_weight": completed(tasks, kwargs["sample_weight"])}


def fit_arguments(model: keras.Model, validation_data: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(Keras's `fit` keyword arguments, `validation_data`) with sample weight dicts completed; `class_weight` is
    taken out and kept for the train step (`use_class_weight`), since Keras refuses it for multi-output models."""
    kwargs = dict(kwargs)
    use_class_weight(model, kwargs.pop("class_weight", None))
    if isinstance(validation_data, tuple) and len(validation_data) == 3:
        validation_data = (*validation_data[:2], completed(model.task_specs, validation_data[2]))
    return keras_arguments(model.task_specs, kwargs), validation_data


def use_class_weight(model: keras.Model, class_weight: Any) -> None:
    """Keep `class_weight` (checked) for this `fit`'s train steps; a change retraces the train function."""
    canonical = check_class_weight(model.task_specs, class_weight)
    if canonical != getattr(model, "_class_weights", ()):
        object.__setattr__(model, "_class_weights", canonical)  # plain data, not a tracked Keras attribute
        model.train_function = None


def class_weights_of(model: keras.Model) -> ClassWeights:
    """The class weights of the running `fit` (empty outside one)."""
    return getattr(model, "_class_weights", ())
