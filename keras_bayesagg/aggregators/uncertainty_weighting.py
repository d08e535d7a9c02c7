"""Uncertainty weighting (Kendall et al. 2018): learned homoscedastic noise weighs each task."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, TaskLayout
from keras_bayesagg.tasks import Regression
from keras_bayesagg.validation import one_of

VARIANTS = ("kendall", "simplified", "log1p")


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class UncertaintyWeighting(Aggregator):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, Eqs. 7 and 10).

    Each task unit k has a learned log-variance s_k = log σ_k² (a trainable Keras variable,
    initialized at 0, trained by the model's optimizer on the gradient of the objective):

    - `"kendall"`: Σ_k c_k e^{-s_k} L_k + ½ s_k with c_k = ½ for regression units (Gaussian
      likelihood) and c_k = 1 for classification units (scaled softmax/sigmoid), the paper's
      objective; ½ s_k = log σ_k.
    - `"simplified"`: Σ_k e^{-s_k} L_k + s_k, the common implementation that drops the ½.
    - `"log1p"`: Σ_k L_k / (2σ_k²) + log(1 + σ_k²) (Liebel & Körner, "Auxiliary Tasks in
      Multi-task Learning", 2018), whose regularizer keeps the objective ≥ 0; here σ_k² = e^{s_k}
      and log(1 + e^{s_k}) is computed as softplus(s_k) so it stays finite for any s_k.

    The task weights are the factors multiplying each L_k (c_k e^{-s_k}, e^{-s_k}, ½e^{-s_k}).

    Args:
        variant: "kendall", "simplified" or "log1p".
    """

    def __init__(self, variant: str = "kendall", name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.variant = one_of("UncertaintyWeighting", "variant", variant, VARIANTS)

    def build_state(self, layout: TaskLayout) -> None:
        self.log_variances = self.add_weight(
            name="log_variances", shape=(layout.num_units,), initializer="zeros", trainable=True
        )
        if self.variant == "kendall":
            factors = [0.5 if isinstance(layout.tasks[unit.task], Regression) else 1.0 for unit in layout.units]
        elif self.variant == "simplified":
            factors = [1.0] * layout.num_units
        else:
            factors = [0.5] * layout.num_units
        self.loss_factors = tuple(factors)

    def regularizer(self, log_variances: tf.Tensor) -> tf.Tensor:
        """The per-unit term that stops σ_k² from growing without bound."""
        if self.variant == "kendall":
            return 0.5 * log_variances
        if self.variant == "simplified":
            return log_variances
        return tf.nn.softplus(log_variances)

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        log_variances = tf.convert_to_tensor(self.log_variances)
        weights = tf.constant(self.loss_factors, tf.float32) * tf.exp(-log_variances)
        objective = tf.reduce_sum(weights * inputs.losses + self.regularizer(log_variances))
        return ObjectiveAggregation(objective=objective, task_weights=tf.stop_gradient(weights))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "variant": self.variant}
