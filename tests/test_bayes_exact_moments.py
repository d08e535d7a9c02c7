"""Quadrature gradient moments: against the authors' Monte Carlo, numpy brute force, our sampler and more nodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes import classification, inverse_from_cholesky
from keras_bayesagg.bayes.exact_moments import binary_gradient_moments_exact, two_class_gradient_moments_exact

BRUTE_FORCE_DRAWS = 400_000
STANDARD_ERRORS = 4.0


def _posterior_from_covariance(
    mean: np.ndarray, covariance: np.ndarray, dtype=tf.float64
) -> classification.ClassificationPosterior:
    precision = np.linalg.inv(covariance)
    precision = 0.5 * (precision + np.swapaxes(precision, -1, -2))
    factor = np.linalg.cholesky(precision)
    ok = tf.ones([mean.shape[0]], tf.bool)
    return classification.ClassificationPosterior(*(tf.constant(x, dtype) for x in (mean, precision, factor)), ok)


def _reference_binary(reference) -> tuple[classification.ClassificationPosterior, tf.Tensor, tf.Tensor]:
    """The authors' batch posterior (block-diagonal covariance) as our [O, D+1] blocks."""
    outputs, width = reference["bin_W"].shape
    covariance = reference["bin_batch_cov"]
    blocks = np.stack([covariance[o * width : (o + 1) * width, o * width : (o + 1) * width] for o in range(outputs)])
    posterior = _posterior_from_covariance(reference["bin_batch_mean"].reshape(outputs, width), blocks)
    return posterior, tf.constant(reference["H"]), tf.constant(reference["bin_Y"])


def _random_binary(
    seed: int, dim: int = 6, batch: int = 10, outputs: int = 3, prior_variance: float = 0.3, dtype=tf.float64
):
    """A Newton posterior from random data: blocks with v = h̃ᵀΣh̃ up to about 1."""
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.normal(size=(batch, dim)), dtype)
    weights = tf.constant(rng.normal(size=(outputs, dim + 1)), dtype)
    labels = tf.constant(rng.integers(0, 2, size=(batch, outputs)), dtype)
    curvature = classification.binary_curvature(features, labels, weights)
    posterior = classification.newton_posterior(
        curvature, weights, *classification.isotropic_prior(outputs, dim + 1, prior_variance, dtype)
    )
    return posterior, features, labels


def _two_class(reference, dtype=tf.float64):
    """A 2-class softmax head on the reference features: full-data prior, then the batch posterior."""
    rng = np.random.default_rng(11)
    dim = reference["H"].shape[1]
    weights = tf.constant(0.7 * rng.normal(size=(2, dim + 1)), dtype)
    flat = tf.reshape(weights, [1, -1])
    full_labels = tf.one_hot(reference["mc_Y_full"] % 2, 2, dtype=dtype)
    full = classification.newton_posterior(
        classification.multiclass_curvature(tf.constant(reference["H_full"], dtype), full_labels, weights),
        flat,
        *classification.isotropic_prior(1, flat.shape[1], float(reference["meta_GAMMA"]), dtype),
    )
    features, labels = tf.constant(reference["H"], dtype), tf.one_hot(reference["mc_Y"] % 2, 2, dtype=dtype)
    batch = classification.newton_posterior(
        classification.multiclass_curvature(features, labels, weights), flat, full.precision, full.mean
    )
    return batch, features, labels


