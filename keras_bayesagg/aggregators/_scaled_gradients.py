"""Gradient methods on rescaled losses (IMTL, DB-MTL): c_k L_k changes every task gradient to c_k g_k.

Both methods first rescale each unit's loss (IMTL-L's e^{s_k}, DB-MTL's logarithm: ∇ log L_k =
∇L_k / L_k) and then combine the rescaled gradients. The engine hands over the gradients of the
plain losses, so the rescaled ones are these times c_k (held constant: c_k is not trained through
the direction), at either level.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregation, AggregatorInputs


def with_unit_scales(inputs: AggregatorInputs, scales: tf.Tensor) -> AggregatorInputs:
    """The inputs with unit k's task and parameter gradients multiplied by scales[k] ([K], no gradient)."""
    scales = tf.stop_gradient(tf.cast(scales, tf.float32))
    task_gradients = inputs.task_gradients
    if task_gradients is not None:
        task_gradients = task_gradients * tf.cast(scales, task_gradients.dtype)[None, :, None]
    parameter_gradients = inputs.parameter_gradients
    if parameter_gradients is not None:
        parameter_gradients = parameter_gradients * tf.cast(scales, parameter_gradients.dtype)[:, None]
    return dataclasses.replace(inputs, task_gradients=task_gradients, parameter_gradients=parameter_gradients)


def on_original_losses(aggregation: Aggregation, objective: tf.Tensor, scales: tf.Tensor) -> Aggregation:
    """`aggregation` (computed on rescaled gradients) with the method's own objective for the heads and
    its task weights expressed on the original gradients: w_k c_k."""
    weights = aggregation.task_weights
    if weights is not None:
        weights = tf.cast(weights, tf.float32) * tf.stop_gradient(tf.cast(scales, tf.float32))
    return dataclasses.replace(aggregation, objective=objective, task_weights=weights)
