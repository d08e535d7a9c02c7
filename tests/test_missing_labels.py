"""Missing labels (issue 11, part 1): NaN / class -1 mark a missing label, which contributes nothing.

The semantics are tested exactly: an all-missing task is the same as no task, an all-missing sample
is the same as no sample, and BayesAgg's full-data posterior is the one of the present rows alone
(checked against `keras_bayesagg.bayes`).
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg import bayes
from keras_bayesagg.engine.gradients import masked_mean_losses

INPUT_DIM = 8


def _data(num_samples: int = 96, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, INPUT_DIM)).astype("float32")
    z = x @ rng.normal(size=(INPUT_DIM, 7)).astype("float32")
    return x, {
        "value": (z[:, 0] + 0.1 * rng.normal(size=num_samples)).astype("float32"),
        "pair": z[:, 1:3].astype("float32"),
        "flags": (z[:, 3:5] > 0).astype("float32"),
        "kind": np.argmax(z[:, 4:7], axis=1).astype("int32"),
    }


TASKS = {
    "value": kb.tasks.Regression(),
    "pair": kb.tasks.Regression(2),
    "flags": kb.tasks.Binary(2),
    "kind": kb.tasks.Multiclass(3),
}


def _model(tasks: dict, seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((INPUT_DIM,)), keras.layers.Dense(12, activation="elu")])
    model = kb.MultiTaskModel(trunk, dict(tasks))
    model.build((None, INPUT_DIM))
    return model


def _partly_missing(y: dict[str, np.ndarray], fraction: float = 0.3, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = {name: labels.copy() for name, labels in y.items()}
    for name in ("value", "pair", "flags"):
        y[name][rng.random(y[name].shape) < fraction] = np.nan
    y["kind"][rng.random(len(y["kind"])) < fraction] = -1
    return y


def _copy_weights(source: kb.MultiTaskModel, target: kb.MultiTaskModel) -> None:
    target.trunk.set_weights(source.trunk.get_weights())
    for name, head in source.heads.items():
        target.heads[name].set_weights(head.get_weights())


# ---------------------------------------------------------------------- markers
def test_markers_give_the_presence_mask_and_finite_placeholders():
    regression, binary, multiclass = kb.tasks.Regression(2), kb.tasks.Binary(2), kb.tasks.Multiclass(3)
    labels = regression.prepare_labels("r", np.array([[1.0, np.nan], [np.nan, 2.0]], "float32"))
    np.testing.assert_array_equal(regression.present(labels), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(regression.fill_missing(labels, regression.present(labels)), [[1, 0], [0, 2]])
    assert bool(regression.labels_valid(labels))
    assert bool(binary.labels_valid(binary.prepare_labels("b", np.array([[0.5, np.nan]], "float32"))))
    indices = multiclass.prepare_labels("c", np.array([2, -1, 0], "int32"))
    np.testing.assert_array_equal(indices, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(multiclass.present(indices), [[1], [0], [1]])
    assert bool(multiclass.labels_valid(indices))
    one_hot = multiclass.prepare_labels("c", np.array([[0, 1, 0], [0, 0, 0]], "float32"))
    np.testing.assert_array_equal(multiclass.present(one_hot), [[1], [0]])
    # Anything else that does not fit is still invalid.
    assert not bool(regression.labels_valid(regression.prepare_labels("r", np.array([[np.inf, 1.0]], "float32"))))
    assert not bool(binary.labels_valid(binary.prepare_labels("b", np.array([[2.0, np.nan]], "float32"))))
    for bad in (-2, 3, 7):
        assert not bool(multiclass.labels_valid(multiclass.prepare_labels("c", np.array([bad, -1], "int32"))))
    assert not bool(multiclass.labels_valid(multiclass.prepare_labels("c", np.array([[np.nan] * 3], "float32"))))


def test_masked_mean_losses_average_over_present_labels():
    per_sample = tf.constant([[1.0, 5.0, 2.0], [3.0, 7.0, 4.0]])
    present = tf.constant([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(masked_mean_losses(per_sample, present), [2.0, 7.0, 0.0])


def test_inverse_variance_weights_are_normalized_over_present_tasks():
    rng = np.random.default_rng(0)
    means = tf.constant(rng.normal(size=(3, 3, 4)), tf.float32)
    variances = tf.constant(rng.uniform(0.1, 2.0, size=(3, 3, 4)), tf.float32)
    powers = tf.constant([0.3, 0.1, 0.5])
    present = tf.constant([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    combined = bayes.inverse_variance_aggregate(means, variances, powers, present)
    np.testing.assert_allclose(
        combined.gradient[0], bayes.inverse_variance_aggregate(means, variances, powers).gradient[0]
    )
    alone = bayes.inverse_variance_aggregate(
        tf.gather(means, [0, 2], axis=1), tf.gather(variances, [0, 2], axis=1), [0.3, 0.5]
    )
    np.testing.assert_allclose(combined.gradient[1], alone.gradient[1], rtol=1e-6)
    np.testing.assert_array_equal(combined.weights[1, 1], 0.0)
    np.testing.assert_array_equal(combined.weights[2], 0.0)
    np.testing.assert_array_equal(combined.gradient[2], 0.0)


@pytest.mark.parametrize("bad", ["class", "inf"])
def test_a_label_that_is_not_the_marker_still_stops_the_step(bad):
    x, y = _data(64)
    y = _partly_missing(y)
    model = _model(TASKS)
    model.compile(optimizer="adam")
    before = [w.numpy().copy() for w in model.weights]
    if bad == "class":
        y["kind"][3], match = -2, r"Task 'kind'.*\-1 marks a missing label"
    else:
        y["value"][3], match = np.inf, r"Task 'value'.*finite numbers"
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


# ---------------------------------------------------------------------- exact semantics
def _aggregator(name: str) -> kb.interface.Aggregator:
    if name == "bayesagg":
        return kb.BayesAgg(warmup_epochs=1, num_samples=32, seed=3)
    return kb.aggregators.LinearScalarization()


@pytest.mark.parametrize("aggregator", ["linear", "bayesagg"])
def test_an_all_missing_task_is_the_same_as_no_such_task(aggregator):
    x, y = _data()
    without = _model({"value": TASKS["value"], "flags": TASKS["flags"], "kind": TASKS["kind"]})
    with_task = _model({**without.task_specs, "ghost": kb.tasks.Regression()}, seed=1)
    _copy_weights(without, with_task)
    ghost_head = [
        w.copy() for w in with_task.heads["ghost"].get_weights()[:2]
    ]  # kernel, bias (the served state is the prior's)
    y_with = {name: y[name] for name in without.task_specs} | {"ghost": np.full(len(x), np.nan, "float32")}
    for model, labels in ((without, {name: y[name] for name in without.task_specs}), (with_task, y_with)):
        model.compile(optimizer=keras.optimizers.Adam(0.01), aggregator=_aggregator(aggregator))
        model.fit(x, labels, batch_size=32, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(without.trunk.get_weights(), with_task.trunk.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in without.heads:
        for a, b in zip(without.heads[name].get_weights(), with_task.heads[name].get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    for a, b in zip(ghost_head, with_task.heads["ghost"].get_weights()):
        np.testing.assert_array_equal(a, b)  # a head without any label stays untouched


@pytest.mark.parametrize("aggregator", ["linear", "bayesagg"])
def test_an_all_missing_sample_changes_nothing(aggregator):
    x, y = _data(48)
    y = _partly_missing(y)
    x_extra = np.concatenate([x, np.ones((1, INPUT_DIM), "float32")])
    y_extra = {name: np.concatenate([labels, labels[:1]]) for name, labels in y.items()}
    for name in ("value", "pair", "flags"):
        y_extra[name][-1] = np.nan
    y_extra["kind"][-1] = -1
    models = [_model(TASKS), _model(TASKS)]
    _copy_weights(models[0], models[1])
    for model, inputs, labels in zip(models, (x, x_extra), (y, y_extra)):
        agg = kb.BayesAgg(warmup_epochs=0, num_samples=32, seed=3) if aggregator == "bayesagg" else None
        model.compile(optimizer=keras.optimizers.SGD(0.05), aggregator=agg)
        model.fit(inputs, labels, batch_size=len(inputs), epochs=2, shuffle=False, verbose=0)
    for a, b in zip(models[0].weights, models[1].weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    if aggregator == "bayesagg":
        first, second = (model.aggregator for model in models)
        for a, b in zip(first.weights, second.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


def test_bayesagg_full_data_posterior_is_that_of_the_present_rows():
    x, y = _data(160)
    y = _partly_missing(y, fraction=0.4)
    model = _model(TASKS)
    model.trunk.trainable = False  # the rows the statistics saw are the trunk's outputs now
    aggregator = kb.BayesAgg(prior_variance=0.05, warmup_epochs=0, num_samples=32, seed=3, linalg_dtype="float64")
    model.compile(optimizer="adam", aggregator=aggregator)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    features = tf.cast(model.trunk(x), tf.float64)

    regression = aggregator.regression
    assert float(regression.output_priors.numpy()) == 1.0
    targets = np.concatenate([y["value"][:, None], y["pair"]], axis=1)
    for output in range(3):
        rows = ~np.isnan(targets[:, output])
        h = tf.boolean_mask(features, rows)
        expected = bayes.regression.full_data_posterior(
            tf.matmul(h, h, transpose_a=True), h.numpy().T @ targets[rows, output : output + 1], 0.05
        )
        np.testing.assert_allclose(
            regression.output_prior_precision[output].numpy(), expected.precision, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(regression.prior_mean[output].numpy(), expected.mean[0], rtol=1e-4, atol=1e-6)

    head_weights = model.head_weights()
    binary = aggregator.classification_group("flags")
    for output in range(2):
        rows = ~np.isnan(y["flags"][:, output])
        weights = tf.cast(head_weights["flags"][output : output + 1], tf.float64)
        curvature = bayes.classification.binary_curvature(
            tf.boolean_mask(features, rows), y["flags"][rows, output : output + 1].astype("float64"), weights
        )
        prior = bayes.classification.isotropic_prior(1, INPUT_DIM + 5, 0.05, tf.float64)
        expected = bayes.classification.newton_posterior(curvature, weights, *prior)
        np.testing.assert_allclose(binary.prior_precision[output].numpy(), expected.precision[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(binary.prior_mean[output].numpy(), expected.mean[0], rtol=1e-4, atol=1e-6)

    rows = y["kind"] >= 0
    weights = tf.cast(head_weights["kind"], tf.float64)
    curvature = bayes.classification.multiclass_curvature(
        tf.boolean_mask(features, rows), np.eye(3)[y["kind"][rows]], weights
    )
    prior = bayes.classification.isotropic_prior(1, 3 * (INPUT_DIM + 5), 0.05, tf.float64)
    expected = bayes.classification.newton_posterior(curvature, tf.reshape(weights, [1, -1]), *prior)
    group = aggregator.classification_group("kind")
    np.testing.assert_allclose(group.prior_precision.numpy(), expected.precision, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(group.prior_mean.numpy(), expected.mean, rtol=1e-4, atol=1e-6)


def test_metrics_and_loss_trackers_count_present_labels_only():
    x, y = _data(64)
    y = _partly_missing(y)
    model = _model(TASKS)
    metrics = {"value": ["mae"], "flags": ["accuracy"], "kind": ["accuracy"]}
    model.compile(optimizer="adam", metrics=metrics, weighted_metrics={"value": ["mse"]})
    results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    predictions = model.predict(x, verbose=0)
    value = ~np.isnan(y["value"])
    errors = predictions["value"][:, 0] - y["value"]
    np.testing.assert_allclose(results["value_mae"], np.abs(errors[value]).mean(), rtol=1e-5)
    np.testing.assert_allclose(results["value_mse"], np.square(errors[value]).mean(), rtol=1e-5)
    np.testing.assert_allclose(results["value_loss"], np.square(errors[value]).mean(), rtol=1e-5)
    flags = ~np.isnan(y["flags"])
    correct = (predictions["flags"] > 0.5) == (y["flags"] > 0.5)
    np.testing.assert_allclose(results["flags_accuracy"], correct[flags].mean(), rtol=1e-5)
    kind = y["kind"] >= 0
    np.testing.assert_allclose(
        results["kind_accuracy"], (np.argmax(predictions["kind"], 1) == y["kind"])[kind].mean(), rtol=1e-5
    )


def _every_aggregator() -> list[kb.interface.Aggregator]:
    classes = [
        cls
        for cls in vars(kb.aggregators).values()
        if inspect.isclass(cls) and issubclass(cls, kb.interface.Aggregator) and cls is not kb.interface.Aggregator
    ]
    made = []
    for cls in sorted(classes, key=lambda c: c.__name__):
        made.append(kb.BayesAgg(warmup_epochs=1, num_samples=16, seed=0) if cls is kb.BayesAgg else cls())
        if "level" in inspect.signature(cls.__init__).parameters:
            made.append(cls(level="parameters"))
    return made


def test_every_aggregator_trains_on_partly_labelled_data_without_nan():
    x, y = _data(96)
    y = _partly_missing(y, fraction=0.4)
    y["value"][:32] = np.nan  # the first batch has no label of `value` at all
    for aggregator in _every_aggregator():
        model = _model(TASKS)
        # Eager: the same step code without one trace per aggregator (graph and XLA runs: the test below).
        model.compile(optimizer="adam", aggregator=aggregator, run_eagerly=True)
        history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
        name = f"{type(aggregator).__name__}({getattr(aggregator, 'level', '')})"
        assert all(np.isfinite(history.history["loss"])), name
        assert all(np.all(np.isfinite(w.numpy())) for w in model.weights), name


@pytest.mark.parametrize("aggregator", ["linear", "bayesagg"])
def test_partly_labelled_training_works_under_xla(aggregator):
    x, y = _data(96)
    y = _partly_missing(y, fraction=0.4)
    runs = []
    for jit_compile in (False, True):
        model = _model(TASKS)
        model.compile(optimizer="adam", aggregator=_aggregator(aggregator), jit_compile=jit_compile)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        runs.append(model.trunk.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_bayesagg_state_saved_without_the_per_output_variables_still_loads():
    model = _model(TASKS)
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=0, num_samples=16))
    aggregator = model.aggregator
    store: dict = {}
    aggregator.save_own_variables(store)
    later = list(aggregator.regression.output_state) + aggregator.variables_after_0_2_0()  # the binary set's cache
    appended = len(later)
    assert len(aggregator.regression.output_state) == 5 and appended == 7
    assert [id(v) for v in aggregator.later_version_variables()[-appended:]] == [id(v) for v in later]
    own = len(aggregator._trainable_variables) + len(aggregator._non_trainable_variables)
    older = {key: value for key, value in store.items() if not key.isdigit() or int(key) < own - appended}
    fresh = _model(TASKS)
    fresh.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=0, num_samples=16))
    fresh.aggregator.load_own_variables(older)
    assert float(fresh.aggregator.regression.output_priors.numpy()) == 0.0


def test_per_output_regression_posteriors_and_evidence_match_the_shared_ones():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 5))
    targets = rng.normal(size=(40, 3))
    present = (rng.random((40, 3)) > 0.3).astype("float64")
    grams = bayes.regression.per_output_feature_grams(tf.constant(features), tf.constant(present))
    cross = features.T @ (targets * present)
    posterior = bayes.regression.per_output_full_data_posterior(grams, cross, 0.5)
    for output in range(3):
        rows = features[present[:, output] > 0]
        alone = bayes.regression.full_data_posterior(rows.T @ rows, cross[:, output : output + 1], 0.5)
        np.testing.assert_allclose(posterior.precision[output], alone.precision, rtol=1e-12)
        np.testing.assert_allclose(posterior.covariance[output], alone.covariance, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(posterior.mean[output], alone.mean[0], rtol=1e-9)
    gram = features.T @ features
    shared = bayes.regression_evidence_variance(gram, features.T @ targets, 0.1)
    per_output = bayes.evidence.per_output_regression_evidence_variance(
        np.repeat(gram[None], 3, axis=0), features.T @ targets, 0.1
    )
    np.testing.assert_allclose(per_output, shared, rtol=1e-9)


def test_served_noise_variance_after_partly_labelled_data_is_that_of_the_present_rows():
    x, y = _data(160)
    y = _partly_missing(y, fraction=0.4)
    model = _model(TASKS)
    model.trunk.trainable = False
    aggregator = kb.BayesAgg(prior_variance=0.05, warmup_epochs=0, num_samples=16, linalg_dtype="float64")
    model.compile(optimizer="adam", aggregator=aggregator)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    features = tf.cast(model.trunk(x), tf.float64)
    targets = np.concatenate([y["value"][:, None], y["pair"]], axis=1)
    served = model.predict_with_uncertainty(x[:8])
    for output, (task, column) in enumerate([("value", 0), ("pair", 0), ("pair", 1)]):
        rows = ~np.isnan(targets[:, output])
        h = tf.boolean_mask(features, rows)
        gram, cross = tf.matmul(h, h, transpose_a=True), h.numpy().T @ targets[rows, output : output + 1]
        posterior = bayes.regression.full_data_posterior(gram, cross, 0.05)
        noise = bayes.predictive.regression_noise_variance(
            gram,
            cross,
            np.sum(targets[rows, output] ** 2)[None],
            float(rows.sum()),
            posterior.mean,
            posterior.covariance,
        )
        np.testing.assert_allclose(model.heads[task].served.noise_variance[column].numpy(), noise[0], rtol=1e-4)
        spread = bayes.predictive.quadratic_forms(features[:8], posterior.covariance[None])[:, 0]
        np.testing.assert_allclose(served[f"{task}/variance"][:, column], noise[0] * (1 + spread), rtol=1e-4)
