"""BayesAgg on classification tasks through the model: full-data prior, fit with and without XLA,
same seed same run, ill-conditioned inputs, and failures that name the task."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.bayes import classification


def _utkface_like_data(num_samples: int = 256, input_dim: int = 10, seed: int = 0):
    """Shapes of the UTKFace experiment: age regression, a 2-class and a 5-class task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    z = x @ rng.normal(size=(input_dim, 8)).astype("float32")
    labels = {
        "age": (z[:, 0] + 0.1 * rng.normal(size=num_samples)).astype("float32"),
        "gender": (z[:, 1] > 0).astype("int32"),
        "ethnicity": np.argmax(z[:, 2:7], axis=1).astype("int32"),
    }
    return x, labels


def _utkface_like_model(input_dim: int = 10, hidden: int = 12, seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(hidden, activation="elu")])
    tasks = {"age": kb.tasks.Regression(), "gender": kb.tasks.Multiclass(2), "ethnicity": kb.tasks.Multiclass(5)}
    return kb.MultiTaskModel(trunk, tasks)


def _binary_data(num_samples: int = 256, input_dim: int = 10, tasks: int = 20, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    labels = {"attributes": (x @ rng.normal(size=(input_dim, tasks)) > 0).astype("float32")}
    return x, labels


def _binary_model(input_dim: int = 10, hidden: int = 8, tasks: int = 20, seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(hidden, activation="elu")])
    return kb.MultiTaskModel(trunk, {"attributes": kb.tasks.Binary(tasks)})


def _fit(model, data, jit_compile, epochs=3, **options):
    aggregator = kb.BayesAgg(num_samples=32, warmup_epochs=1, seed=7, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=aggregator, jit_compile=jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(64)
    history = model.fit(dataset, epochs=epochs, verbose=0)
    return aggregator, history.history["loss"]


def _assert_trained(model, losses):
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_utkface_shaped_model_trains_and_same_seed_same_weights(jit_compile):
    runs = []
    for _ in range(2):
        model = _utkface_like_model()
        aggregator, losses = _fit(model, _utkface_like_data(), jit_compile)
        _assert_trained(model, losses)
        runs.append([w.copy() for w in model.get_weights()])
    weights = aggregator.last_task_weights.numpy()
    assert weights.shape == (3,) and np.all(weights > 0) and not np.allclose(weights, 1.0)  # BayesAgg, not warm-up
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_twenty_binary_tasks_train(jit_compile):
    model = _binary_model()
    aggregator, losses = _fit(model, _binary_data(), jit_compile)
    _assert_trained(model, losses)
    assert aggregator.last_task_weights.shape == (20,)


def test_full_data_prior_is_the_posterior_over_all_rows_at_epoch_end_weights():
    """With the trunk frozen, the prior after an epoch equals the SPEC formula over the epoch's
    (h, y) at the heads' final weights; a small staging buffer forces moves to host memory."""
    x, labels = _utkface_like_data(num_samples=200)
    x_bin, bin_labels = _binary_data(num_samples=200, tasks=3)
    model = _utkface_like_model()
    model.trunk.trainable = False
    aggregator, _ = _fit(model, (x, labels), jit_compile=False, epochs=2, feature_buffer_rows=100, prior_variance=0.05)
    features = model.trunk(x).numpy().astype(np.float64)
    for name, classes in (("gender", 2), ("ethnicity", 5)):
        head = model.heads[name]
        weights = np.concatenate([head.kernel.numpy().T, head.bias.numpy()[:, None]], axis=1).astype(np.float64)
        expected = classification.newton_posterior(
            classification.multiclass_curvature(
                tf.constant(features), tf.one_hot(labels[name], classes, dtype=tf.float64), tf.constant(weights)
            ),
            tf.constant(weights.reshape(1, -1)),
            *classification.isotropic_prior(1, weights.size, 0.05, tf.float64),
        )
        precision = aggregator.classification_group(name).prior_precision.numpy()
        np.testing.assert_allclose(precision, expected.precision, rtol=1e-4, atol=1e-4 * np.abs(precision).max())
        np.testing.assert_allclose(
            aggregator.classification_group(name).prior_mean.numpy(), expected.mean, rtol=1e-3, atol=1e-4
        )

    model = _binary_model(tasks=3)
    model.trunk.trainable = False
    aggregator, _ = _fit(
        model, (x_bin, bin_labels), jit_compile=False, epochs=1, feature_buffer_rows=70, prior_variance=0.05
    )
    features = model.trunk(x_bin).numpy().astype(np.float64)
    head = model.heads["attributes"]
    weights = np.concatenate([head.kernel.numpy().T, head.bias.numpy()[:, None]], axis=1).astype(np.float64)
    expected = classification.newton_posterior(
        classification.binary_curvature(
            tf.constant(features), tf.constant(bin_labels["attributes"], tf.float64), tf.constant(weights)
        ),
        tf.constant(weights),
        *classification.isotropic_prior(3, weights.shape[1], 0.05, tf.float64),
    )
    np.testing.assert_allclose(
        aggregator.classification_group("attributes").prior_precision.numpy(), expected.precision, rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        aggregator.classification_group("attributes").prior_mean.numpy(), expected.mean, rtol=1e-3, atol=1e-4
    )


def test_staging_buffer_smaller_than_one_step_is_a_clear_error():
    model = _binary_model(tasks=2)
    with pytest.raises(ValueError, match="feature_buffer_rows"):
        _fit(model, _binary_data(tasks=2), jit_compile=False, epochs=1, feature_buffer_rows=32)


class _Duplicate(keras.layers.Layer):
    """Repeats the representation's columns: a rank-deficient h."""

    def call(self, h):
        return tf.concat([h, h], axis=-1)


class _Zero(keras.layers.Layer):
    def call(self, h):
        return 0.0 * h


@pytest.mark.parametrize("case", ["duplicate_features", "zero_representation", "saturated_logits"])
def test_ill_conditioned_inputs_keep_training_finite(case):
    x, labels = _utkface_like_data(num_samples=192)
    keras.utils.set_random_seed(0)
    layers = [keras.Input((10,)), keras.layers.Dense(6, activation="elu")]
    if case == "duplicate_features":
        layers.append(_Duplicate())
    if case == "zero_representation":
        layers.append(_Zero())
    trunk = keras.Sequential(layers)
    tasks = {"age": kb.tasks.Regression(), "gender": kb.tasks.Multiclass(2), "ethnicity": kb.tasks.Multiclass(5)}
    tasks["flags"] = kb.tasks.Binary(2)
    labels["flags"] = np.stack([labels["gender"], labels["gender"]], axis=1).astype("float32")
    model = kb.MultiTaskModel(trunk, tasks)
    if case == "saturated_logits":
        model.build((None, 10))
        for name in ("gender", "ethnicity", "flags"):
            head = model.heads[name]
            head.kernel.assign(head.kernel * 1e4)
    _, losses = _fit(model, (x, labels), jit_compile=False, epochs=2)
    assert np.all(np.isfinite(losses)), losses
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_failed_posterior_falls_back_and_names_the_task():
    model = _utkface_like_model()
    x, labels = _utkface_like_data(num_samples=128)
    aggregator = kb.BayesAgg(num_samples=16, warmup_epochs=0)
    model.compile(optimizer="adam", aggregator=aggregator)
    model.build((None, 10))
    aggregator.classification_group("ethnicity").prior_precision.assign(
        tf.fill(aggregator.classification_group("ethnicity").prior_precision.shape, float("nan"))
    )
    with pytest.raises(FloatingPointError, match="ethnicity"):
        model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(64), epochs=1, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
