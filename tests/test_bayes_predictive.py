"""Predictive distributions of the heads (keras_bayesagg.bayes.predictive) against brute force."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_bayesagg.bayes import predictive


def _spd(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(n, n)) * scale
    return a @ a.T / n + 0.1 * np.eye(n)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_quadratic_forms_match_explicit_products():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    blocks = np.stack([_spd(rng, 5) for _ in range(3)])
    expected = np.einsum("bp,mpq,bq->bm", x, blocks, x)
    np.testing.assert_allclose(predictive.quadratic_forms(tf.constant(x), tf.constant(blocks)).numpy(), expected)


def test_regression_predictive_variance_against_an_explicit_inverse():
    rng = np.random.default_rng(1)
    features, gamma = rng.normal(size=(40, 6)), 0.3
    precision = np.eye(6) / gamma + features.T @ features
    covariance = np.linalg.inv(precision)
    h = rng.normal(size=(5, 6))
    noise = np.array([0.5, 2.0])
    got = predictive.regression_predictive_variance(tf.constant(h), tf.constant(covariance), tf.constant(noise))
    expected = np.stack([noise[o] * (1.0 + np.array([row @ covariance @ row for row in h])) for o in range(2)], axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_noise_variance_from_statistics_equals_residuals_over_residual_degrees_of_freedom():
    rng = np.random.default_rng(2)
    n, d, gamma = 60, 8, 0.5
    h = rng.normal(size=(n, d))
    y = h @ rng.normal(size=(d, 2)) + rng.normal(size=(n, 2)) * np.array([0.3, 1.5])
    precision = np.eye(d) / gamma + h.T @ h
    covariance = np.linalg.inv(precision)
    mean = (covariance @ h.T @ y).T  # [O, D]
    residuals = y - h @ mean.T
    effective = np.trace(h @ covariance @ h.T)  # the hat matrix's trace
    expected = np.sum(residuals**2, axis=0) / (n - effective)
    got = predictive.regression_noise_variance(
        tf.constant(h.T @ h), tf.constant(h.T @ y), tf.constant(np.sum(y**2, axis=0)), tf.constant(np.float64(n)),
        tf.constant(mean), tf.constant(covariance),
    )  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8)


def test_probit_probability_matches_monte_carlo_over_the_laplace_posterior():
    rng = np.random.default_rng(3)
    width = 4
    head = rng.normal(size=width) * 1.5
    covariance = _spd(rng, width, scale=1.2)
    h = np.concatenate([rng.normal(size=(20, width - 1)), np.ones((20, 1))], axis=1)
    draws = rng.multivariate_normal(head, covariance, size=200_000)
    monte_carlo = _sigmoid(h @ draws.T).mean(axis=1)
    mean, spread = h @ head, np.einsum("bp,pq,bq->b", h, covariance, h)
    got = predictive.probit_probability(tf.constant(mean), tf.constant(spread)).numpy()
    # The probit approximation itself is good to ~0.02 in probability; Monte Carlo noise is ~0.001.
    np.testing.assert_allclose(got, monte_carlo, atol=0.02)
    assert np.abs(got - monte_carlo).max() < np.abs(_sigmoid(mean) - monte_carlo).max()  # closer than the plug-in


def test_logit_covariance_matches_the_kronecker_jacobian():
    rng = np.random.default_rng(4)
    classes, width = 3, 4
    covariance = _spd(rng, classes * width)
    h = rng.normal(size=(6, width))
    got = predictive.logit_covariance(tf.constant(h), tf.constant(covariance), classes).numpy()
    for row, x in zip(got, h):
        jacobian = np.kron(np.eye(classes), x[None, :])  # ∂(W h̃)/∂vec W, vec row-major (class, feature)
        np.testing.assert_allclose(row, jacobian @ covariance @ jacobian.T, rtol=1e-10)


def test_mean_field_softmax_is_softmax_without_variance_and_the_probit_rule_for_two_classes():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(5, 4)) * 3
    plain = predictive.mean_field_softmax(tf.constant(logits), tf.zeros([5, 4, 4], tf.float64)).numpy()
    np.testing.assert_allclose(plain, tf.nn.softmax(logits).numpy(), rtol=1e-10)
    two = logits[:, :2]
    covariance = np.stack([_spd(rng, 2) for _ in range(5)])
    spread = covariance[:, 0, 0] + covariance[:, 1, 1] - 2 * covariance[:, 0, 1]
    got = predictive.mean_field_softmax(tf.constant(two), tf.constant(covariance)).numpy()
    expected = predictive.probit_probability(tf.constant(two[:, 1] - two[:, 0]), tf.constant(spread)).numpy()
    np.testing.assert_allclose(got[:, 1], expected, rtol=1e-10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


def test_mean_field_softmax_matches_monte_carlo():
    rng = np.random.default_rng(6)
    classes, width = 4, 3
    head = rng.normal(size=classes * width) * 1.5
    covariance = _spd(rng, classes * width, scale=1.0)
    h = np.concatenate([rng.normal(size=(10, width - 1)), np.ones((10, 1))], axis=1)
    draws = rng.multivariate_normal(head, covariance, size=100_000).reshape(-1, classes, width)
    logits = np.einsum("scp,bp->sbc", draws, h)
    monte_carlo = np.exp(logits - logits.max(-1, keepdims=True))
    monte_carlo = (monte_carlo / monte_carlo.sum(-1, keepdims=True)).mean(axis=0)
    mean = h @ head.reshape(classes, width).T
    logit_covariance = predictive.logit_covariance(tf.constant(h), tf.constant(covariance), classes)
    got = predictive.mean_field_softmax(tf.constant(mean), logit_covariance).numpy()
    plug_in = tf.nn.softmax(mean).numpy()
    # Observed: max 0.065, mean 0.018 (plug-in softmax: max 0.31, mean 0.068) at these large logit variances.
    assert np.abs(got - monte_carlo).max() < 0.09
    assert np.abs(got - monte_carlo).mean() < 0.4 * np.abs(plug_in - monte_carlo).mean()


def test_entropies():
    p = tf.constant([0.0, 0.5, 1.0], tf.float64)
    np.testing.assert_allclose(predictive.binary_entropy(p).numpy(), [0.0, np.log(2.0), 0.0], atol=1e-12)
    uniform = tf.fill([2, 4], tf.constant(0.25, tf.float64))
    np.testing.assert_allclose(predictive.categorical_entropy(uniform).numpy(), [np.log(4.0)] * 2, rtol=1e-12)


def _factored(rng: np.random.Generator, classes: int, width: int) -> predictive.FactoredCovariance:
    """A random Kronecker-factored covariance with distinct eigenvalues (float64)."""
    class_basis, _ = np.linalg.qr(rng.normal(size=(classes, classes)))
    feature_basis, _ = np.linalg.qr(rng.normal(size=(width, width)))
    eigenvalues = rng.uniform(0.1, 2.0, size=(classes, width))
    return predictive.FactoredCovariance(*(tf.constant(a) for a in (class_basis, feature_basis, eigenvalues)))


def _dense(factored: predictive.FactoredCovariance) -> np.ndarray:
    rotation = np.kron(factored.classes.numpy(), factored.features.numpy())  # row-major (class, feature)
    return rotation @ np.diag(factored.eigenvalues.numpy().ravel()) @ rotation.T


def test_factored_logit_covariance_is_the_dense_covariance_seen_through_the_features():
    rng = np.random.default_rng(5)
    classes, width = 4, 6
    factored = _factored(rng, classes, width)
    extended = np.concatenate([rng.normal(size=(7, width - 1)), np.ones((7, 1))], axis=1)
    dense = _dense(factored)
    expected = np.stack([np.kron(np.eye(classes), row) @ dense @ np.kron(np.eye(classes), row).T for row in extended])
    got = predictive.factored_logit_covariance(tf.constant(extended), factored).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_factored_from_dense_is_exact_on_factored_covariances_and_moment_matching_otherwise():
    rng = np.random.default_rng(6)
    classes, width = 4, 5
    factored = _factored(rng, classes, width)
    recovered = predictive.factored_from_dense(tf.constant(_dense(factored)), classes)
    np.testing.assert_allclose(_dense(recovered), _dense(factored), atol=1e-10)
    general = _spd(rng, classes * width)  # not of the factored form
    projected = predictive.factored_from_dense(tf.constant(general), classes)
    blocks = general.reshape(classes, width, classes, width)
    for trace, basis in (
        (np.einsum("cidi->cd", blocks), projected.classes),
        (np.einsum("cicj->ij", blocks), projected.features),
    ):
        rotated = basis.numpy().T @ trace @ basis.numpy()  # the basis diagonalizes the partial traces
        np.testing.assert_allclose(rotated - np.diag(np.diag(rotated)), 0.0, atol=1e-10)
    rotation = np.kron(projected.classes.numpy(), projected.features.numpy())
    variances = np.diag(rotation.T @ general @ rotation).reshape(classes, width)  # each direction's variance
    np.testing.assert_allclose(projected.eigenvalues.numpy(), variances, rtol=1e-10)
    assert np.abs(_dense(projected) - general).max() > 1e-3  # a projection: the off-diagonal part is dropped