def _brute_force(
    mean: np.ndarray, covariance: np.ndarray, gradient: Callable[[np.ndarray], np.ndarray], draws: int, seed: int
) -> tuple[np.ndarray, ...]:
    """numpy draws w ~ N(mean, covariance), g = gradient(w) [S, B, D]: mean, variance and their standard errors."""
    rng = np.random.default_rng(seed)
    root = np.linalg.cholesky(covariance)
    sums = None
    for start in range(0, draws, 50_000):
        count = min(50_000, draws - start)
        w = mean + rng.standard_normal((count, mean.size)) @ root.T
        g = gradient(w)
        squared = g * g
        powers = [g.sum(axis=0), squared.sum(axis=0), (squared * g).sum(axis=0), (squared * squared).sum(axis=0)]
        sums = powers if sums is None else [a + b for a, b in zip(sums, powers)]
    m1, m2, m3, m4 = (s / draws for s in sums)
    variance = m2 - m1**2
    fourth = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4  # central fourth moment
    return m1, variance, np.sqrt(variance / draws), np.sqrt(np.maximum(fourth - variance**2, 0.0) / draws)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _binary_brute_force(posterior, features, labels, draws=BRUTE_FORCE_DRAWS, seed=0):
    """Per block o: g = (σ(wᵀh̃) − y_o)·w_1:D; results stacked to [B, O, D]."""
    extended = np.concatenate([features.numpy(), np.ones((features.shape[0], 1))], axis=1)
    covariance = inverse_from_cholesky(posterior.precision_factor).numpy()
    results = []
    for o in range(covariance.shape[0]):
        y = labels.numpy()[:, o]

        def gradient(w, y=y):
            return (_sigmoid(w @ extended.T) - y)[:, :, None] * w[:, None, :-1]

        results.append(_brute_force(posterior.mean.numpy()[o], covariance[o], gradient, draws, seed + o))
    return [np.stack(parts, axis=1) for parts in zip(*results)]


def _assert_within_standard_errors(got, want, standard_error, scale):
    """|got − want| ≤ 4 SE (+ round-off relative to the array's scale); reports the worst z-score."""
    got = np.asarray(got)
    excess = np.abs(got - want) - STANDARD_ERRORS * standard_error - 1e-9 * scale
    worst = np.max(np.abs(got - want) / (standard_error + 1e-300))
    assert excess.max() <= 0, (
        f"{np.sum(excess > 0)} entries beyond {STANDARD_ERRORS} standard errors (worst z = {worst:.2f})"
    )


def test_binary_matches_the_authors_monte_carlo(reference):
    """SPEC tolerances for the reference's MC: mean within 2% of its largest magnitude, variance within 5%."""
    posterior, features, labels = _reference_binary(reference)
    moments = binary_gradient_moments_exact(posterior, features, labels)
    mean, variance = reference["bin_grad_mean"], reference["bin_grad_var"]
    assert moments.mean.shape == mean.shape and moments.variance.shape == variance.shape
    np.testing.assert_allclose(moments.mean, mean, atol=0.02 * np.abs(mean).max())
    np.testing.assert_allclose(moments.variance, variance, rtol=0.05)


@pytest.mark.parametrize("case", ["reference", "random"])
def test_binary_matches_numpy_brute_force(reference, case):
    """400,000 numpy draws per block, g formed explicitly: equal within 4 Monte Carlo standard errors."""
    posterior, features, labels = _reference_binary(reference) if case == "reference" else _random_binary(3)
    moments = binary_gradient_moments_exact(posterior, features, labels)
    mean, variance, mean_error, variance_error = _binary_brute_force(posterior, features, labels)
    _assert_within_standard_errors(moments.mean, mean, mean_error, np.abs(mean).max())
    _assert_within_standard_errors(moments.variance, variance, variance_error, variance.max())


def test_binary_matches_our_monte_carlo_sampler():
    """`classification.binary_gradient_moments` with 2^18 draws agrees within 4 of its standard errors."""
    posterior, features, labels = _random_binary(4)
    draws = 2**18
    sampled = classification.binary_gradient_moments(posterior, features, labels, draws, tf.constant([3, 1]))
    exact = binary_gradient_moments_exact(posterior, features, labels)
    _, _, mean_error, variance_error = _binary_brute_force(posterior, features, labels, draws=draws, seed=50)
    _assert_within_standard_errors(sampled.mean, exact.mean.numpy(), mean_error, np.abs(exact.mean).max())
    _assert_within_standard_errors(sampled.variance, exact.variance.numpy(), variance_error, np.max(exact.variance))


