"""IMTL-L (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021), the loss-scaling part."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._scalarization import LossScalarization
from keras_bayesagg.aggregators.base import TaskLayout


def imtl_l_objective(losses: tf.Tensor, log_scales: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
    """Σ_k (e^{s_k} L_k - s_k) over the labelled units (paper Eq. 9 with the regularizer -s_k).

    An unlabelled unit is left out: its loss is 0, so it would only see -s_k and push s_k up
    without bound."""
    terms = tf.exp(log_scales) * losses - log_scales
    return tf.reduce_sum(tf.where(labelled, terms, tf.zeros_like(terms)))


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class IMTLL(LossScalarization):
    """Impartial loss scaling: learned log-scales s_k, objective Σ_k (e^{s_k} L_k - s_k).

    Each unit's scale is trained by the model's optimizer on the same objective (trainable
    Keras variables initialized at 0, like `UncertaintyWeighting`'s log-variances): at the
    optimum ∂/∂s_k = e^{s_k} L_k - 1 = 0, so every scaled loss e^{s_k} L_k is driven to 1,
    whatever the task's loss scale (the paper's Sec. 3.2). It starts as the plain sum. The task
    weights are the scales e^{s_k}. Combine it with IMTL-G in the hybrid `IMTL`.
    """

    def build_state(self, layout: TaskLayout) -> None:
        self.log_scales = self.add_weight(
            name="log_scales", shape=(layout.num_units,), initializer="zeros", trainable=True
        )

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        return imtl_l_objective(losses, tf.convert_to_tensor(self.log_scales), labelled)
