"""BayesAgg(multiclass_posterior="kronecker") through the model: many-class heads fit the memory limit, the trunk
update agrees with the full GGN's on a small head, XLA, the evidence-chosen γ and serving uncertainty work."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators.bayesagg.options import auto_draws_per_rotation, resolve_draws_per_rotation
from keras_bayesagg.bayes import classification, kronecker, predictive
from tests.conftest import value_and_class_data

INPUTS, DIM, CLASSES, ROWS = 10, 16, 5, 192


def _data(seed: int = 0):
    return value_and_class_data(CLASSES, ROWS, INPUTS, seed)


def _model(seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(DIM, activation="elu")])
    return kb.MultiTaskModel(trunk, {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(CLASSES)})


def _compile(model, posterior: str, jit_compile: bool = False, **options) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.SGD(learning_rate=0.05)
    aggregator = kb.BayesAgg(num_samples=256, warmup_epochs=1, seed=3, multiclass_posterior=posterior, **options)
    model.compile(optimizer=optimizer, aggregator=aggregator, jit_compile=jit_compile)
    return optimizer


def _dataset(x, labels, batch: int = 64):
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch)


@pytest.mark.parametrize("classes,dim", [(100, 64), (1000, 256)])
def test_many_class_heads_fit_the_default_memory_limit_only_with_the_kronecker_posterior(classes, dim):
    layout_model = kb.MultiTaskModel(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(dim)]),
        {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(classes)},
    )
    with pytest.raises(MemoryError, match='multiclass_posterior="kronecker"'):
        layout_model.compile(optimizer="adam", aggregator=kb.BayesAgg())
        layout_model.build((None, 8))  # refuses a layout no batch could serve; fit re-checks at its batch size
        layout_model.aggregator.check_batch_size(128)
    model = kb.MultiTaskModel(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(dim)]),
        {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(classes)},
    )
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(multiclass_posterior="kronecker"))
    model.build((None, 8))
    model.aggregator.check_batch_size(128)


@pytest.mark.slow  # ~20-30 s on the loaded 2-core machine: four fits of two models
def test_the_trunk_update_points_where_the_full_ggns_does_after_identical_training():
    x, labels = _data()
    full = _model()
    full_optimizer = _compile(full, "full")
    full.fit(_dataset(x, labels), epochs=2, verbose=0)  # a warm-up epoch, then BayesAgg with the full GGN
    kron = _model(seed=1)
    kron_optimizer = _compile(kron, "kronecker")
    kron.build((None, INPUTS))
    kron.set_weights(full.get_weights())
    # One epoch at learning rate 0: both refresh their priors from the same rows at the same weights.
    for model, optimizer in ((full, full_optimizer), (kron, kron_optimizer)):
        optimizer.learning_rate.assign(0.0)
        model.fit(_dataset(x, labels), epochs=1, verbose=0)
    np.testing.assert_array_equal(kron.trunk.get_weights()[0], full.trunk.get_weights()[0])
    batch = (x[:64], {name: value[:64] for name, value in labels.items()})
    updates = []
    for model, optimizer in ((full, full_optimizer), (kron, kron_optimizer)):
        before = np.concatenate([w.ravel() for w in model.trunk.get_weights()])
        optimizer.learning_rate.assign(1.0)
        model.fit(_dataset(*batch), epochs=1, verbose=0)
        updates.append(np.concatenate([w.ravel() for w in model.trunk.get_weights()]) - before)
    assert np.all(np.isfinite(updates[1])) and np.linalg.norm(updates[1]) > 0
    cosine = updates[0] @ updates[1] / (np.linalg.norm(updates[0]) * np.linalg.norm(updates[1]))
    print(f"cosine of the trunk updates: {cosine:.4f}")
    assert cosine >= 0.9, cosine
    weights = kron.aggregator.last_task_weights.numpy()
    assert not np.allclose(weights, 1.0)  # BayesAgg's weights, not the warm-up's


def test_evidence_prior_variance_and_serving_uncertainty_with_the_kronecker_posterior(tmp_path):
    x, labels = _data(1)
    model = _model()
    _compile(model, "kronecker", prior_variance="auto")
    history = model.fit(_dataset(x, labels), epochs=2, verbose=0)
    chosen = model.aggregator.chosen_prior_variances()
    assert set(chosen) == {"regression", "kind"} and 0 < chosen["kind"] < 1e8
    assert chosen["kind"] != pytest.approx(0.005)  # moved from its start
    assert "prior_variance/kind" in history.history
    out = model.predict_with_uncertainty(x[:32])
    probabilities = model.predict(x[:32], verbose=0)["kind"]  # the head's softmax
    group = model.aggregator.classification_group("kind")
    basis = kronecker.KroneckerBasis(group.class_basis, group.feature_basis)
    covariance = tf.linalg.inv(kronecker.dense_precision(basis, group.prior_precision))
    features = classification.with_bias_feature(model.trunk(x[:32]))
    expected = predictive.mean_field_softmax(
        tf.math.log(probabilities), predictive.logit_covariance(features, covariance, CLASSES)
    )  # the full path's serving rule with the Kronecker covariance made dense
    np.testing.assert_allclose(out["kind/probabilities"], expected, atol=2e-5)
    assert np.abs(out["kind/probabilities"] - probabilities).max() > 1e-4  # the posterior changes something
    path = str(tmp_path / "kronecker.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.aggregator.multiclass_posterior == "kronecker"
    for key, value in restored.predict_with_uncertainty(x[:32]).items():
        np.testing.assert_allclose(value, out[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_config_round_trip_and_bad_value():
    aggregator = kb.BayesAgg(multiclass_posterior="kronecker", num_samples=64, kronecker_draws_per_rotation=16)
    restored = kb.BayesAgg.from_config(aggregator.get_config())
    assert restored.multiclass_posterior == "kronecker" and restored.kronecker_draws_per_rotation == 16
    with pytest.raises(ValueError, match="multiclass_posterior"):
        kb.BayesAgg(multiclass_posterior="diagonal")
    for reuse in (0, 3, 48):  # not a whole number >= 1, odd, not dividing num_samples
        with pytest.raises(ValueError, match="kronecker_draws_per_rotation"):
            kb.BayesAgg(multiclass_posterior="kronecker", num_samples=64, kronecker_draws_per_rotation=reuse)
    with pytest.raises(ValueError, match='applies to multiclass_posterior="kronecker" only'):
        kb.BayesAgg(num_samples=64, kronecker_draws_per_rotation=16)  # the full posterior would ignore it


@pytest.mark.parametrize(
    "posterior,samples,classes,batch,expected",
    [("kronecker", 16, None, None, 2), ("kronecker", 1024, None, None, 2), ("kronecker", 15, None, None, 1)]
    + [("kronecker", 1, 1000, 128, 1), ("full", 16, 1000, 128, 1), ("full", 1024, None, None, 1)]
    + [("kronecker", 16, 100, 128, 2), ("kronecker", 16, 1000, 128, 8), ("kronecker", 16, 1000, 32, 16)]
    + [("kronecker", 24, 1000, 128, 8), ("kronecker", 20, 1000, 128, 10), ("kronecker", 6, 1000, 128, 6)],
)
def test_auto_draws_per_rotation_resolves_from_samples_classes_and_batch(posterior, samples, classes, batch, expected):
    # 2 (an antithetic pair) unless the class rotations would dominate: then the smallest even divisor ≥ C/B.
    assert auto_draws_per_rotation(samples, posterior, classes, batch) == expected
    aggregator = kb.BayesAgg(multiclass_posterior=posterior, num_samples=samples)  # "auto" is no error with "full"
    assert aggregator.kronecker_draws_per_rotation == "auto"
    assert resolve_draws_per_rotation(16, 64, "kronecker", 1000, 128) == 16  # a whole number is kept as given


@pytest.mark.parametrize("value", ["Auto", "", "2", "fast", None, 2.5, True])
def test_other_strings_and_non_numbers_are_a_clear_error(value):
    expected = 'BayesAgg: kronecker_draws_per_rotation must be 1, an even divisor of num_samples \\(64\\) or "auto"'
    with pytest.raises(ValueError, match=expected):
        kb.BayesAgg(multiclass_posterior="kronecker", num_samples=64, kronecker_draws_per_rotation=value)


@pytest.mark.parametrize("value,posterior", [("auto", "kronecker"), ("auto", "full"), (1, "full"), (16, "kronecker")])
def test_config_round_trips_auto_and_whole_numbers(value, posterior):
    aggregator = kb.BayesAgg(multiclass_posterior=posterior, num_samples=32, kronecker_draws_per_rotation=value)
    config = aggregator.get_config()
    assert config["kronecker_draws_per_rotation"] == value
    restored = kb.BayesAgg.from_config(config)
    assert restored.kronecker_draws_per_rotation == value
    del config["kronecker_draws_per_rotation"]  # a config written before the option existed
    assert kb.BayesAgg.from_config(config).kronecker_draws_per_rotation == "auto"


@pytest.mark.parametrize("value", ["auto", 1, 8])
def test_saved_models_keep_their_draws_per_rotation(tmp_path, value):
    model = _model()
    _compile(model, "kronecker", kronecker_draws_per_rotation=value)  # S = 256
    model.build((None, INPUTS))
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.aggregator.kronecker_draws_per_rotation == value
    assert restored.aggregator.classification_group("kind").draws_at(256, 64) == (2 if value == "auto" else value)


def _head_group(rows: int, **options):
    """A fresh model's BayesAgg(num_samples=16, **options), its head's group, and a batch of `rows` for it."""
    model = _model()
    aggregator = kb.BayesAgg(num_samples=16, seed=3, multiclass_posterior="kronecker", **options)
    model.compile(optimizer="sgd", aggregator=aggregator)
    model.build((None, INPUTS))
    rng = np.random.default_rng(4)
    features = tf.constant(rng.normal(size=(rows, DIM)), tf.float32)
    labels = tf.one_hot(rng.integers(0, CLASSES, rows), CLASSES)
    weights = tf.constant(rng.normal(size=(CLASSES, DIM + 1)) * 0.3, tf.float32)
    return aggregator, aggregator.classification_group("kind"), features, labels, weights


def _group_moments(**options) -> tuple[int, np.ndarray, np.ndarray]:
    """K and the moments of the head's group of a fresh model with BayesAgg(num_samples=16, **options)."""
    _, group, features, labels, weights = _head_group(12, **options)
    moments, _ = group.moments(features, labels, tf.ones([12, 1]), weights, 16, tf.constant([5, 6]))
    return group.draws_at(16, 12), moments["kind"].mean.numpy(), moments["kind"].variance.numpy()


