"""Linear scalarization: minimize the plain sum of task losses (the default aggregator)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class LinearScalarization(Aggregator):
    """Σ_k L_k over all task units; every parameter gets the ordinary gradient of that sum."""

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        return ObjectiveAggregation(objective=tf.reduce_sum(inputs.losses), task_weights=tf.ones_like(inputs.losses))
