"""The binary step through the prior's cached inverse factor (bayes/preconditioned.py, prior_whitening.py):
the same posterior and moments as the general path and as brute force, a guard that rejects what the native
factorization could not take, and a cache that is never used for a prior it was not computed from."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators.bayesagg.prior_whitening import PriorWhitening
from keras_bayesagg.bayes import classification, exact_moments, linalg, preconditioned

NODES = 64


def _problem(outputs: int = 3, dim: int = 6, batch: int = 40, rows: int = 400, dtype=tf.float64, seed: int = 0):
    """A prior that is a full-data posterior (as BayesAgg's is), a batch, and presence weights (0, 1 and 2)."""
    rng = np.random.default_rng(seed)
    weights = tf.constant(rng.normal(size=(outputs, dim + 1)) * 0.5, dtype)
    full = tf.constant(rng.normal(size=(rows, dim)), dtype)
    full_labels = tf.constant(rng.random((rows, outputs)) < 0.5, dtype)
    eye = tf.eye(dim + 1, batch_shape=[outputs], dtype=dtype)
    prior = classification.newton_posterior(
        classification.binary_curvature(full, full_labels, weights), weights, eye / 0.5, tf.zeros_like(weights)
    )
    features = tf.constant(rng.normal(size=(batch, dim)), dtype)
    labels = tf.constant(rng.random((batch, outputs)) < 0.5, dtype)
    present = tf.constant(rng.choice([0.0, 1.0, 2.0], size=(batch, outputs), p=[0.2, 0.6, 0.2]), dtype)
    return prior, features, labels, present, weights + 0.1


def _whitened_moments(prior, features, labels, present, weights):
    inverse = linalg.triangular_inverse(prior.precision_factor)
    curvature = preconditioned.whitened_curvature(features, weights, inverse, present)
    posterior = preconditioned.binary_posterior(
        curvature, features, labels, weights, prior.precision, prior.mean, inverse, present
    )
    moments = exact_moments.binary_gradient_moments_from_inverse_factor(
        posterior.mean, posterior.inverse_factor, features, labels, NODES
    )
    return curvature, posterior, moments


def test_the_whitened_posterior_and_moments_equal_the_general_path_and_brute_force():
    prior, features, labels, present, weights = _problem()
    curvature, posterior, moments = _whitened_moments(prior, features, labels, present, weights)
    assert bool(preconditioned.factorization_is_safe(curvature.rows))
    general = classification.newton_posterior(
        classification.binary_curvature(features, labels, weights, present), weights, prior.precision, prior.mean
    )
    expected = exact_moments.binary_gradient_moments_exact(general, features, labels, NODES)
    np.testing.assert_allclose(posterior.mean, general.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(moments.mean, expected.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(moments.variance, expected.variance, rtol=1e-9, atol=1e-12)
    # Brute force: Λ = P + Σ_i π_i p_i(1-p_i) h̃_i h̃_iᵀ summed by hand, inverted by numpy.
    h = np.concatenate([features.numpy(), np.ones((len(features), 1))], axis=1)
    p = 1.0 / (1.0 + np.exp(-(h @ weights.numpy().T)))
    for o in range(weights.shape[0]):
        precision = prior.precision.numpy()[o].copy()
        for i in range(len(h)):
            precision += present.numpy()[i, o] * p[i, o] * (1 - p[i, o]) * np.outer(h[i], h[i])
        factor = posterior.inverse_factor.numpy()[o]
        np.testing.assert_allclose(factor.T @ factor, np.linalg.inv(precision), rtol=1e-9, atol=1e-12)
        assert np.allclose(np.triu(factor, 1), 0.0)
    assert bool(tf.reduce_all(posterior.ok))


def test_float32_whitened_path_is_as_accurate_as_the_general_one():
    prior, features, labels, present, weights = _problem(outputs=4, dim=30, batch=128, rows=4000)
    exact = exact_moments.binary_gradient_moments_exact(
        classification.newton_posterior(
            classification.binary_curvature(features, labels, weights, present), weights, prior.precision, prior.mean
        ),
        features,
        labels,
        NODES,
    )
    single = [tf.cast(t, tf.float32) for t in (features, labels, present, weights)]
    prior32 = classification.ClassificationPosterior(*(tf.cast(t, tf.float32) for t in prior[:3]), prior.ok)
    _, _, whitened = _whitened_moments(prior32, *single)
    general = exact_moments.binary_gradient_moments_exact(
        classification.newton_posterior(
            classification.binary_curvature(single[0], single[1], single[3], single[2]),
            single[3],
            prior32.precision,
            prior32.mean,
        ),
        single[0],
        single[1],
        NODES,
    )
    scale = float(np.abs(exact.mean).max())
    error_whitened = float(np.abs(whitened.mean.numpy() - exact.mean.numpy()).max()) / scale
    error_general = float(np.abs(general.mean.numpy() - exact.mean.numpy()).max()) / scale
    assert error_whitened < max(3.0 * error_general, 1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_guard_rejects_non_finite_rows(bad):
    rows = np.zeros((2, 8, 5))
    rows[1, 3, 2] = bad
    assert not bool(preconditioned.factorization_is_safe(tf.constant(rows, tf.float32)))
    assert bool(preconditioned.factorization_is_safe(tf.zeros([2, 8, 5], tf.float32)))


def test_the_guard_rejects_rows_too_large_for_a_proven_factorization_and_accepts_what_it_proves():
    rng = np.random.default_rng(3)
    rows = tf.constant(rng.normal(size=(1, 64, 33)), tf.float32)
    assert bool(preconditioned.factorization_is_safe(rows * 0.1))
    assert not bool(preconditioned.factorization_is_safe(rows * 100.0))  # ‖V_:j‖² ≈ 6·10⁵: not proven
    # What the guard accepts, TensorFlow's CPU kernel factors (it would raise otherwise).
    for scale in (0.01, 0.1, 0.5, 1.0, 2.0):
        scaled = rows * scale
        if bool(preconditioned.factorization_is_safe(scaled)):
            core = tf.eye(33, batch_shape=[1]) + tf.matmul(scaled, scaled, transpose_a=True)
            assert bool(tf.reduce_all(tf.math.is_finite(tf.linalg.cholesky(core))))


def test_the_native_kernels_are_used_outside_xla_only():
    seen = {}

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["xla"] = preconditioned.native_kernels_apply()
        return x

    @tf.function
    def graph(x):
        seen["graph"] = preconditioned.native_kernels_apply()
        return x

    compiled(tf.ones([1]))
    graph(tf.ones([1]))
    assert seen == {"xla": False, "graph": True} and preconditioned.native_kernels_apply()


def test_a_jittered_refresh_leaves_no_fingerprint():
    prior, *_ = _problem()
    owner = keras.layers.Layer()
    whitening = PriorWhitening(owner, "binary", 3, 7, "float64")
    whitening.refresh(prior)
    np.testing.assert_array_equal(whitening.fingerprint.numpy(), np.diagonal(prior.precision.numpy(), axis1=1, axis2=2))
    jittered = tf.linalg.cholesky(prior.precision + 1e-2 * tf.eye(7, dtype=tf.float64))
    whitening.refresh(prior._replace(precision_factor=jittered))
    assert not whitening.fingerprint.numpy().any()


# ---------------------------------------------------------------- through the model


def _binary_data(num_samples: int = 512, input_dim: int = 8, outputs: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    return x, {"attributes": (x @ rng.normal(size=(input_dim, outputs)) > 0).astype("float32")}


@pytest.fixture(scope="module")
def trained():
    x, labels = _binary_data()
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10, activation="elu")])
    model = kb.MultiTaskModel(trunk, {"attributes": kb.tasks.Binary(6)})
    aggregator = kb.BayesAgg(warmup_epochs=1, seed=0)
    model.compile(optimizer="adam", aggregator=aggregator)
    model.fit(x, labels, batch_size=64, epochs=2, verbose=0)
    return model, aggregator, x, labels


def _group_moments(model, aggregator, x, labels, enabled: bool = True, calls: list | None = None):
    """The binary group's moments of one batch, computed eagerly (so only the branch taken runs); `calls` gets
    whether the whitening took the general path."""
    group = aggregator.groups[0]
    features, targets = model.trunk(x[:64]), tf.constant(labels["attributes"][:64])
    head = model.heads["attributes"]
    weights = classification.head_weights(head.kernel, head.bias, "float32")
    present = tf.ones([64, 6])
    PriorWhitening.enabled = enabled
    try:
        moments, _ = group.moments(features, targets, present, weights, 8, tf.zeros([2], tf.int32))
        if calls is not None:
            prior = (tf.convert_to_tensor(group.prior_precision), tf.convert_to_tensor(group.prior_mean))
            ran = []

            def general():
                ran.append(True)
                curvature = group.curvature(features, targets, weights, present)
                posterior = classification.newton_posterior(curvature, weights, *prior)
                return exact_moments.binary_gradient_moments_exact(posterior, features, targets, NODES), posterior.ok

            group.whitening.moments(features, targets, present, weights, *prior, general, lambda rows: rows, NODES)
            calls.append(bool(ran))
    finally:
        PriorWhitening.enabled = True
    return moments["attributes"]


def test_the_refresh_caches_the_prior_inverse_factor_and_steps_use_it(trained):
    model, aggregator, x, labels = trained
    whitening = aggregator.groups[0].whitening
    precision = aggregator.groups[0].prior_precision.numpy()
    np.testing.assert_array_equal(whitening.fingerprint.numpy(), np.diagonal(precision, axis1=1, axis2=2))
    factor = whitening.inverse_factor.numpy()
    np.testing.assert_allclose(factor @ precision @ np.swapaxes(factor, 1, 2), np.eye(11)[None].repeat(6, 0), atol=2e-4)
    calls = []
    fast = _group_moments(model, aggregator, x, labels, calls=calls)
    slow = _group_moments(model, aggregator, x, labels, enabled=False)
    assert calls == [False]  # the whitened path ran
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(fast.variance, slow.variance, rtol=2e-3, atol=1e-8)


def test_a_prior_restored_without_its_cache_takes_the_general_path(trained):
    model, aggregator, x, labels = trained
    group = aggregator.groups[0]
    saved = group.prior_precision.numpy()
    try:
        group.prior_precision.assign(saved * 1.5)  # e.g. an older checkpoint's prior, the cache of this run
        calls = []
        fast = _group_moments(model, aggregator, x, labels, calls=calls)
        slow = _group_moments(model, aggregator, x, labels, enabled=False)
        assert calls == [True]
        np.testing.assert_array_equal(fast.mean, slow.mean)
    finally:
        group.prior_precision.assign(saved)


def test_the_cache_is_saved_with_the_model_and_a_file_without_it_loads(trained, tmp_path):
    model, aggregator, x, labels = trained
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_whitening = loaded.aggregator.groups[0].whitening
    np.testing.assert_array_equal(loaded_whitening.fingerprint.numpy(), aggregator.groups[0].whitening.fingerprint)
    np.testing.assert_array_equal(
        loaded_whitening.inverse_factor.numpy(), aggregator.groups[0].whitening.inverse_factor
    )
    assert set(map(id, aggregator.variables_after_0_2_0())) <= set(map(id, aggregator.later_version_variables()))


def test_the_cache_gives_the_served_covariance_only_for_its_own_prior(trained):
    _, aggregator, _, _ = trained
    group = aggregator.groups[0]
    precision = group.prior_precision.numpy()
    covariance = group.whitening.covariance(tf.constant(precision))
    np.testing.assert_allclose(covariance.numpy(), np.linalg.inv(precision.astype("float64")), rtol=2e-3, atol=1e-6)
    assert group.whitening.covariance(tf.constant(precision * 1.5)) is None
