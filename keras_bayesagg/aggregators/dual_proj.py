"""DualProj: the mean gradient projected onto the dual cone of the task gradients (TorchJD's `DualProj`;
the projection of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, dual_cone_projection_weights


def dual_proj_weights(gram: tf.Tensor) -> tf.Tensor:
    """v with Jᵀv = π((1/K) Σ_k g_k), π the projection onto the dual cone of the rows."""
    size = tf.shape(gram)[0]
    mean = tf.fill([1, size], tf.constant(1.0, SOLVER_DTYPE) / tf.cast(size, SOLVER_DTYPE))
    return dual_cone_projection_weights(gram, mean)[0]


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class DualProj(GradientCombination):
    """The average gradient, projected onto the dual cone {d: ⟨d, g_k⟩ ≥ 0 ∀k} of the task gradients:

        d = argmin_{⟨d, g_k⟩ ≥ 0 ∀k} ‖d - g0‖²,  g0 = (1/K) Σ_k g_k

    (GEM's projection, Lopez-Paz & Ranzato 2017, Eq. 10-13, as a multi-task aggregator). d conflicts with no
    task, and it is g0 itself when g0 conflicts with none. One K-dimensional quadratic program in the Gram
    matrix, solved exactly (the solver UPGrad uses). `task_weights` are the coefficients of d (≥ 1/K each).

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return dual_proj_weights(gram)
