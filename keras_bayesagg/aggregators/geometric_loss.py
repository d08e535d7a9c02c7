"""Geometric loss strategy (GLS, Chennupati et al. 2019): the geometric mean of the task losses."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._scalarization import LossScalarization
from keras_bayesagg.validation import nonnegative_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class GeometricLoss(LossScalarization):
    """GLS (Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++", CVPR Workshops 2019, Eq. 3).

    The objective is (Π_k L_k)^{1/K} = exp(mean_k log(L_k + ε)): ∂/∂L_k = GLS / (K (L_k + ε)),
    so each unit is weighted by the inverse of its loss times the common geometric mean, which
    makes the update's direction invariant to rescaling any one loss (its size scales with the
    geometric mean). The task weights are these derivatives. Units without labels in the batch
    are left out of the product (K counts the labelled units). ε = 0 is the paper's formula;
    the small default keeps it finite at a loss of exactly zero.

    Args:
        epsilon: ε ≥ 0 added to every loss inside the logarithm.
    """

    def __init__(self, epsilon: float = 1e-12, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.epsilon = nonnegative_float("GeometricLoss", "epsilon", epsilon)

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        count = tf.maximum(tf.reduce_sum(tf.cast(labelled, tf.float32)), 1.0)
        # An unlabelled unit enters as log 1 = 0 (and its loss, 0, is never inside the logarithm).
        logs = tf.where(labelled, tf.math.log(tf.where(labelled, losses, 1.0) + self.epsilon), 0.0)
        return tf.exp(tf.reduce_sum(logs) / count)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}
