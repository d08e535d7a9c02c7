"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, dual_cone_projection_weights


def upgrad_weights(gram: tf.Tensor) -> tf.Tensor:
    """Σ_i v_i with Jᵀv_i = π(g_i / K), π the projection onto the dual cone of the rows (paper Eq. 5)."""
    size = tf.shape(gram)[0]
    uniform = tf.eye(size, dtype=SOLVER_DTYPE) / tf.cast(size, SOLVER_DTYPE)
    return tf.reduce_sum(dual_cone_projection_weights(gram, uniform), axis=0)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class UPGrad(GradientCombination):
    """Unconditional projection: the mean of every task gradient projected onto the dual cone of all of them.

        d = (1/K) Σ_i π_J(g_i),  π_J(x) = argmin_{y: ⟨y, g_k⟩ ≥ 0 ∀k} ‖y - x‖²

    (paper Eq. 5, uniform preferences). Every projected gradient, hence d, conflicts with no task:
    ⟨d, g_k⟩ ≥ 0; d is the average when no two tasks conflict (K identical gradients give g). Each
    projection is a K-dimensional quadratic program in the Gram matrix (Proposition 1), solved exactly by
    an active-set method (`nonnegative_quadratic_minimizers`); TorchJD's quadprog adds 1e-4·I to the
    normalized Gram matrix, which moves its weights by up to ~1e-4 relative. `task_weights` are the
    coefficients of d in terms of the g_k (≥ 1/K each).

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return upgrad_weights(gram)