def test_the_default_group_draws_with_the_resolved_draws_per_rotation():
    default, two, one = (
        _group_moments(),
        _group_moments(kronecker_draws_per_rotation=2),
        _group_moments(kronecker_draws_per_rotation=1),
    )
    assert default[0] == 2
    np.testing.assert_array_equal(default[1], two[1])  # the same draws as an explicit K = 2 for the same seed
    np.testing.assert_array_equal(default[2], two[2])
    assert not np.allclose(default[2], one[2])  # and not the independent draws of K = 1


def test_sign_flipped_draws_train_through_the_model_under_xla():
    x, labels = _data(2)
    model = _model()
    _compile(model, "kronecker", jit_compile=True, kronecker_draws_per_rotation=8)
    model.fit(_dataset(x, labels), epochs=2, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.trunk.get_weights())
    assert not np.allclose(model.aggregator.last_task_weights.numpy(), 1.0)


def test_auto_draws_follow_the_static_batch_else_the_batch_fit_announces():
    """A head of C = 5 classes on batches of 2 rows: C/B = 2.5, so "auto" is K = 4 at S = 16; on 12 rows K = 2."""
    aggregator, group, features, labels, weights = _head_group(2)

    def variance(draws: int | str, static: bool = True) -> np.ndarray:
        group.draws_per_rotation = draws
        spec = tf.TensorSpec([2 if static else None, DIM], tf.float32)
        step = tf.function(lambda h: group.moments(h, labels, tf.ones([2, 1]), weights, 16, tf.constant([5, 6]))[0])
        return step.get_concrete_function(spec)(features)["kind"].variance.numpy()

    assert group.draws_at(16, 2) == 4 and group.draws_at(16, 12) == 2 and group.draws_at(16, None) == 2
    np.testing.assert_array_equal(variance("auto"), variance(4))
    assert not np.allclose(variance("auto", static=False), variance(4))  # no static batch, none announced: K = 2
    aggregator.check_batch_size(2)  # what fit does before it traces
    assert group.expected_batch == 2
    np.testing.assert_array_equal(variance("auto", static=False), variance(4))