def test_two_class_matches_numpy_brute_force_of_the_softmax_gradient(reference):
    """Brute force uses the full softmax gradient Σ_c r_c w_c, not the difference reduction."""
    posterior, features, labels = _two_class(reference)
    moments = two_class_gradient_moments_exact(posterior, features, labels)
    extended = np.concatenate([features.numpy(), np.ones((features.shape[0], 1))], axis=1)
    width = extended.shape[1]

    def gradient(w):
        logits = np.einsum("sci,bi->sbc", w.reshape(-1, 2, width), extended)
        residuals = np.exp(logits - np.logaddexp(logits[..., :1], logits[..., 1:])) - labels.numpy()
        return np.einsum("sbc,scd->sbd", residuals, w.reshape(-1, 2, width)[:, :, :-1])

    covariance = inverse_from_cholesky(posterior.precision_factor).numpy()[0]
    mean, variance, mean_error, variance_error = _brute_force(
        posterior.mean.numpy()[0], covariance, gradient, BRUTE_FORCE_DRAWS, 7
    )
    assert moments.mean.shape == (features.shape[0], 1, features.shape[1])
    _assert_within_standard_errors(moments.mean[:, 0], mean, mean_error, np.abs(mean).max())
    _assert_within_standard_errors(moments.variance[:, 0], variance, variance_error, variance.max())


def test_two_class_matches_multiclass_monte_carlo(reference):
    """`classification.multiclass_gradient_moments` with 2^18 draws, within 4 standard errors (from numpy draws)."""
    posterior, features, labels = _two_class(reference)
    draws = 2**18
    sampled = classification.multiclass_gradient_moments(posterior, features, labels, draws, tf.constant([8, 8]))
    exact = two_class_gradient_moments_exact(posterior, features, labels)
    difference = posterior.mean.numpy()[0].reshape(2, -1)
    width = difference.shape[1]
    selector = np.concatenate([-np.eye(width), np.eye(width)])
    covariance = selector.T @ inverse_from_cholesky(posterior.precision_factor).numpy()[0] @ selector
    difference_posterior = _posterior_from_covariance((difference[1] - difference[0])[None], covariance[None])
    _, _, mean_error, variance_error = _binary_brute_force(
        difference_posterior, features, labels[:, 1:], draws=draws, seed=9
    )
    _assert_within_standard_errors(sampled.mean, exact.mean.numpy(), mean_error, np.abs(exact.mean).max())
    _assert_within_standard_errors(sampled.variance, exact.variance.numpy(), variance_error, np.max(exact.variance))


def test_two_class_with_a_certain_class_zero_is_the_binary_case():
    """w₀ ≡ 0 (precision 1e12) makes d = w₁: the 2-class result must equal the binary one on w₁ with y₁."""
    posterior, features, labels = _random_binary(5, outputs=1)
    width = posterior.mean.shape[1]
    precision = np.zeros((1, 2 * width, 2 * width))
    precision[0, :width, :width] = 1e12 * np.eye(width)
    precision[0, width:, width:] = posterior.precision.numpy()[0]
    mean = np.concatenate([np.zeros((1, width)), posterior.mean.numpy()], axis=1)
    joint = classification.ClassificationPosterior(
        tf.constant(mean), tf.constant(precision), tf.constant(np.linalg.cholesky(precision)), posterior.ok
    )
    two_labels = tf.concat([1.0 - labels, labels], axis=1)
    two = two_class_gradient_moments_exact(joint, features, two_labels)
    one = binary_gradient_moments_exact(posterior, features, labels)
    np.testing.assert_allclose(two.mean, one.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.variance, one.variance, rtol=1e-5, atol=1e-9)


def _relative_gap(first, second):
    return max(
        float(np.abs(first.mean - second.mean).max() / np.abs(second.mean).max()),
        float(
            np.max(
                np.abs(first.variance - second.variance) / np.maximum(second.variance, 1e-12 * np.max(second.variance))
            )
        ),
    )


@pytest.mark.parametrize("case", ["reference", "random", "two_class"])
def test_32_nodes_are_converged(reference, case):
    """32 nodes agree with 200 to 1e-6 relative in float64; 4 nodes do not (so the check has teeth)."""
    if case == "two_class":
        posterior, features, labels = _two_class(reference)
        moments_fn = two_class_gradient_moments_exact
    else:
        posterior, features, labels = _reference_binary(reference) if case == "reference" else _random_binary(6)
        moments_fn = binary_gradient_moments_exact
    fine = moments_fn(posterior, features, labels, num_nodes=200)
    assert _relative_gap(moments_fn(posterior, features, labels), fine) < 1e-6
    assert _relative_gap(moments_fn(posterior, features, labels, num_nodes=4), fine) > 1e-6


