"""IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): IMTL-L and IMTL-G together."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._scalarization import labelled_units
from keras_bayesagg.aggregators._scaled_gradients import on_original_losses, with_unit_scales
from keras_bayesagg.aggregators.base import Aggregation, AggregatorInputs, TaskLayout
from keras_bayesagg.aggregators.imtl_g import imtl_g_weights
from keras_bayesagg.aggregators.imtl_l import imtl_l_objective


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class IMTL(GradientCombination):
    """The hybrid IMTL of the paper (Algorithm 1): scaled losses e^{s_k} L_k - s_k (IMTL-L), and the
    shared update combines their gradients g̃_k = e^{s_k} g_k with IMTL-G's impartial weights.

    d = Σ_k α_k g̃_k, Σ_k α_k = 1, equal projections on every u_k = g̃_k/‖g̃_k‖ (= g_k/‖g_k‖): the
    direction is IMTL-G's, and the learned scales set its size (α sums to 1 on the scaled
    gradients). The heads and the log-scales s (trainable variables, trained by the model's
    optimizer, initialized at 0) follow the gradient of Σ_k (e^{s_k} L_k - s_k), as in the paper
    and LibMTL's `IMTL`. `task_weights` are the coefficients on the original gradients, α_k e^{s_k}.
    Units without labels in the batch are left out of the scaled-loss sum (see `IMTLL`).

    Args:
        level: "representation" (default, as the paper) or "parameters" (see `_gradient_methods`).
    """

    def build_state(self, layout: TaskLayout) -> None:
        self.log_scales = self.add_weight(
            name="log_scales", shape=(layout.num_units,), initializer="zeros", trainable=True
        )

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return imtl_g_weights(gram)

    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        log_scales = tf.convert_to_tensor(self.log_scales)
        scales = tf.exp(log_scales)
        aggregation = super().aggregate(with_unit_scales(inputs, scales))
        objective = imtl_l_objective(inputs.losses, log_scales, labelled_units(inputs))
        return on_original_losses(aggregation, objective, scales)
