"""Label tensors as the task kinds receive them: conversion, dtype and shape checks with errors that name the task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

if TYPE_CHECKING:
    from keras_bayesagg.tasks import Task


def static_shape(labels: tf.Tensor) -> list[int | None]:
    return list(labels.shape) if labels.shape.rank is not None else []


def as_tensor(name: str, task: Task, labels: Any) -> tf.Tensor:
    try:
        tensor = tf.convert_to_tensor(labels)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Task '{name}' ({task.describe()}): labels could not be converted to a tensor: {error}"
        ) from None
    if tensor.dtype == tf.string:
        raise ValueError(f"Task '{name}' ({task.describe()}) expects numeric labels; got dtype string.")
    return tensor


def dense_labels(name: str, task: Task, labels: Any) -> tf.Tensor:
    """Labels with one value per output: shape (batch, units), or (batch,) when units == 1."""
    tensor = as_tensor(name, task, labels)
    shape = static_shape(tensor)
    if len(shape) == 1 and task.units == 1:
        tensor = tensor[:, None]
    elif len(shape) != 2 or (shape[1] is not None and shape[1] != task.units):
        expected = "(batch,) or (batch, 1)" if task.units == 1 else f"(batch, {task.units})"
        raise ValueError(
            f"Task '{name}' ({task.describe()}) expects labels of shape {expected}; got shape {tuple(shape)}."
        )
    if not (tensor.dtype.is_floating or tensor.dtype.is_integer or tensor.dtype == tf.bool):
        raise ValueError(f"Task '{name}' ({task.describe()}) expects numeric labels; got dtype {tensor.dtype.name}.")
    return tf.cast(tensor, tf.float32)
