"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import trace_normalized

# Eigenvalues below max(λ)·K·ε (ε of float32, the precision of the Gram matrix) count as zero.
RANK_TOLERANCE = float(np.finfo(np.float32).eps)


def balance_transformation(gram: tf.Tensor) -> tf.Tensor:
    """B = σ_min V Λ^{-1/2} Vᵀ on the range of M = GᵀG = V Λ Vᵀ (paper Eq. 10-11, scale "min").

    Task gradients are the columns of G and σ_min² is the smallest non-zero eigenvalue of M.
    The aligned gradients Ĝ = G B are orthogonal with equal norms σ_min (ĜᵀĜ = σ_min² on the
    range of M): the linear system of the gradients has condition number 1.
    """
    matrix = trace_normalized(gram)
    eigenvalues, eigenvectors = tf.linalg.eigh(matrix)
    size = tf.shape(matrix)[0]
    in_range = eigenvalues > tf.reduce_max(eigenvalues) * tf.cast(size, matrix.dtype) * RANK_TOLERANCE
    safe = tf.where(in_range, eigenvalues, tf.ones_like(eigenvalues))
    smallest = tf.reduce_min(
        tf.where(in_range, eigenvalues, tf.fill(tf.shape(eigenvalues), tf.constant(np.inf, matrix.dtype)))
    )
    smallest = tf.where(tf.reduce_any(in_range), smallest, tf.zeros_like(smallest))
    inverse_roots = tf.where(in_range, tf.math.rsqrt(safe), tf.zeros_like(safe))
    return tf.sqrt(smallest) * tf.matmul(eigenvectors * inverse_roots[None], eigenvectors, transpose_b=True)


def aligned_mtl_weights(gram: tf.Tensor) -> tf.Tensor:
    """Weights B·1 of d = Ĝ 1 = G B 1, the sum of the aligned gradients (authors' code)."""
    return tf.reduce_sum(balance_transformation(gram), axis=1)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class AlignedMTL(GradientCombination):
    """Align the principal components of the task gradients, then sum them.

    The task gradients G are replaced by Ĝ = σ_min G V Λ^{-1/2} Vᵀ, the closest (Procrustes)
    matrix with orthogonal columns of equal norm σ_min (paper Eq. 10-11, scale "min"), and
    d = Ĝ 1: no task dominates, no two aligned gradients conflict. With identical gradients d
    is their sum (linear scalarization's scale). `task_weights` are the coefficients of d in
    terms of the original gradients. With level="representation" this is the paper's
    Aligned-MTL-UB.

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return aligned_mtl_weights(gram)
