"""Losses, task gradients and the routing of an aggregation into (gradient, variable) pairs.

Shapes: B samples, K task units (layout order), D = dim(h), P = trunk parameters (flattened).

Weights: `present` [B, K] holds w_ik >= 0, the label's presence (0 where missing) times its sample and
class weights (keras_bayesagg/sample_weights.py; a repetition count). The loss of unit k is the weighted
mean L_k = Σ_i w_ik ℓ_ik / n_k with n_k = Σ_i w_ik (1 when that is 0), and the per-sample gradient row
that aggregators see is w_ik ∂ℓ_ik/∂h_i (zero where w_ik = 0), so Σ_i of the rows over n_k is ∂L_k/∂h.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators import base
from keras_bayesagg.tasks import Task


def per_sample_unit_losses(
    tasks: Mapping[str, Task],
    labels: Mapping[str, tf.Tensor],
    logits: Mapping[str, tf.Tensor],
    present: tf.Tensor | None = None,
) -> tf.Tensor:
    """ℓ_ik for every sample i and task unit k: [B, K]; 0 where `present` is 0."""
    losses = tf.concat([task.per_sample_losses(labels[name], logits[name]) for name, task in tasks.items()], axis=1)
    return losses if present is None else tf.where(present > 0.0, losses, tf.zeros_like(losses))


def weight_totals(present: tf.Tensor) -> tf.Tensor:
    """n_k = Σ_i w_ik [K], 1 where it is 0: the denominators of the unit losses (any positive weights)."""
    totals = tf.reduce_sum(present, axis=0)
    return tf.where(totals > 0.0, totals, tf.ones_like(totals))


def masked_mean_losses(per_sample: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """L_k = Σ_i w_ik ℓ_ik / n_k: [B, K] → [K]; a unit without weight in the batch has loss 0."""
    masked = tf.where(present > 0.0, per_sample * present, tf.zeros_like(per_sample))
    return tf.reduce_sum(masked, axis=0) / weight_totals(present)


def per_sample_task_gradients(
    tasks: Mapping[str, Task],
    labels: Mapping[str, tf.Tensor],
    logits: Mapping[str, tf.Tensor],
    kernels: Mapping[str, tf.Tensor],
    present: tf.Tensor | None = None,
) -> tf.Tensor:
    """w_ik ∂ℓ_ik/∂h_i: [B, K, D], exact for linear heads z = h·kernel + b (no extra backward pass); rows of
    missing labels (`present` 0) are zero."""
    pieces = []
    for name, task in tasks.items():
        residuals = task.logit_gradients(labels[name], tf.stop_gradient(logits[name]))
        pieces.append(task.representation_gradients(residuals, tf.stop_gradient(kernels[name])))
    gradients = tf.concat(pieces, axis=1)
    return gradients if present is None else gradients * present[:, :, None]


def task_gradients_from_rows(
    tasks: Mapping[str, Task],
    logits_of: Callable[[tf.Tensor], Mapping[str, tf.Tensor]],
    kernels: Mapping[str, tf.Tensor],
) -> Callable[[tf.Tensor, Mapping[str, tf.Tensor], tf.Tensor], tf.Tensor]:
    """(h, labels, present) → per-sample task gradients [B, K, D] through the heads' `logits_of`: rebuilds
    them for rows gathered from other replicas (engine/global_batch.py)."""
    return lambda rows, labels, present: per_sample_task_gradients(tasks, labels, logits_of(rows), kernels, present)


def per_unit_parameter_gradients(
    tape: tf.GradientTape, unit_losses: tf.Tensor, variables: Sequence[tf.Variable]
) -> tf.Tensor:
    """[K, P]: each task unit's mean loss differentiated w.r.t. all `variables`, flattened.

    One backward pass through the trunk per unit (the cost of parameter-level methods).
    """
    rows = []
    per_unit = tf.unstack(unit_losses)  # recorded, so each unit's loss stays connected to the variables
    with tape.stop_recording():
        for loss in per_unit:
            gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            rows.append(flatten(gradients))
    return tf.stack(rows)


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)


def unflatten(flat: tf.Tensor, variables: Sequence[tf.Variable]) -> list[tf.Tensor]:
    """The inverse of `flatten` for tensors shaped like `variables` (in their dtypes)."""
    pieces, start = [], 0
    for variable in variables:
        size = int(np.prod(variable.shape))
        pieces.append(tf.cast(tf.reshape(flat[start : start + size], variable.shape), variable.dtype))
        start += size
    return pieces


def aggregator_inputs(
    aggregator: base.Aggregator,
    tape: tf.GradientTape,
    tasks: Mapping[str, Task],
    labels: Mapping[str, tf.Tensor],
    logits: Mapping[str, tf.Tensor],
    losses: tf.Tensor,
    representation: tf.Tensor,
    kernels: Mapping[str, tf.Tensor],
    head_weights: Mapping[str, tf.Tensor],
    trunk_variables: Sequence[tf.Variable],
    present: tf.Tensor | None = None,
) -> base.AggregatorInputs:
    """What the aggregator sees (tensors only); task or parameter gradients only when it asks for them.
    `labels` hold placeholders where `present` [B, K] is 0 (None: every label is present)."""
    if present is None:
        present = tf.ones([tf.shape(representation)[0], losses.shape[0]], tf.float32)
    task_gradients = parameter_gradients = None
    if aggregator.needs_task_gradients:
        task_gradients = per_sample_task_gradients(tasks, labels, logits, kernels, present)
    if aggregator.needs_parameter_gradients:
        parameter_gradients = per_unit_parameter_gradients(tape, losses, trunk_variables)
    return base.AggregatorInputs(
        losses=losses,
        representation=tf.stop_gradient(representation),
        task_gradients=task_gradients,
        labels=dict(labels),
        head_weights=dict(head_weights),
        parameter_gradients=parameter_gradients,
        present=present,
    )


def scaled_objectives(
    aggregation: base.Aggregation, regularization: tf.Tensor | None, scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """((objective + regularization)·scale, regularization·scale): call under the tape, for `route`."""
    objective = aggregation.objective if regularization is None else aggregation.objective + regularization
    return objective * scale, None if regularization is None else regularization * scale


def route(
    aggregation: base.Aggregation,
    tape: tf.GradientTape,
    representation: tf.Tensor,
    scaled_objective: tf.Tensor,
    scaled_regularization: tf.Tensor | None,
    trunk_variables: Sequence[tf.Variable],
    other_variables: Sequence[tf.Variable],
    scale: tf.Tensor,
) -> list[tf.Tensor | None]:
    """Gradients for `trunk_variables + other_variables` (heads and the aggregator's own).

    `scaled_objective` = (objective + regularization)·scale and `scaled_regularization` =
    regularization·scale must be computed under the (persistent) tape; `scale` is the loss scale of
    mixed precision times 1/replicas. The objective trains the other variables in every case; the
    trunk gets, by the kind of aggregation: the gradient of that objective, the back-propagated
    representation gradient, or the given parameter gradient (plus the regularization's gradient).
    """
    if isinstance(aggregation, base.ObjectiveAggregation):
        return tape.gradient(scaled_objective, list(trunk_variables) + list(other_variables))
    others = tape.gradient(scaled_objective, list(other_variables))
    if isinstance(aggregation, base.RepresentationAggregation):
        targets = [representation]
        output_gradients = [tf.cast(aggregation.representation_gradient * scale, representation.dtype)]
        if scaled_regularization is not None:
            targets.append(scaled_regularization)
            output_gradients.append(tf.ones_like(scaled_regularization))
        return tape.gradient(targets, list(trunk_variables), output_gradients=output_gradients) + others
    if isinstance(aggregation, base.ParameterAggregation):
        trunk = unflatten(aggregation.parameter_gradient * scale, trunk_variables)
        if scaled_regularization is not None:
            extra = tape.gradient(scaled_regularization, list(trunk_variables))
            trunk = [g if e is None else g + tf.cast(e, g.dtype) for g, e in zip(trunk, extra)]
        return trunk + others
    raise TypeError(
        f"Unknown aggregation {type(aggregation).__name__}; aggregators return one of the three kinds in base.py."
    )
