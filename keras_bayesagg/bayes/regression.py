"""Exact Bayesian linear regression heads and the moments of their gradients w.r.t. h.

Model: y_o = w_oᵀh + ε, ε ~ N(0, 1), no bias (SPEC "Regression"). All outputs of all regression
tasks share one precision matrix because it depends on the features only.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_bayesagg.bayes.linalg import inverse_diagonal, inverse_from_cholesky, safe_cholesky


class RegressionPosterior(NamedTuple):
    """N(mean_o, Λ⁻¹) for each output o: `mean` [O, D], `precision_factor` L with LLᵀ = Λ."""

    mean: tf.Tensor
    precision_factor: tf.Tensor
    ok: tf.Tensor


class GradientMoments(NamedTuple):
    """Per-sample, per-task, per-dimension mean and variance of ∂ℓ/∂h: both [B, T, D]."""

    mean: tf.Tensor
    variance: tf.Tensor


class PosteriorMarginals(NamedTuple):
    """What the gradient moments need from a batch posterior N(m_o, S), without S itself.

    mean [O, D]; covariance_diag diag(S) [D]; covariance_features c_i = S h_i [B, D];
    feature_variance v_i = h_iᵀ S h_i [B]; ok: the factorization succeeded.
    """

    mean: tf.Tensor
    covariance_diag: tf.Tensor
    covariance_features: tf.Tensor
    feature_variance: tf.Tensor
    ok: tf.Tensor


class FullDataPosterior(NamedTuple):
    """The epoch's posterior, the next epoch's prior: precision Λ_F and covariance Λ_F⁻¹ [D, D],
    mean m_F [O, D], ok (the factorization succeeded)."""

    precision: tf.Tensor
    covariance: tf.Tensor
    mean: tf.Tensor
    ok: tf.Tensor


def full_data_posterior(feature_gram: tf.Tensor, feature_target: tf.Tensor, prior_variance: float) -> FullDataPosterior:
    """Posterior from sufficient statistics Σhhᵀ [D, D] and Σh·y [D, O] with prior N(0, γI).

    Λ_F = I/γ + Σhhᵀ, m_F = Λ_F⁻¹ Σh·y; the covariance (for the per-step rank-B update) comes
    from the same factorization.
    """
    dim = tf.shape(feature_gram)[0]
    precision = feature_gram + tf.eye(dim, dtype=feature_gram.dtype) / prior_variance
    factor, ok = safe_cholesky(precision)
    mean = tf.transpose(tf.linalg.cholesky_solve(factor, feature_target))
    covariance = inverse_from_cholesky(factor)
    return FullDataPosterior(precision, 0.5 * (covariance + tf.transpose(covariance)), mean, ok)


def per_output_feature_grams(features: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """Σ_i m_io h_i h_iᵀ for each output o: [O, D, D] from `features` H [B, D] and `present` m [B, O]."""
    masked = tf.transpose(tf.cast(present, features.dtype))[:, :, None] * features[None, :, :]  # [O, B, D]
    return tf.matmul(masked, features[None, :, :], transpose_a=True)


def per_output_full_data_posterior(
    feature_grams: tf.Tensor, feature_target: tf.Tensor, prior_variance: float | tf.Tensor
) -> FullDataPosterior:
    """`full_data_posterior` with one precision per output, for partly labelled data: output o sees only
    the rows where its label is present, Λ_o = I/γ + Σ_i m_io h_i h_iᵀ and m_o = Λ_o⁻¹ Σ_i m_io h_i y_io.

    `feature_grams` [O, D, D] (e.g. `per_output_feature_grams`), `feature_target` [D, O] (missing y
    set to 0). Returns precision and covariance [O, D, D], mean [O, D] and ok [O].
    """
    dim = tf.shape(feature_grams)[-1]
    precision = feature_grams + tf.eye(dim, dtype=feature_grams.dtype) / prior_variance
    factor, ok = safe_cholesky(precision)
    mean = tf.linalg.cholesky_solve(factor, tf.transpose(feature_target)[:, :, None])[:, :, 0]
    covariance = inverse_from_cholesky(factor)
    return FullDataPosterior(precision, 0.5 * (covariance + tf.linalg.matrix_transpose(covariance)), mean, ok)


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


def marginals_from_posterior(posterior: RegressionPosterior, features: tf.Tensor) -> PosteriorMarginals:
    """Marginals from a factored D×D precision: O(D³ + B·D²)."""
    factor = posterior.precision_factor
    covariance_features = tf.transpose(tf.linalg.cholesky_solve(factor, tf.transpose(features)))
    return PosteriorMarginals(
        mean=posterior.mean,
        covariance_diag=inverse_diagonal(factor),
        covariance_features=covariance_features,
        feature_variance=tf.reduce_sum(features * covariance_features, axis=-1),
        ok=posterior.ok,
    )


def low_rank_marginals(
    prior_covariance: tf.Tensor, prior_mean: tf.Tensor, features: tf.Tensor, targets: tf.Tensor
) -> PosteriorMarginals:
    """The same marginals as a rank-B update of the prior N(m_F, P) (Woodbury; no D×D factorization).

    With A = H P [B, D] and K = I + A Hᵀ [B, B] (eigenvalues ≥ 1):
      m = m_F + Aᵀ K⁻¹ (y − H m_F),   S hᵢ = (K⁻¹ A)ᵢ,   hᵢᵀ S hᵢ = 1 − (K⁻¹)ᵢᵢ,
      diag(S) = diag(P) − Σᵢ Aᵢ ⊙ (K⁻¹ A)ᵢ.
    Cost O(B·D² + B²·D + B³): the per-step choice when B < D, since the full-data prior covariance
    P = Λ_F⁻¹ is computed once per epoch. `prior_mean` is m_F as [O, D].
    """
    batch = tf.shape(features)[0]
    projected = tf.matmul(features, prior_covariance)  # A = H P
    gram = tf.eye(batch, dtype=features.dtype) + tf.matmul(projected, features, transpose_b=True)  # K
    factor, ok = safe_cholesky(gram)
    solved = tf.linalg.cholesky_solve(factor, projected)  # K⁻¹ A = rows S hᵢ
    residual = targets - tf.matmul(features, prior_mean, transpose_b=True)  # y − H m_F, [B, O]
    mean = prior_mean + tf.transpose(tf.matmul(projected, tf.linalg.cholesky_solve(factor, residual), transpose_a=True))
    gram_inverse_diag = inverse_diagonal(factor)
    return PosteriorMarginals(
        mean=mean,
        covariance_diag=tf.linalg.diag_part(prior_covariance) - tf.reduce_sum(projected * solved, axis=0),
        covariance_features=solved,
        feature_variance=1.0 - gram_inverse_diag,
        ok=ok,
    )


def gradient_moments(
    marginals: PosteriorMarginals | RegressionPosterior, features: tf.Tensor, targets: tf.Tensor
) -> GradientMoments:
    """Exact diagonal moments of g = ∂(wᵀh - y)²/∂h = 2w(wᵀh - y) under w ~ N(m_o, S).

    Paper Eq. 4, diagonal only, in closed form: with μz = m_oᵀh - y, c = S h, v = hᵀS h,
      E[g]_j   = 2(μz m_j + c_j)
      Var[g]_j = 4(S_jj v + c_j² + m_j² v + μz² S_jj + 2 m_j μz c_j).
    Cost O(B·O·D) given the marginals; no B×D×D tensor is formed.
    """
    if isinstance(marginals, RegressionPosterior):
        marginals = marginals_from_posterior(marginals, features)
    mean = marginals.mean  # [O, D]
    residual = tf.matmul(features, mean, transpose_b=True) - targets  # [B, O]

    m = mean[None, :, :]  # [1, O, D]
    c = marginals.covariance_features[:, None, :]  # [B, 1, D]
    v = marginals.feature_variance[:, None, None]  # [B, 1, 1]
    r = residual[:, :, None]  # [B, O, 1]
    s = marginals.covariance_diag[None, None, :]  # [1, 1, D]
    grad_mean = 2.0 * (r * m + c)
    grad_var = 4.0 * (s * v + tf.square(c) + tf.square(m) * v + tf.square(r) * s + 2.0 * m * r * c)
    return GradientMoments(grad_mean, grad_var)
