"""Scale-invariant loss: minimize Σ_k log L_k, so rescaling any task's loss changes nothing."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation
from keras_bayesagg.validation import nonnegative_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class ScaleInvariant(Aggregator):
    """Σ_k log(L_k + ε) (the "scale-invariant" baseline of Navon et al. 2022, Nash-MTL, and
    Liu et al. 2023, FAMO, Sec. 5).

    ∇ log L_k = ∇L_k / L_k, so each task unit's gradient is weighted by 1/L_k: the reported
    task weights are 1/(L_k + ε), which is also what makes the method invariant to loss scales.

    Args:
        epsilon: ε keeps the logarithm finite when a loss reaches exactly zero.
    """

    def __init__(self, epsilon: float = 1e-12, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.epsilon = nonnegative_float("ScaleInvariant", "epsilon", epsilon)

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        shifted = inputs.losses + self.epsilon
        return ObjectiveAggregation(
            objective=tf.reduce_sum(tf.math.log(shifted)),
            task_weights=1.0 / tf.stop_gradient(shifted),
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
