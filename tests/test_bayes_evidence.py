"""Evidence-chosen prior variance: recovers the true prior of simulated heads, is a monotone fixed point, compiles."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes import classification
from keras_bayesagg.bayes.evidence import classification_evidence_variance, regression_evidence_variance

FAR_STARTS = (1e-6, 1e6)


def _linear_model(seed: int = 0, dim: int = 20, outputs: int = 50, rows: int = 5000, prior_variance: float = 0.5):
    """y = Wᵀh + ε, ε ~ N(0, 1), W ~ N(0, γ*): the sufficient statistics and the realized mean square of W."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, dim))
    weights = np.sqrt(prior_variance) * rng.normal(size=(dim, outputs))
    targets = features @ weights + rng.normal(size=(rows, outputs))
    return features.T @ features, features.T @ targets, float(np.mean(weights**2))


def _fit(features, labels, weights, curvature_fn, steps: int = 15):
    """Newton iterations to the MAP under a very weak prior (γ = 100): the head the evidence sees."""
    flat = weights if curvature_fn is classification.binary_curvature else tf.reshape(weights, [1, -1])
    prior = classification.isotropic_prior(flat.shape[0], flat.shape[1], 100.0, tf.float64)
    for _ in range(steps):
        shaped = tf.reshape(flat, weights.shape)
        flat = classification.newton_posterior(curvature_fn(features, labels, shaped), flat, *prior).mean
    shaped = tf.reshape(flat, weights.shape)
    return curvature_fn(features, labels, shaped), flat


def _logistic_blocks(seed: int = 1, blocks: int = 40, dim: int = 20, rows: int = 4000, prior_variance: float = 0.25):
    """40 binary outputs y ~ Bernoulli(σ(wᵀh̃)), w ~ N(0, γ*I): curvature at the fitted head, the head, realized γ."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, dim))
    extended = np.concatenate([features, np.ones((rows, 1))], axis=1)
    weights = np.sqrt(prior_variance) * rng.normal(size=(blocks, dim + 1))
    labels = (rng.random((rows, blocks)) < 1.0 / (1.0 + np.exp(-extended @ weights.T))).astype(float)
    curvature, fitted = _fit(
        tf.constant(features),
        tf.constant(labels),
        tf.zeros([blocks, dim + 1], tf.float64),
        classification.binary_curvature,
    )
    return curvature, fitted, float(np.mean(weights**2))


@pytest.fixture(scope="module")
def linear_model():
    return _linear_model()


@pytest.fixture(scope="module")
def logistic_blocks():
    return _logistic_blocks()


def test_regression_recovers_the_true_prior_variance(linear_model):
    gram, cross, realized = linear_model
    chosen = float(regression_evidence_variance(tf.constant(gram), tf.constant(cross), 0.005))
    assert abs(chosen / 0.5 - 1.0) < 0.2
    assert abs(chosen / realized - 1.0) < 0.05  # the draw's own mean square, to sampling noise of the noise


def test_logistic_blocks_recover_the_true_prior_variance(logistic_blocks):
    """Per block the estimate has relative spread ≈ √(2/21) ≈ 0.3; the mean of 40 blocks is within ~0.05."""
    curvature, fitted, realized = logistic_blocks
    chosen = classification_evidence_variance(curvature, fitted, 0.005).numpy()
    assert chosen.shape == (40,)
    assert abs(chosen.mean() / 0.25 - 1.0) < 0.2
    assert abs(chosen.mean() / realized - 1.0) < 0.1
    assert 0.4 < np.median(chosen / 0.25) < 1.6


def test_multiclass_head_as_one_block_recovers_the_prior_variance():
    """A 5-class softmax head: the GGN's null space (adding a vector to every class) carries no evidence."""
    rng = np.random.default_rng(2)
    rows, dim, classes, prior_variance = 20_000, 12, 5, 0.3
    features = rng.normal(size=(rows, dim))
    weights = np.sqrt(prior_variance) * rng.normal(size=(classes, dim + 1))
    logits = np.concatenate([features, np.ones((rows, 1))], axis=1) @ weights.T
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = np.eye(classes)[[rng.choice(classes, p=p) for p in probabilities]]
    curvature, fitted = _fit(
        tf.constant(features),
        tf.constant(labels),
        tf.zeros([classes, dim + 1], tf.float64),
        classification.multiclass_curvature,
    )
    chosen = classification_evidence_variance(curvature, fitted, 0.005).numpy()
    # The evidence sees W's component outside the null space: mean square over (C-1)(D+1) directions.
    centred = weights - weights.mean(axis=0)
    assert chosen.shape == (1,)
    assert abs(chosen[0] / (np.sum(centred**2) / ((classes - 1) * (dim + 1))) - 1.0) < 0.2


def _literal_regression_step(gram, cross, variance):
    """SPEC, literally: Λ = I/γ + G, m = Λ⁻¹Σhy, n_eff = D − tr(Λ⁻¹)/γ, γ ← Σ‖m_o‖²/(O·n_eff)."""
    precision = np.eye(gram.shape[0]) / variance + gram
    covariance = np.linalg.inv(precision)
    mean = covariance @ cross
    effective = gram.shape[0] - np.trace(covariance) / variance
    return np.sum(mean**2) / (cross.shape[1] * effective)


