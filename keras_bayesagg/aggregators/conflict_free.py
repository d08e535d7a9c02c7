"""ConFIG (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, trace_normalized
from keras_bayesagg.aggregators.aligned_mtl import RANK_TOLERANCE


def config_weights(gram: tf.Tensor) -> tf.Tensor:
    """Weights of g_ConFIG = (Σ_i ⟨g_i, ĝ⟩) ĝ, ĝ = U(Ũ⁺ 1) (paper Eq. 2), from the Gram matrix alone.

    With unit vectors ũ_i = g_i/‖g_i‖ and their cosine matrix C = ŨŨᵀ, Ũ⁺1 = Ũᵀ C⁺ 1 = Σ_i a_i g_i with
    a = (C⁺1)/‖g‖ (elementwise); ‖Ũ⁺1‖² = aᵀMa and Σ_i ⟨g_i, Ũ⁺1⟩ = 1ᵀMa, so g_ConFIG = (1ᵀMa / aᵀMa) Σ a_i g_i.
    C⁺ drops eigenvalues below K·ε·λ_max; zero gradients get weight 0 (their unit vector is 0).
    """
    matrix = trace_normalized(gram)
    size = tf.shape(matrix)[0]
    squared_norms = tf.linalg.diag_part(matrix)
    present = squared_norms > 0.0
    inverse_norms = tf.where(present, tf.math.rsqrt(tf.where(present, squared_norms, 1.0)), 0.0)
    cosines = matrix * inverse_norms[:, None] * inverse_norms[None, :]
    eigenvalues, eigenvectors = tf.linalg.eigh(cosines)
    cutoff = tf.reduce_max(eigenvalues) * tf.cast(size, SOLVER_DTYPE) * RANK_TOLERANCE
    kept = eigenvalues > cutoff
    inverse = tf.where(kept, 1.0 / tf.where(kept, eigenvalues, 1.0), 0.0)
    ones = tf.ones([size], SOLVER_DTYPE)
    coefficients = tf.linalg.matvec(eigenvectors, inverse * tf.linalg.matvec(eigenvectors, ones, transpose_a=True))
    unnormalized = coefficients * inverse_norms
    matrix_times = tf.linalg.matvec(matrix, unnormalized)
    squared_length = tf.tensordot(unnormalized, matrix_times, 1)
    return unnormalized * tf.reduce_sum(matrix_times) / tf.where(squared_length > 0.0, squared_length, 1.0)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class ConFIG(GradientCombination):
    """Conflict-free update: the direction equally inclined to every task gradient, with the summed projection.

        ĝ ∝ Ũ⁺ 1 (⟨ĝ, g_i/‖g_i‖⟩ equal for all i, the least-norm such vector),  d = (Σ_i ⟨g_i, ĝ⟩) ĝ

    (paper Eq. 2, without the optional preference vector). When the gradients are linearly independent
    ⟨d, g_i⟩ > 0 for every task (equal cosines, positive since the sum is). K identical gradients give K·g
    (the sum, as the paper's length Σ_i ⟨g_i, ĝ⟩ makes it). Only the Gram matrix is needed (see
    `config_weights`); the paper and TorchJD form the [K, N] unit vectors and their pseudo-inverse.
    `task_weights` are the coefficients of d in terms of the g_k. (The paper's momentum variant M-ConFIG
    is not included.)

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return config_weights(gram)
