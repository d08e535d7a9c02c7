"""IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021), the gradient part."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import trace_normalized


def imtl_g_weights(gram: tf.Tensor, ridge: float = 1e-12) -> tf.Tensor:
    """α with Σ_k α_k = 1 such that d = Σ_k α_k g_k has equal projections on every unit u_k = g_k/‖g_k‖.

    The paper's closed form α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹ (D rows g_1 - g_k, U rows u_1 - u_k)
    solves the K linear equations ⟨d, u_k⟩ = ⟨d, u_1⟩ (k ≥ 2), Σ α = 1. They are written here
    with the Gram matrix and solved as a ridge-regularized least-squares problem pulled towards
    uniform weights, which picks the average when the system is singular (identical gradients).
    A unit with a zero gradient (no labels in the batch) gets α_k = 0.
    """
    matrix = trace_normalized(gram)
    size = tf.shape(matrix)[0]
    norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(matrix), 0.0))
    # A unit with a zero gradient (no labels in the batch) has no direction: it gets α_k = 0 and no
    # equation, and the projections are compared with the first unit that has one.
    active = norms > 0
    # projections[k, l] = ⟨g_l, u_k⟩, so ⟨d, u_k⟩ = (projections @ α)_k
    projections = matrix / tf.where(active, norms, tf.ones_like(norms))[:, None]
    first = tf.one_hot(tf.argmax(tf.cast(active, tf.int32)), size, dtype=matrix.dtype)
    differences = projections - tf.linalg.matvec(projections, first, transpose_a=True)[None, :]
    differences = tf.where(active[:, None], differences, tf.eye(size, dtype=matrix.dtype))
    system = tf.concat([differences, tf.ones([1, size], matrix.dtype)], axis=0)
    target = tf.one_hot(size, size + 1, dtype=matrix.dtype)
    uniform = tf.fill([size], tf.constant(1.0, matrix.dtype) / tf.cast(size, matrix.dtype))
    normal = tf.matmul(system, system, transpose_a=True) + ridge * tf.eye(size, dtype=matrix.dtype)
    right = tf.linalg.matvec(system, target, transpose_a=True) + ridge * uniform
    weights = tf.linalg.cholesky_solve(tf.linalg.cholesky(normal), right[:, None])[:, 0]
    return tf.where(active, weights, tf.zeros_like(weights))


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class IMTLG(GradientCombination):
    """Impartial gradient: the combination whose projection on every task's direction is equal.

    d = Σ_k α_k g_k with Σ_k α_k = 1 and ⟨d, u_1⟩ = … = ⟨d, u_K⟩, u_k = g_k/‖g_k‖ (paper
    Eq. 6-7), so no task dominates the update through a larger gradient. α sums to 1: d is on
    the scale of the average gradient. The paper computes it w.r.t. the shared features, the
    default level here. `task_weights` are α. IMTL-L, the loss-scaling part, is `IMTLL`; both
    together are `IMTL`.

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return imtl_g_weights(gram)
