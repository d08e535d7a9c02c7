"""Regression posteriors and gradient moments: against the authors' outputs and against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes import (
    inverse_from_cholesky,
    inverse_variance_aggregate,
    regression,
    safe_cholesky,
    tempered_variance,
)


def _reference_posteriors(reference: dict[str, np.ndarray], dtype: tf.DType):
    features_full = tf.constant(reference["H_full"], dtype)
    targets_full = tf.constant(reference["reg_Y_full"], dtype)
    precision, _, full_mean, ok = regression.full_data_posterior(
        tf.matmul(features_full, features_full, transpose_a=True),
        tf.matmul(features_full, targets_full, transpose_a=True),
        float(reference["meta_GAMMA"]),
    )
    assert bool(ok)
    features = tf.constant(reference["H"], dtype)
    targets = tf.constant(reference["reg_Y"], dtype)
    prior_shift = tf.transpose(tf.matmul(full_mean, precision))  # Λ_F m_F as [D, O]
    batch = regression.batch_posterior(precision, prior_shift, features, targets)
    return precision, full_mean, batch, features, targets


@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-12), (tf.float32, 2e-5)])
def test_posteriors_match_reference(reference, dtype, tolerance):
    precision, full_mean, batch, _, _ = _reference_posteriors(reference, dtype)
    scale = lambda a: tolerance * max(1.0, np.abs(a).max())  # noqa: E731
    np.testing.assert_allclose(full_mean, reference["reg_full_mean"], atol=scale(reference["reg_full_mean"]))
    np.testing.assert_allclose(
        np.linalg.inv(precision.numpy()), reference["reg_full_cov"], atol=scale(reference["reg_full_cov"])
    )
    np.testing.assert_allclose(batch.mean, reference["reg_batch_mean"], atol=scale(reference["reg_batch_mean"]))
    np.testing.assert_allclose(
        inverse_from_cholesky(batch.precision_factor),
        reference["reg_batch_cov"],
        atol=scale(reference["reg_batch_cov"]),
    )


@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-12), (tf.float32, 1e-5)])
def test_gradient_moments_match_reference(reference, dtype, tolerance):
    _, _, batch, features, targets = _reference_posteriors(reference, dtype)
    moments = regression.gradient_moments(batch, features, targets)
    power = float(reference["meta_S_REG"])
    np.testing.assert_allclose(
        moments.mean, reference["reg_grad_mean"], atol=tolerance * np.abs(reference["reg_grad_mean"]).max()
    )
    np.testing.assert_allclose(
        tempered_variance(moments.variance, power), reference["reg_grad_var_pow"], rtol=tolerance * 10
    )


def test_moments_match_sampled_weights_and_autodiff():
    """Brute force: draw w ~ N(m, S), take ∂(wᵀh − y)²/∂h by autodiff, compare mean and variance."""
    rng = np.random.default_rng(3)
    dim, batch_size, outputs, draws = 5, 7, 2, 200_000
    features = rng.normal(size=(batch_size, dim))
    targets = rng.normal(size=(batch_size, outputs))
    prior_precision = np.eye(dim) * 2.0 + 0.3
    prior_shift = rng.normal(size=(dim, outputs))
    posterior = regression.batch_posterior(
        tf.constant(prior_precision), tf.constant(prior_shift), tf.constant(features), tf.constant(targets)
    )
    moments = regression.gradient_moments(posterior, tf.constant(features), tf.constant(targets))

    covariance = inverse_from_cholesky(posterior.precision_factor).numpy()
    chol = np.linalg.cholesky(covariance)
    for o in range(outputs):
        w = tf.constant(posterior.mean.numpy()[o] + rng.normal(size=(draws, dim)) @ chol.T)  # [S, D]
        # One copy of h per draw, so that autodiff of the summed loss yields every per-draw,
        # per-sample gradient ∂ℓ(w_s, h_i)/∂h_i at once.
        h = tf.broadcast_to(tf.constant(features), (draws, batch_size, dim))
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = tf.reduce_sum(tf.square(tf.einsum("sd,sbd->sb", w, h) - targets[:, o][None, :]))
        grads = tape.gradient(loss, h).numpy()  # [S, B, D]
        mean, var = grads.mean(axis=0), grads.var(axis=0)
        np.testing.assert_allclose(moments.mean.numpy()[:, o], mean, atol=0.02 * np.abs(mean).max())
        np.testing.assert_allclose(moments.variance.numpy()[:, o], var, rtol=0.03, atol=1e-3 * var.max())


def test_inverse_variance_aggregation_weights_and_extremes():
    means = tf.constant([[[1.0, 2.0], [3.0, -2.0]]])  # [B=1, T=2, D=2]
    variances = tf.constant([[[1.0, 4.0], [1.0, 1.0]]])
    combined = inverse_variance_aggregate(means, variances, tf.constant([1.0, 1.0]))
    np.testing.assert_allclose(combined.weights.numpy()[0], [[0.5, 0.2], [0.5, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(combined.gradient.numpy()[0], [2.0, 0.2 * 2.0 + 0.8 * -2.0], rtol=1e-6)
    # Variances at the clamp and far beyond float32's reciprocal range still give finite weights.
    extreme = inverse_variance_aggregate(means, tf.constant([[[0.0, 1e30], [1e-30, 1e30]]]), tf.constant([0.3, 0.3]))
    assert np.all(np.isfinite(extreme.gradient.numpy())) and np.all(np.isfinite(extreme.weights.numpy()))
    np.testing.assert_allclose(extreme.weights.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_safe_cholesky_recovers_singular_and_flags_hopeless():
    singular = tf.constant([[1.0, 1.0], [1.0, 1.0]])
    factor, ok = safe_cholesky(singular)
    assert bool(ok) and np.all(np.isfinite(factor.numpy()))
    indefinite = tf.constant([[1.0, 2.0], [2.0, 1.0]])
    _, ok = safe_cholesky(indefinite)
    assert not bool(ok)
    batch = tf.stack([tf.eye(2) * 3.0, singular])
    factor, ok = safe_cholesky(batch)
    assert ok.numpy().tolist() == [True, True]
    np.testing.assert_allclose(factor.numpy()[0], np.linalg.cholesky(np.eye(2) * 3.0), rtol=1e-6)  # untouched by jitter


def test_safe_cholesky_inside_graph_without_xla():
    @tf.function(jit_compile=False)
    def factor_in_graph(matrix):
        return safe_cholesky(matrix)

    _, ok = factor_in_graph(tf.constant([[1.0, 2.0], [2.0, 1.0]]))
    assert not bool(ok)


@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-10), (tf.float32, 3e-5)])
def test_low_rank_marginals_match_reference_and_direct_path(reference, dtype, tolerance):
    precision, full_mean, direct, features, targets = _reference_posteriors(reference, dtype)
    covariance = tf.constant(np.linalg.inv(precision.numpy().astype(np.float64)), dtype)
    low_rank = regression.low_rank_marginals(covariance, full_mean, features, targets)
    assert bool(low_rank.ok)
    full = regression.marginals_from_posterior(direct, features)
    np.testing.assert_allclose(
        low_rank.mean, reference["reg_batch_mean"], atol=tolerance * np.abs(reference["reg_batch_mean"]).max()
    )
    np.testing.assert_allclose(low_rank.covariance_diag, np.diag(reference["reg_batch_cov"]), rtol=tolerance * 10)
    for got, want in zip(low_rank[:4], full[:4]):
        np.testing.assert_allclose(got, want, rtol=tolerance * 100, atol=tolerance * np.abs(want.numpy()).max())
    moments = regression.gradient_moments(low_rank, features, targets)
    np.testing.assert_allclose(
        tempered_variance(moments.variance, float(reference["meta_S_REG"])),
        reference["reg_grad_var_pow"],
        rtol=tolerance * 30,
    )
