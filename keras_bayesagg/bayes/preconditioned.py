"""The binary batch posterior through the prior's cached inverse factor: one well-conditioned factorization.

A binary set's batch posterior precision is Λ = P + Σ_i s_i² h̃_i h̃_iᵀ per output (s_i² = π_i p_i(1 − p_i),
π_i the sample's weight; `classification.binary_curvature`). P is the epoch's prior, fixed between refreshes,
so its inverse Cholesky factor M = L_P⁻¹ can be computed once per epoch. With V = diag(s)·H̃·Mᵀ [B, n],

    Λ = L_P (I + VᵀV) L_Pᵀ,   I + VᵀV = L̃L̃ᵀ,   Λ⁻¹ = NᵀN with N = L̃⁻¹M (lower triangular),

and the posterior mean is the Newton step w − NᵀN(∇ + P(w − m_p)), as in `classification.newton_posterior`.

Why: I + VᵀV has every eigenvalue ≥ 1, so once V is bounded its Cholesky
factorization provably succeeds (`factorization_is_safe`), and TensorFlow's own kernel (which raises on a matrix that is not positive
definite, so it cannot take Λ itself) may be used: ~3x faster in graph mode on CPU than the blocked XLA
factorization plus the triangular inverse the exact moments need (docs/benchmarks.md). In BayesAgg the prior
is the full-data posterior, so I + VᵀV is close to I; where the check fails the caller takes the general path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_bayesagg.bayes.classification import binary_loss_gradient, with_bias_feature


class WhitenedCurvature(NamedTuple):
    """The batch's curvature rows in the prior's whitened coordinates, V [O, B, n], and the probabilities p [B, O]
    at the current head."""

    rows: tf.Tensor
    probabilities: tf.Tensor


class InverseFactorPosterior(NamedTuple):
    """N(mean, NᵀN) per output: `mean` [O, n], `inverse_factor` N [O, n, n] (lower), `ok` [O] (finite)."""

    mean: tf.Tensor
    inverse_factor: tf.Tensor
    ok: tf.Tensor


def native_kernels_apply() -> bool:
    """True where this path's TensorFlow kernels run as themselves: eagerly or in a graph, not inside an XLA
    computation (where `tf.linalg.cholesky` becomes XLA's own factorization, ~20x slower on CPU than the
    blocked one `linalg.safe_cholesky` uses there). Read while tracing."""
    if tf.executing_eagerly():
        return True
    try:
        from tensorflow.python.ops import control_flow_util  # no public test for "inside jit_compile"
    except ImportError:  # pragma: no cover - then never take this path under XLA by mistake
        return False
    return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def whitened_curvature(
    features: tf.Tensor, weights: tf.Tensor, prior_inverse_factor: tf.Tensor, present: tf.Tensor | None = None
) -> WhitenedCurvature:
    """V = diag(s)·H̃·Mᵀ per output, s_i = √(π_i p_i(1 − p_i)): `features` h [B, D], `weights` W [O, n],
    `prior_inverse_factor` M [O, n, n], `present` π [B, O] (None: all 1). Cost O(O·B·n²), matrix products only."""
    extended = with_bias_feature(features)
    probabilities = tf.sigmoid(tf.matmul(extended, weights, transpose_b=True))  # [B, O]
    curvature = probabilities * (1.0 - probabilities)
    if present is not None:
        curvature = curvature * tf.cast(present, features.dtype)
    batch = tf.broadcast_to(extended[None], tf.concat([tf.shape(weights)[:1], tf.shape(extended)], 0))
    whitened = tf.matmul(batch, prior_inverse_factor, transpose_b=True)  # [O, B, n]
    rows = whitened * tf.sqrt(tf.transpose(curvature))[:, :, None]
    return WhitenedCurvature(rows, probabilities)


def _gamma(count: int, eps: float) -> float:
    """γ_k = k·ε/(1 − k·ε), the rounding bound of a sum of k products (ε: the dtype's machine epsilon, 2u)."""
    return count * eps / (1.0 - count * eps)


def factorization_is_safe(rows: tf.Tensor) -> tf.Tensor:
    """Scalar bool: the Cholesky factorization of the computed I + VᵀV (V = `rows` [O, B, n]) surely succeeds.

    The computed Gram matrix is off by at most γ_B·‖V‖_F² in norm (2× for reading one triangle), so its
    smallest eigenvalue is λ ≥ 1 − 2γ_B‖V‖_F². Cholesky runs to completion when the unit-diagonal scaling H of the
    matrix has λ_min(H) > n·γ_{n+1}/(1 − γ_{n+1}) (Demmel; Higham, Accuracy and Stability of Numerical Algorithms,
    Thm. 10.7), and λ_min(H) ≥ λ / max_j (1 + ‖V_:j‖²). Both are checked with a margin of 2, and V must be finite.
    """
    size, batch = rows.shape[-1], rows.shape[-2]
    if size is None or batch is None:
        return tf.constant(False)
    eps = float(np.finfo(rows.dtype.as_numpy_dtype).eps)
    gamma_n = _gamma(int(size) + 1, eps)
    columns = tf.reduce_sum(tf.square(rows), axis=-2)  # ‖V_:j‖² [O, n]: not finite where V is not
    finite = tf.reduce_all(tf.math.is_finite(columns))
    smallest = 1.0 - 2.0 * _gamma(int(batch), eps) * tf.reduce_sum(columns, axis=-1)  # [O]
    largest_diagonal = 1.0 + tf.reduce_max(columns, axis=-1)
    scaled = smallest / largest_diagonal
    return finite & tf.reduce_all(smallest >= 0.5) & tf.reduce_all(scaled > 2.0 * size * gamma_n / (1.0 - gamma_n))


def binary_posterior(
    curvature: WhitenedCurvature,
    features: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor,
    prior_precision: tf.Tensor,
    prior_mean: tf.Tensor,
    prior_inverse_factor: tf.Tensor,
    present: tf.Tensor | None = None,
) -> InverseFactorPosterior:
    """The Newton posterior of `classification.newton_posterior` for a binary set, as (mean, N, ok).

    Only call it where `factorization_is_safe(curvature.rows)` holds: TensorFlow's CPU Cholesky kernel
    raises otherwise. `labels` y [B, O], `prior_precision` P and `prior_inverse_factor` M = L_P⁻¹ [O, n, n].
    """
    rows = curvature.rows
    identity = tf.eye(tf.shape(rows)[-1], batch_shape=tf.shape(rows)[:1], dtype=rows.dtype)
    core_factor = tf.linalg.cholesky(identity + tf.matmul(rows, rows, transpose_a=True))  # L̃
    inverse_factor = tf.linalg.triangular_solve(core_factor, prior_inverse_factor, lower=True)  # N = L̃⁻¹M
    gradient = binary_loss_gradient(with_bias_feature(features), curvature.probabilities, labels, present)  # [O, n]
    direction = gradient + tf.linalg.matvec(prior_precision, weights - prior_mean)
    step = tf.linalg.matvec(inverse_factor, tf.linalg.matvec(inverse_factor, direction), transpose_a=True)
    mean = weights - step
    ok = tf.reduce_all(tf.math.is_finite(inverse_factor), axis=[-2, -1]) & tf.reduce_all(
        tf.math.is_finite(mean), axis=-1
    )
    return InverseFactorPosterior(mean, inverse_factor, ok)
