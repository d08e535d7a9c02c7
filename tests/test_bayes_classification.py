"""Classification posteriors and Monte Carlo gradient moments: against the authors' outputs and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes import (
    classification,
    inverse_from_cholesky,
    inverse_variance_aggregate,
    regression,
    safe_cholesky,
)

MC_SAMPLES = 65_536


def _binary_posteriors(reference, dtype):
    weights = tf.constant(reference["bin_W"], dtype)
    blocks, width = weights.shape
    full = classification.newton_posterior(
        classification.binary_curvature(
            tf.constant(reference["H_full"], dtype), tf.constant(reference["bin_Y_full"], dtype), weights
        ),
        weights,
        *classification.isotropic_prior(blocks, width, float(reference["meta_GAMMA"]), dtype),
    )
    features, labels = tf.constant(reference["H"], dtype), tf.constant(reference["bin_Y"], dtype)
    batch = classification.newton_posterior(
        classification.binary_curvature(features, labels, weights), weights, full.precision, full.mean
    )
    return full, batch, features, labels


def _multiclass_posteriors(reference, dtype):
    weights = tf.constant(reference["mc_W"], dtype)
    classes = weights.shape[0]
    flat = tf.reshape(weights, [1, -1])
    full_labels = tf.one_hot(reference["mc_Y_full"], classes, dtype=dtype)
    full = classification.newton_posterior(
        classification.multiclass_curvature(tf.constant(reference["H_full"], dtype), full_labels, weights),
        flat,
        *classification.isotropic_prior(1, flat.shape[1], float(reference["meta_GAMMA"]), dtype),
    )
    features, labels = tf.constant(reference["H"], dtype), tf.one_hot(reference["mc_Y"], classes, dtype=dtype)
    batch = classification.newton_posterior(
        classification.multiclass_curvature(features, labels, weights), flat, full.precision, full.mean
    )
    return full, batch, features, labels


def _block_diagonal(blocks: np.ndarray) -> np.ndarray:
    count, width, _ = blocks.shape
    matrix = np.zeros((count * width, count * width))
    for o in range(count):
        matrix[o * width : (o + 1) * width, o * width : (o + 1) * width] = blocks[o]
    return matrix


def _assert_close(got, want, tolerance):
    np.testing.assert_allclose(np.asarray(got), want, atol=tolerance * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-12), (tf.float32, 2e-5)])
def test_binary_posteriors_match_reference(reference, dtype, tolerance):
    full, batch, _, _ = _binary_posteriors(reference, dtype)
    _assert_close(tf.reshape(full.mean, [-1]), reference["bin_full_mean"], tolerance)
    _assert_close(_block_diagonal(full.precision.numpy()), reference["bin_full_prec"], tolerance)
    _assert_close(tf.reshape(batch.mean, [-1]), reference["bin_batch_mean"], tolerance)
    _assert_close(
        _block_diagonal(inverse_from_cholesky(batch.precision_factor).numpy()), reference["bin_batch_cov"], tolerance
    )
    assert batch.ok.numpy().all()


@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-12), (tf.float32, 2e-5)])
def test_multiclass_posteriors_match_reference(reference, dtype, tolerance):
    full, batch, _, _ = _multiclass_posteriors(reference, dtype)
    _assert_close(full.mean[0], reference["mc_full_mean"], tolerance)
    _assert_close(full.precision[0], reference["mc_full_prec"], tolerance)
    _assert_close(batch.mean[0], reference["mc_batch_mean"], tolerance)
    _assert_close(inverse_from_cholesky(batch.precision_factor)[0], reference["mc_batch_cov"], tolerance)


def test_multiclass_ggn_equals_per_sample_jacobian_sum():
    """Σ_i J_iᵀ H_i J_i with J_i = I ⊗ h̃_iᵀ, built the slow way, equals the Kronecker assembly."""
    rng = np.random.default_rng(0)
    features, weights = rng.normal(size=(6, 3)), rng.normal(size=(4, 4))
    labels = np.eye(4)[rng.integers(0, 4, size=6)]
    got = classification.multiclass_curvature(tf.constant(features), tf.constant(labels), tf.constant(weights))
    expected = np.zeros((16, 16))
    for h in features:
        extended = np.append(h, 1.0)
        logits = weights @ extended
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        jacobian = np.kron(np.eye(4), extended[None, :])  # [C, C(D+1)]
        expected += jacobian.T @ (np.diag(p) - np.outer(p, p)) @ jacobian
    np.testing.assert_allclose(got.ggn[0], expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_monte_carlo_moments_match_reference(reference, kind):
    """SPEC tolerances at 65,536 draws: mean within 2% of its largest magnitude, variance within 5%."""
    if kind == "binary":
        _, batch, features, labels = _binary_posteriors(reference, tf.float64)
        moments = classification.binary_gradient_moments(batch, features, labels, MC_SAMPLES, tf.constant([0, 7]))
    else:
        _, batch, features, labels = _multiclass_posteriors(reference, tf.float64)
        moments = classification.multiclass_gradient_moments(batch, features, labels, MC_SAMPLES, tf.constant([0, 7]))
    mean, variance = (
        reference[f"{'bin' if kind == 'binary' else 'mc'}_grad_mean"],
        reference[f"{'bin' if kind == 'binary' else 'mc'}_grad_var"],
    )
    assert moments.mean.shape == mean.shape
    np.testing.assert_allclose(moments.mean, mean, atol=0.02 * np.abs(mean).max())
    np.testing.assert_allclose(moments.variance, variance, rtol=0.05)


def test_aggregation_matches_reference(reference):
    """3 regression + 4 binary + 1 multiclass tasks, classification variances tempered by s_cls."""
    dtype = tf.float64
    features_full, features = tf.constant(reference["H_full"], dtype), tf.constant(reference["H"], dtype)
    targets_full, targets = tf.constant(reference["reg_Y_full"], dtype), tf.constant(reference["reg_Y"], dtype)
    precision, _, full_mean, _ = regression.full_data_posterior(
        tf.matmul(features_full, features_full, transpose_a=True),
        tf.matmul(features_full, targets_full, transpose_a=True),
        float(reference["meta_GAMMA"]),
    )
    reg_posterior = regression.batch_posterior(
        precision, tf.transpose(tf.matmul(full_mean, precision)), features, targets
    )
    reg = regression.gradient_moments(reg_posterior, features, targets)
    _, binary, _, binary_labels = _binary_posteriors(reference, dtype)
    _, multiclass, _, multiclass_labels = _multiclass_posteriors(reference, dtype)
    draws = MC_SAMPLES
    bin_moments = classification.binary_gradient_moments(binary, features, binary_labels, draws, tf.constant([1, 2]))
    mc_moments = classification.multiclass_gradient_moments(
        multiclass, features, multiclass_labels, draws, tf.constant([3, 4])
    )
    s_reg, s_cls = float(reference["meta_S_REG"]), float(reference["meta_S_CLS"])
    combined = inverse_variance_aggregate(
        tf.concat([reg.mean, bin_moments.mean, mc_moments.mean], axis=1),
        tf.concat([reg.variance, bin_moments.variance, mc_moments.variance], axis=1),
        tf.constant([s_reg] * 3 + [s_cls] * 5, dtype),
    )
    batch = features.shape[0]
    # Observed at this many draws: α within 0.3% relative (MC variances enter only through
    # σ^(2·s_cls), s_cls = 0.1) and the gradient within 0.2% of its largest magnitude.
    np.testing.assert_allclose(combined.weights, reference["agg_alpha"], rtol=0.01)
    expected = reference["agg_rep_grad"]
    np.testing.assert_allclose(combined.gradient / batch, expected, atol=0.01 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_moments_match_sampled_weights_and_autodiff(kind):
    """Brute force, independent of our sampler: draw W from N(mean, Λ⁻¹) with numpy, take ∂ℓ/∂h by
    tf.GradientTape for every draw and sample, compare the mean and variance with ours."""
    rng = np.random.default_rng(5)
    dim, batch_size, outputs, draws = 4, 5, 3, 200_000  # as many as ours: the tolerance covers both estimates
    features = rng.normal(size=(batch_size, dim))
    weights = rng.normal(size=(outputs, dim + 1)) * 0.7
    if kind == "binary":
        labels = rng.integers(0, 2, size=(batch_size, outputs)).astype(float)
        curvature = classification.binary_curvature(tf.constant(features), tf.constant(labels), tf.constant(weights))
        flat, blocks = tf.constant(weights), outputs
    else:
        labels = np.eye(outputs)[rng.integers(0, outputs, size=batch_size)]
        curvature = classification.multiclass_curvature(
            tf.constant(features), tf.constant(labels), tf.constant(weights)
        )
        flat, blocks = tf.constant(weights.reshape(1, -1)), 1
    prior = classification.isotropic_prior(blocks, flat.shape[1], 0.5, tf.float64)
    posterior = classification.newton_posterior(curvature, flat, *prior)
    moment_fn = (
        classification.binary_gradient_moments if kind == "binary" else classification.multiclass_gradient_moments
    )
    moments = moment_fn(posterior, tf.constant(features), tf.constant(labels), 200_000, tf.constant([9, 9]))

    covariance = inverse_from_cholesky(posterior.precision_factor).numpy()
    sampled = np.stack(
        [rng.multivariate_normal(posterior.mean.numpy()[b], covariance[b], size=draws) for b in range(blocks)], axis=1
    ).reshape(draws, outputs, dim + 1)  # [S, outputs, D+1]
    w = tf.constant(sampled)
    h = tf.constant(np.broadcast_to(features, (draws, batch_size, dim)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        logits = tf.einsum("sbd,sod->sbo", h, w[:, :, :dim]) + w[:, None, :, dim]
        targets = tf.broadcast_to(labels, logits.shape)
        if kind == "binary":
            losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
            per_unit = [tf.reduce_sum(losses[:, :, o]) for o in range(outputs)]
        else:
            per_unit = [tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))]
    for unit, loss in enumerate(per_unit):
        grads = tape.gradient(loss, h).numpy()  # [S, B, D]: ∂ℓ(W_s, h_i)/∂h_i for every draw
        mean, var = grads.mean(axis=0), grads.var(axis=0)
        np.testing.assert_allclose(moments.mean.numpy()[:, unit], mean, atol=0.02 * np.abs(mean).max())
        np.testing.assert_allclose(moments.variance.numpy()[:, unit], var, rtol=0.06, atol=1e-3 * var.max())


def test_same_seed_same_draws_and_float32_finite_for_saturated_logits():
    weights = tf.constant([[40.0, -40.0, 5.0], [-60.0, 60.0, 0.0]])  # saturated sigmoids: GGN ≈ 0
    features = tf.constant([[1.0, 0.5], [2.0, -1.0], [0.0, 0.0]])
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    curvature = classification.binary_curvature(features, labels, weights)
    posterior = classification.newton_posterior(
        curvature, weights, *classification.isotropic_prior(2, 3, 0.005, tf.float32)
    )
    first = classification.binary_gradient_moments(posterior, features, labels, 256, tf.constant([4, 2]))
    second = classification.binary_gradient_moments(posterior, features, labels, 256, tf.constant([4, 2]))
    other = classification.binary_gradient_moments(posterior, features, labels, 256, tf.constant([5, 2]))
    np.testing.assert_array_equal(first.mean, second.mean)
    assert not np.array_equal(first.mean.numpy(), other.mean.numpy())
    assert (
        posterior.ok.numpy().all()
        and np.isfinite(first.mean.numpy()).all()
        and np.isfinite(first.variance.numpy()).all()
    )


def test_blocked_cholesky_matches_numpy_and_flags_indefinite_matrices():
    """safe_cholesky factors matrices above the leaf size block by block: same factor as LAPACK,
    and a failure in any block still shows as a failed flag."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 150, 150))
    spd = a @ a.transpose(0, 2, 1) / 150 + np.eye(150)
    indefinite = spd[0] - 3.0 * np.outer(a[0, :, 0], a[0, :, 0])
    factor, ok = safe_cholesky(tf.constant(spd, tf.float64))
    np.testing.assert_allclose(factor, np.linalg.cholesky(spd), atol=1e-10)
    assert ok.numpy().all()
    assert np.linalg.eigvalsh(indefinite).min() < -1.0
    _, ok = safe_cholesky(tf.constant(indefinite, tf.float64))
    assert not bool(ok)
