"""Shared machinery of the loss scalarizations (GLS, IMTL-L, STCH, COSMOS, PBI): objective = f(L_1, …, L_K).

The trunk and the heads train on the gradient of one scalar f of the K unit losses: one backward
pass, as cheap as linear scalarization. A method implements `scalarize(losses, labelled)`; this
base class reports the task weights ∂f/∂L_k (the factor each unit's gradient enters the update
with), computed by differentiating f at this step's losses.

A unit without labels in the batch has L_k = 0 and no gradient; `labelled` ([K] bool) lets each
method leave such a unit out of its formula (a 0 in a product, a logarithm or a cosine would
otherwise change every other unit's weight).
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, TaskLayout


def labelled_units(inputs: AggregatorInputs) -> tf.Tensor:
    """[K] bool: the units with at least one label (positive weight) in this batch."""
    return tf.reduce_sum(inputs.presence(), axis=0) > 0.0


def masked_preference(preference: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
    """The preference vector with unlabelled units set to 0 (the objective lives on the labelled units)."""
    return tf.where(labelled, preference, tf.zeros_like(preference))


def per_unit_vector(
    owner: str, argument: str, values: Sequence[float] | None, layout: TaskLayout, default: float
) -> tuple[float, ...]:
    """`values` checked against the K task units (or K copies of `default` when None)."""
    k = layout.num_units
    if values is None:
        return (default,) * k
    if len(values) != k:
        names = [unit.name for unit in layout.units]
        raise ValueError(f"{owner}: {argument} must have one entry per task unit ({k}: {names}); got {len(values)}.")
    return tuple(values)


class LossScalarization(Aggregator):
    """Base class: the objective is `scalarize(losses, labelled)`, the task weights its gradient."""

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        """f(L) for losses [K] float32, `labelled` [K] bool: a differentiable scalar."""
        raise NotImplementedError

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        labelled = labelled_units(inputs)
        losses = tf.cast(inputs.losses, tf.float32)
        at_losses = tf.stop_gradient(losses)
        with tf.GradientTape() as tape:
            tape.watch(at_losses)
            value = self.scalarize(at_losses, labelled)
        weights = tape.gradient(value, at_losses, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return ObjectiveAggregation(objective=self.scalarize(losses, labelled), task_weights=tf.stop_gradient(weights))

    def get_config(self) -> dict[str, Any]:
        return super().get_config()
