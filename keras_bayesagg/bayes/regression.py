"""Exact Bayesian linear regression heads and the moments of their gradients w.r.t. h.

Model: y_o = w_oᵀh + ε, ε ~ N(0, 1), no bias (SPEC "Regression"). All outputs of all regression
tasks share one precision matrix because it depends on the features only.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_bayesagg.bayes.linalg import inverse_diagonal, safe_cholesky


class RegressionPosterior(NamedTuple):
    """N(mean_o, Λ⁻¹) for each output o: `mean` [O, D], `precision_factor` L with LLᵀ = Λ."""

    mean: tf.Tensor
    precision_factor: tf.Tensor
    ok: tf.Tensor


class GradientMoments(NamedTuple):
    """Per-sample, per-task, per-dimension mean and variance of ∂ℓ/∂h: both [B, T, D]."""

    mean: tf.Tensor
    variance: tf.Tensor


def full_data_posterior(
    feature_gram: tf.Tensor, feature_target: tf.Tensor, prior_variance: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Posterior from sufficient statistics Σhhᵀ [D, D] and Σh·y [D, O] with prior N(0, γI).

    Returns (precision Λ_F [D, D], mean m_F [O, D], ok). Λ_F = I/γ + Σhhᵀ, m_F = Λ_F⁻¹ Σh·y.
    """
    dim = tf.shape(feature_gram)[0]
    precision = feature_gram + tf.eye(dim, dtype=feature_gram.dtype) / prior_variance
    factor, ok = safe_cholesky(precision)
    mean = tf.transpose(tf.linalg.cholesky_solve(factor, feature_target))
    return precision, mean, ok


def batch_posterior(
    prior_precision: tf.Tensor,
    prior_precision_mean: tf.Tensor,
    features: tf.Tensor,
    targets: tf.Tensor,
) -> RegressionPosterior:
    """Batch posterior with prior N(m_F, Λ_F⁻¹): Λ = Λ_F + HᵀH, m = Λ⁻¹(Λ_F m_F + Hᵀy).

    `prior_precision_mean` is Λ_F m_F stored as [D, O]; `features` H [B, D]; `targets` [B, O].
    """
    precision = prior_precision + tf.matmul(features, features, transpose_a=True)
    factor, ok = safe_cholesky(precision)
    shift = prior_precision_mean + tf.matmul(features, targets, transpose_a=True)
    mean = tf.transpose(tf.linalg.cholesky_solve(factor, shift))
    return RegressionPosterior(mean, factor, ok)


def gradient_moments(
    posterior: RegressionPosterior, features: tf.Tensor, targets: tf.Tensor
) -> GradientMoments:
    """Exact diagonal moments of g = ∂(wᵀh - y)²/∂h = 2w(wᵀh - y) under w ~ N(m_o, S).

    Paper Eq. 4, diagonal only, in closed form: with μz = m_oᵀh - y, c = S h, v = hᵀS h,
      E[g]_j   = 2(μz m_j + c_j)
      Var[g]_j = 4(S_jj v + c_j² + m_j² v + μz² S_jj + 2 m_j μz c_j).
    Cost O(D³ + B·D² + B·O·D); no B×D×D tensor is formed.
    """
    mean = posterior.mean  # [O, D]
    factor = posterior.precision_factor
    covariance_diag = inverse_diagonal(factor)  # [D]
    cov_features = tf.transpose(tf.linalg.cholesky_solve(factor, tf.transpose(features)))  # [B, D]
    quad = tf.reduce_sum(features * cov_features, axis=-1)  # [B]
    residual = tf.matmul(features, mean, transpose_b=True) - targets  # [B, O]

    m = mean[None, :, :]  # [1, O, D]
    c = cov_features[:, None, :]  # [B, 1, D]
    v = quad[:, None, None]  # [B, 1, 1]
    r = residual[:, :, None]  # [B, O, 1]
    s = covariance_diag[None, None, :]  # [1, 1, D]
    grad_mean = 2.0 * (r * m + c)
    grad_var = 4.0 * (s * v + tf.square(c) + tf.square(m) * v + tf.square(r) * s + 2.0 * m * r * c)
    return GradientMoments(grad_mean, grad_var)
