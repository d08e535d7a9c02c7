"""The Kronecker-factored multiclass posterior against the full GGN and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes import classification, evidence, kronecker, kronecker_draws, predictive

CLASSES, DIM, ROWS = 4, 5, 40
GAMMA = 0.3


def _data(seed: int = 0, scale: float = 0.7):
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.normal(size=(ROWS, DIM)), tf.float64)
    labels = tf.one_hot(rng.integers(0, CLASSES, ROWS), CLASSES, dtype=tf.float64)
    weights = tf.constant(scale * rng.normal(size=(CLASSES, DIM + 1)), tf.float64)
    present = tf.constant((rng.random(ROWS) > 0.2) * rng.uniform(0.5, 2.0, ROWS), tf.float64)
    return features, labels, weights, present


def _full_data(features, labels, weights, present, prior_variance=GAMMA):
    factors = kronecker.kronecker_factors(features, labels, weights, present)
    basis = kronecker.kronecker_basis(factors)
    curvature = kronecker.eigenbasis_curvature(features, weights, basis, present)
    return factors, basis, curvature, kronecker.full_data_posterior(factors, curvature, basis, weights, prior_variance)


def test_exact_when_every_sample_has_the_same_class_curvature():
    # W = 0: every p_i is uniform, so Σ H_i ⊗ h̃h̃ᵀ = H ⊗ G is a Kronecker product and nothing is approximated.
    features, labels, _, _ = _data()
    weights = tf.zeros([CLASSES, DIM + 1], tf.float64)
    factors, basis, curvature, posterior = _full_data(features, labels, weights, None)
    full = classification.newton_posterior(
        classification.multiclass_curvature(features, labels, weights),
        tf.reshape(weights, [1, -1]),
        *classification.isotropic_prior(1, CLASSES * (DIM + 1), GAMMA, tf.float64),
    )
    np.testing.assert_allclose(kronecker.dense_precision(basis, posterior.precision), full.precision[0], atol=1e-10)
    np.testing.assert_allclose(tf.reshape(posterior.mean, [-1]), full.mean[0], atol=1e-10)
    chosen = kronecker.evidence_prior_variance(factors, curvature, basis, weights, GAMMA)
    flat = classification.Curvature(
        full.precision - tf.eye(full.precision.shape[-1], dtype=tf.float64) / GAMMA,
        tf.reshape(factors.loss_gradient, [1, -1]),
    )
    expected = evidence.classification_evidence_variance(flat, tf.reshape(weights, [1, -1]), GAMMA)
    np.testing.assert_allclose(chosen, expected[0], rtol=1e-8)


def test_eigenbasis_curvature_is_the_diagonal_of_the_rotated_full_ggn():
    features, labels, weights, present = _data(1)
    factors, basis, curvature, _ = _full_data(features, labels, weights, present)
    rotation = kronecker.dense_precision(basis, tf.ones_like(curvature))  # Q Qᵀ = I: checks orthogonality
    np.testing.assert_allclose(rotation, np.eye(CLASSES * (DIM + 1)), atol=1e-10)
    q = np.kron(basis.classes.numpy(), basis.features.numpy())
    # The weighted GGN Σ π_i H_i ⊗ h̃_i h̃_iᵀ by brute force.
    extended = np.concatenate([features.numpy(), np.ones((ROWS, 1))], axis=1)
    logits = extended @ weights.numpy().T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ggn = sum(
        present.numpy()[i] * np.kron(np.diag(p[i]) - np.outer(p[i], p[i]), np.outer(extended[i], extended[i]))
        for i in range(ROWS)
    )
    np.testing.assert_allclose(curvature.numpy().reshape(-1), np.diag(q.T @ ggn @ q), atol=1e-10)
    np.testing.assert_allclose(factors.feature_factor, (present.numpy()[:, None] * extended).T @ extended, atol=1e-10)


def test_batch_posterior_is_a_newton_step_of_the_diagonal_precision():
    features, labels, weights, present = _data(2)
    _, basis, _, prior = _full_data(features, labels, weights, present)
    batch_features, batch_labels, _, batch_present = (t[:12] for t in _data(3))
    posterior = kronecker.batch_posterior(
        batch_features, batch_labels, weights, basis, prior.precision, prior.mean, batch_present
    )
    precision = kronecker.dense_precision(basis, posterior.precision).numpy()
    prior_precision = kronecker.dense_precision(basis, prior.precision).numpy()
    extended = np.concatenate([batch_features.numpy(), np.ones((12, 1))], axis=1)
    logits = extended @ weights.numpy().T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gradient = ((batch_present.numpy()[:, None] * (p - batch_labels.numpy())).T @ extended).reshape(-1)
    w, m = weights.numpy().reshape(-1), prior.mean.numpy().reshape(-1)
    expected = w - np.linalg.solve(precision, gradient + prior_precision @ (w - m))
    np.testing.assert_allclose(posterior.mean.numpy().reshape(-1), expected, atol=1e-9)
    assert bool(posterior.ok)


def test_the_rotated_batch_posterior_is_the_batch_posterior_in_the_feature_eigenbasis():
    features, labels, weights, present = _data(2)
    _, basis, _, prior = _full_data(features, labels, weights, present)
    batch_features, batch_labels, _, batch_present = (t[:12] for t in _data(3))
    inputs = (batch_features, batch_labels, weights)
    expected = kronecker.batch_posterior(*inputs, basis, prior.precision, prior.mean, batch_present)
    mean, precision, ok = kronecker_draws.rotated_batch_posterior(
        *inputs, basis.classes, basis.features, prior.precision, prior.mean, batch_present
    )
    np.testing.assert_allclose(mean, expected.mean @ basis.features, atol=1e-10)
    np.testing.assert_allclose(precision, expected.precision, rtol=1e-12)
    assert bool(ok)


@pytest.mark.parametrize("draws_per_rotation", [1, 16])
def test_monte_carlo_moments_match_the_full_paths_estimator_on_the_same_posterior(draws_per_rotation):
    # Sign-flipped reuse of a rotated noise matrix keeps every draw exact: the same moments in expectation.
    features, labels, weights, present = _data(4, scale=1.5)
    _, basis, _, posterior = _full_data(features, labels, weights, present)
    batch, batch_labels = features[:6], labels[:6]
    samples = 2**16
    moments = kronecker.gradient_moments(
        posterior, basis, batch, batch_labels, samples, tf.constant([1, 2]), draws_per_rotation
    )
    precision = kronecker.dense_precision(basis, posterior.precision)[None]
    factor = tf.linalg.cholesky(precision)
    dense = classification.ClassificationPosterior(tf.reshape(posterior.mean, [1, -1]), precision, factor, [True])
    reference = classification.multiclass_gradient_moments(dense, batch, batch_labels, samples, tf.constant([3, 4]))
    scale = np.abs(reference.mean.numpy()).max()
    np.testing.assert_allclose(moments.mean, reference.mean, atol=0.03 * scale)
    np.testing.assert_allclose(moments.variance, reference.variance, rtol=0.08, atol=1e-3 * scale**2)


@pytest.mark.parametrize("draws_per_rotation", [1, 4])
def test_moments_compile_with_xla_and_run_in_several_chunks(monkeypatch, draws_per_rotation):
    # XLA's Philox stream differs from the kernel's: compare the estimates, not the draws.
    features, labels, weights, _ = _data(5)
    features, labels, weights = (tf.cast(t, tf.float32) for t in (features, labels, weights))
    _, basis, _, posterior = _full_data(features, labels, weights, None)
    batch, batch_labels, samples = features[:6], labels[:6], 2**14
    arguments = (posterior, basis, batch, batch_labels, samples, tf.constant([7, 7]), draws_per_rotation)
    eager = kronecker.gradient_moments(*arguments)
    monkeypatch.setattr(kronecker_draws, "DRAW_CHUNK_ELEMENTS", CLASSES * (DIM + 1) * 8)
    assert kronecker.draw_chunk(samples, CLASSES, DIM + 1, 6, draws_per_rotation) == 8
    compiled = tf.function(kronecker.gradient_moments, jit_compile=True)(*arguments)
    scale = np.abs(eager.mean.numpy()).max()
    np.testing.assert_allclose(compiled.mean, eager.mean, atol=0.05 * scale)
    np.testing.assert_allclose(compiled.variance, eager.variance, rtol=0.1, atol=1e-3 * scale**2)


def test_logit_covariance_matches_the_dense_covariance():
    features, labels, weights, present = _data(6)
    _, basis, _, posterior = _full_data(features, labels, weights, present)
    covariance = tf.linalg.inv(kronecker.dense_precision(basis, posterior.precision))
    expected = predictive.logit_covariance(classification.with_bias_feature(features[:5]), covariance, CLASSES)
    np.testing.assert_allclose(
        kronecker.logit_covariance(features[:5], basis, posterior.precision), expected, rtol=1e-8, atol=1e-12
    )


@pytest.mark.parametrize("samples,classes,width,batch", [(1024, 1000, 257, 128), (1024, 5, 17, 128)])
def test_draw_chunk_divides_the_draws_within_the_budget(samples, classes, width, batch):
    chunk = kronecker.draw_chunk(samples, classes, width, batch)
    assert samples % chunk == 0 and chunk * classes * max(width, batch) <= kronecker.DRAW_CHUNK_ELEMENTS


def test_antithetic_reuse_cancels_the_noise_linear_in_the_draw():
    # With a near-zero head the gradient is almost linear in the drawn weights: independent draws leave
    # Monte Carlo noise in E[g], antithetic pairs (draws_per_rotation ≥ 2) remove nearly all of it.
    features, labels, _, _ = _data(7)
    weights = tf.zeros([CLASSES, DIM + 1], tf.float64)
    _, basis, _, posterior = _full_data(features, labels, weights, None, prior_variance=1e-4)
    batch, batch_labels = features[:6], labels[:6]
    reference = kronecker.gradient_moments(posterior, basis, batch, batch_labels, 2**14, tf.constant([1, 1]), 2)
    errors = {}
    for reuse in (1, 8):
        estimate = kronecker.gradient_moments(posterior, basis, batch, batch_labels, 64, tf.constant([2, 2]), reuse)
        errors[reuse] = float(tf.norm(estimate.mean - reference.mean) / tf.norm(reference.mean))
    assert errors[8] < 0.2 * errors[1], errors


@pytest.mark.parametrize("reuse", [3, 6])
def test_draws_per_rotation_must_be_even_and_divide_the_draws(reuse):
    features, labels, weights, _ = _data(8)
    _, basis, _, posterior = _full_data(features, labels, weights, None)
    with pytest.raises(ValueError, match="draws_per_rotation"):
        kronecker.gradient_moments(posterior, basis, features[:4], labels[:4], 16, tf.constant([1, 1]), reuse)


def test_label_rotation_gathers_rows_for_class_indices_and_multiplies_probability_rows():
    rng = np.random.default_rng(9)
    basis = tf.constant(np.linalg.qr(rng.normal(size=(CLASSES, CLASSES)))[0])
    one_hot = tf.one_hot([0, 3, -1, 2], CLASSES, dtype=tf.float64) * tf.constant(
        [[1.0], [0.5], [1.0], [1.0]], tf.float64
    )
    soft = tf.nn.softmax(tf.constant(rng.normal(size=(4, CLASSES))), axis=1)
    for labels in (one_hot, soft):
        np.testing.assert_allclose(kronecker_draws.rotate_labels(labels, basis), labels @ basis, atol=1e-12)