@pytest.mark.parametrize("kind", ["binary", "two_class"])
def test_xla_equals_eager_float32_close_to_float64_and_deterministic(reference, kind):
    def problem(dtype):
        return _random_binary(7, dtype=dtype) if kind == "binary" else _two_class(reference, dtype)

    moments_fn = binary_gradient_moments_exact if kind == "binary" else two_class_gradient_moments_exact
    compiled = tf.function(moments_fn, jit_compile=True)
    posterior, features, labels = problem(tf.float64)
    eager = moments_fn(posterior, features, labels)
    xla = compiled(posterior, features, labels)
    np.testing.assert_allclose(xla.mean, eager.mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(xla.variance, eager.variance, rtol=1e-10, atol=1e-14)
    again = compiled(posterior, features, labels)
    np.testing.assert_array_equal(again.mean, xla.mean)
    np.testing.assert_array_equal(again.variance, xla.variance)

    posterior32, features32, labels32 = problem(tf.float32)
    single = compiled(posterior32, features32, labels32)
    assert single.mean.dtype == tf.float32
    np.testing.assert_allclose(single.mean, eager.mean, atol=1e-4 * np.abs(eager.mean).max())
    np.testing.assert_allclose(single.variance, eager.variance, rtol=1e-3, atol=1e-5 * np.max(eager.variance))


@pytest.mark.parametrize("dtype, precision_scale", [(tf.float64, 1e14), (tf.float32, 1e12)])
def test_vanishing_covariance_gives_the_point_gradient(dtype, precision_scale):
    """v → 0: no division blow-up; the moments tend to g = (σ(mᵀh̃) − y)·m_1:D with zero variance."""
    rng = np.random.default_rng(8)
    features = rng.normal(size=(5, 3))
    mean = rng.normal(size=(2, 4))
    labels = rng.integers(0, 2, size=(5, 2)).astype(float)
    precision = np.broadcast_to(precision_scale * np.eye(4), (2, 4, 4))
    posterior = classification.ClassificationPosterior(
        tf.constant(mean, dtype),
        tf.constant(precision, dtype),
        tf.constant(np.sqrt(precision), dtype),
        tf.ones([2], tf.bool),
    )
    moments = binary_gradient_moments_exact(posterior, tf.constant(features, dtype), tf.constant(labels, dtype))
    extended = np.concatenate([features, np.ones((5, 1))], axis=1)
    point = (_sigmoid(extended @ mean.T) - labels)[:, :, None] * mean[None, :, :-1]
    assert np.isfinite(moments.mean.numpy()).all() and np.isfinite(moments.variance.numpy()).all()
    np.testing.assert_allclose(moments.mean, point, atol=1e-5)
    np.testing.assert_allclose(moments.variance, 0.0, atol=1e-5)


def test_float32_saturated_logits_stay_finite():
    weights = tf.constant([[40.0, -40.0, 5.0], [-60.0, 60.0, 0.0]])
    features = tf.constant([[1.0, 0.5], [2.0, -1.0], [0.0, 0.0]])
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    curvature = classification.binary_curvature(features, labels, weights)
    posterior = classification.newton_posterior(
        curvature, weights, *classification.isotropic_prior(2, 3, 0.005, tf.float32)
    )
    moments = binary_gradient_moments_exact(posterior, features, labels)
    assert np.isfinite(moments.mean.numpy()).all() and np.isfinite(moments.variance.numpy()).all()
    assert (moments.variance.numpy() >= 0).all()


def test_rejects_wrong_label_width_and_impossible_rules():
    posterior, features, labels = _random_binary(1, outputs=1)
    with pytest.raises(ValueError, match="labels"):
        two_class_gradient_moments_exact(posterior, features, tf.concat([labels, labels, labels], axis=1))
    with pytest.raises(ValueError, match="Gauss-Hermite"):
        binary_gradient_moments_exact(posterior, features, labels, num_nodes=1000)
