"""BayesAgg on regression tasks through the model: prior refresh, warm-up, fit with and without XLA."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb


def _regression_data(num_samples: int = 384, input_dim: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    labels = {
        "a": (x[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(num_samples, 2))).astype("float32"),
        "b": (np.sin(x[:, 0]) - x[:, 1]).astype("float32"),
    }
    return x, labels


def _regression_model(input_dim: int = 10, hidden: int = 16, seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(hidden, activation="elu")])
    return kb.MultiTaskModel(trunk, {"a": kb.tasks.Regression(2), "b": kb.tasks.Regression()})


def test_refresh_sets_heads_to_full_data_posterior_mean_of_that_epoch():
    x, labels = _regression_data()
    model = _regression_model()
    model.trunk.trainable = False
    aggregator = kb.BayesAgg(prior_variance=0.05, warmup_epochs=0)
    model.compile(optimizer="adam", aggregator=aggregator)
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(64)
    model.fit(ds, epochs=1, verbose=0)

    features = model.trunk(x).numpy().astype(np.float64)
    targets = np.concatenate([labels["a"], labels["b"][:, None]], axis=1).astype(np.float64)
    precision = np.eye(features.shape[1]) / 0.05 + features.T @ features
    expected = np.linalg.solve(precision, features.T @ targets)  # [D, O]
    np.testing.assert_allclose(model.heads["a"].override_kernel.numpy(), expected[:, :2], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(model.heads["b"].override_kernel.numpy(), expected[:, 2:], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(aggregator.regression.prior_precision.numpy(), precision, rtol=1e-4)
    covariance = np.linalg.inv(precision)
    np.testing.assert_allclose(
        aggregator.regression.prior_covariance.numpy(), covariance, atol=1e-4 * np.abs(covariance).max()
    )
    np.testing.assert_allclose(aggregator.regression.prior_mean.numpy(), expected.T, rtol=2e-3, atol=1e-4)
    # Prediction rule: hᵀ m_F, no bias.
    predicted = model.predict(x[:8], verbose=0)
    np.testing.assert_allclose(predicted["a"], features[:8] @ expected[:, :2], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(predicted["b"], features[:8] @ expected[:, 2:], rtol=2e-3, atol=2e-3)


def test_warmup_trains_heads_then_switches_to_posterior():
    x, labels = _regression_data()
    model = _regression_model()
    aggregator = kb.BayesAgg(warmup_epochs=2)
    model.compile(optimizer="adam", aggregator=aggregator)
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(64)
    model.fit(ds, epochs=1, verbose=0)
    assert int(aggregator.completed_epochs.numpy()) == 1
    assert float(model.heads["a"].override_active.numpy()) == 0.0  # still warming up: heads learned
    # Nothing uses the prior of an early warm-up epoch, so it is not computed.
    np.testing.assert_allclose(aggregator.regression.prior_precision.numpy(), np.eye(16) / aggregator.prior_variance)
    model.fit(ds, epochs=1, verbose=0)
    assert float(model.heads["a"].override_active.numpy()) == 1.0  # the last warm-up epoch set the prior
    posterior_before = model.heads["a"].override_kernel.numpy().copy()
    model.fit(ds, epochs=1, verbose=0)
    assert not np.allclose(model.heads["a"].override_kernel.numpy(), posterior_before)
    # In BayesAgg epochs the regression head is the posterior mean (no bias), not a learned layer.
    features = model.trunk(x[:16]).numpy()
    np.testing.assert_allclose(
        model.predict(x[:16], verbose=0)["a"], features @ model.heads["a"].override_kernel.numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("aggregator", ["linear", "bayesagg"])
def test_fit_losses_finite_and_falling(aggregator, jit_compile):
    x, labels = _regression_data()
    model = _regression_model()
    chosen = kb.aggregators.LinearScalarization() if aggregator == "linear" else kb.BayesAgg(warmup_epochs=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), aggregator=chosen, jit_compile=jit_compile)
    assert model.jit_compile is jit_compile
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(384, seed=0).batch(32)
    history = model.fit(ds, epochs=5, verbose=0).history
    losses = history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0]
    assert losses[-1] <= min(losses[1:-1]) * 1.05  # still falling (or flat) under BayesAgg, not diverging
    assert set(history) == {"loss", "a_loss", "b_loss"}
    weights = [w.numpy() for w in model.weights]
    assert all(np.all(np.isfinite(w)) for w in weights)


@pytest.mark.parametrize("batch_size", [8, 32])  # B < D: rank-B update of the prior; B ≥ D: D×D factorization
def test_bayesagg_gradient_matches_bayes_math_in_a_step(batch_size):
    """One train step's trunk gradient equals the inverse-variance aggregate computed by hand."""
    x, labels = _regression_data(num_samples=batch_size)
    model = _regression_model()
    aggregator = kb.BayesAgg(warmup_epochs=0, regression_power=0.5)
    model.compile(optimizer=keras.optimizers.SGD(1.0), aggregator=aggregator)
    model.build((None, 10))
    kernel_before = model.trunk.layers[0].kernel.numpy().copy()
    features = model.trunk(x).numpy()
    model.train_on_batch(x, labels)

    targets = np.concatenate([labels["a"], labels["b"][:, None]], axis=1)
    prior_precision = np.eye(16) / 0.005
    posterior = kb.bayes.regression.batch_posterior(
        tf.constant(prior_precision, tf.float32), tf.zeros((16, 3)), tf.constant(features), tf.constant(targets)
    )
    moments = kb.bayes.regression.gradient_moments(posterior, tf.constant(features), tf.constant(targets))
    combined = kb.bayes.inverse_variance_aggregate(moments.mean, moments.variance, tf.constant([0.5, 0.5, 0.5]))
    representation_gradient = combined.gradient.numpy() / batch_size
    # Dense + ELU trunk: ∂L/∂K = xᵀ (g ⊙ elu'(z)).
    pre_activation = x @ kernel_before + model.trunk.layers[0].bias.numpy() * 0  # bias starts at zero
    elu_slope = np.where(pre_activation > 0, 1.0, np.exp(pre_activation))
    expected_kernel_gradient = x.T @ (representation_gradient * elu_slope)
    np.testing.assert_allclose(
        kernel_before - model.trunk.layers[0].kernel.numpy(), expected_kernel_gradient, rtol=1e-3, atol=1e-6
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trunk_keeps_linear_algebra_in_float32(policy):
    x, labels = _regression_data(num_samples=128)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _regression_model()
        aggregator = kb.BayesAgg(warmup_epochs=0)
        model.compile(optimizer="adam", aggregator=aggregator)
        history = model.fit(x, labels, batch_size=32, epochs=3, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.trunk.compute_dtype != "float32"
    assert aggregator.regression.prior_precision.dtype == "float32"
    assert model.heads["a"].kernel.dtype == "float32"
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