def _literal_classification_step(ggn, gradient, weights, variance):
    """Λ = GGN + I/γ, m = W − Λ⁻¹(∇ + W/γ), n_eff = n − tr(Λ⁻¹)/γ, γ ← ‖m‖²/n_eff."""
    covariance = np.linalg.inv(ggn + np.eye(ggn.shape[0]) / variance)
    mean = weights - covariance @ (gradient + weights / variance)
    return np.sum(mean**2) / (ggn.shape[0] - np.trace(covariance) / variance)


@pytest.mark.parametrize("start", [0.01, 0.5, 3.0])
def test_one_iteration_is_the_literal_update(linear_model, logistic_blocks, start):
    gram, cross, _ = linear_model
    got = float(regression_evidence_variance(tf.constant(gram), tf.constant(cross), start, num_iterations=1))
    np.testing.assert_allclose(got, _literal_regression_step(gram, cross, start), rtol=1e-8)
    curvature, fitted, _ = logistic_blocks
    got = classification_evidence_variance(curvature, fitted, start, num_iterations=1).numpy()
    want = [
        _literal_classification_step(g, a, w, start)
        for g, a, w in zip(curvature.ggn.numpy(), curvature.loss_gradient.numpy(), fitted.numpy())
    ]
    np.testing.assert_allclose(got, want, rtol=1e-7)


def _trajectory(kind, data, start, steps=25):
    if kind == "regression":
        gram, cross, _ = data
        return np.array(
            [float(regression_evidence_variance(tf.constant(gram), tf.constant(cross), start, k)) for k in range(steps)]
        )
    curvature, fitted, _ = data
    return np.stack([classification_evidence_variance(curvature, fitted, start, k).numpy() for k in range(steps)])


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_fixed_point_is_reached_monotonically_from_far_below_and_above(kind, linear_model, logistic_blocks):
    data = linear_model if kind == "regression" else logistic_blocks
    below, above = (_trajectory(kind, data, start) for start in FAR_STARTS)
    slack = 1e-12 * below[-1]  # round-off at the fixed point itself
    assert np.all(np.diff(below, axis=0) >= -slack), "from below, γ must never decrease"
    assert np.all(np.diff(above, axis=0) <= slack), "from above, γ must never increase"
    np.testing.assert_allclose(below[-1], above[-1], rtol=1e-6)
    assert not np.allclose(below[1], below[-1], rtol=0.1)  # the start is far: the iteration had work to do


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_the_default_iterations_stop_at_the_fixed_point(kind, linear_model, logistic_blocks):
    """From the paper's γ = 0.005, 10 iterations reach a point that one more iteration moves by < 1e-4 relative."""
    if kind == "regression":
        gram, cross, _ = linear_model

        def run(start, iterations=10):
            return regression_evidence_variance(tf.constant(gram), tf.constant(cross), start, iterations).numpy()
    else:
        curvature, fitted, _ = logistic_blocks

        def run(start, iterations=10):
            return classification_evidence_variance(curvature, fitted, start, iterations).numpy()

    chosen = run(0.005)
    again = run(tf.constant(chosen), 1)
    assert np.max(np.abs(again / chosen - 1.0)) < 1e-4


def test_xla_and_float32_agree_with_float64_eager(linear_model, logistic_blocks):
    gram, cross, _ = linear_model
    curvature, fitted, _ = logistic_blocks
    regression_xla = tf.function(regression_evidence_variance, jit_compile=True)
    classification_xla = tf.function(classification_evidence_variance, jit_compile=True)
    reference_reg = regression_evidence_variance(tf.constant(gram), tf.constant(cross), 0.005).numpy()
    reference_cls = classification_evidence_variance(curvature, fitted, 0.005).numpy()
    # XLA's eigh (Jacobi) is not LAPACK's: agreement to round-off of the eigendecomposition.
    np.testing.assert_allclose(regression_xla(tf.constant(gram), tf.constant(cross), 0.005), reference_reg, rtol=1e-7)
    np.testing.assert_allclose(classification_xla(curvature, fitted, 0.005), reference_cls, rtol=1e-7)

    single_reg = regression_xla(tf.constant(gram, tf.float32), tf.constant(cross, tf.float32), 0.005)
    single_curvature = classification.Curvature(*(tf.cast(x, tf.float32) for x in curvature))
    single_cls = classification_xla(single_curvature, tf.cast(fitted, tf.float32), 0.005)
    assert single_reg.dtype == tf.float32 and single_cls.dtype == tf.float32
    np.testing.assert_allclose(single_reg, reference_reg, rtol=1e-4)
    np.testing.assert_allclose(single_cls, reference_cls, rtol=1e-4)


def test_bounds_and_a_block_without_data():
    """γ stays in [1e-8, 1e8]; a zero GGN (no data) keeps the start instead of dividing 0 by 0."""
    zero = classification.Curvature(tf.zeros([2, 3, 3], tf.float64), tf.zeros([2, 3], tf.float64))
    kept = classification_evidence_variance(zero, tf.zeros([2, 3], tf.float64), tf.constant([0.3, 5.0], tf.float64))
    np.testing.assert_array_equal(kept, [0.3, 5.0])
    # Perfectly fitting data with a direction of huge signal: γ runs to the upper bound, not to inf.
    gram = np.diag([1e-3, 1.0])
    cross = np.array([[1e6], [0.0]])
    grown = float(regression_evidence_variance(tf.constant(gram), tf.constant(cross), 1.0, num_iterations=50))
    assert grown == pytest.approx(1e8)
    tiny = float(regression_evidence_variance(tf.constant(np.eye(2) * 1e3), tf.zeros([2, 1], tf.float64), 1.0))
    assert tiny == pytest.approx(1e-8)
