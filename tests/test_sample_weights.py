"""Sample and class weights are repetition counts: weight 2 = the row twice, weight 0 = the row left out."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.bayes import classification

B, INPUT_DIM = 12, 4
TASKS = {
    "size": lambda: kb.tasks.Regression(2),
    "flags": lambda: kb.tasks.Binary(2),
    "kind": lambda: kb.tasks.Multiclass(3),
}
OTHER_AGGREGATORS = [
    "ScaleInvariant", "RandomLossWeighting", "DynamicWeightAverage", "UncertaintyWeighting", "FAMO", "GradNorm",
    "MGDA", "PCGrad", "CAGrad", "IMTLG", "NashMTL", "AlignedMTL",
]  # fmt: skip


def _data(rows: int = B, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Inputs, labels and integer row weights 0/1/2 (each value present)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, INPUT_DIM)).astype("float32")
    y = {
        "size": (x[:, :2] + 0.1 * rng.normal(size=(rows, 2))).astype("float32"),
        "flags": (x[:, 1:3] > 0).astype("float32"),
        "kind": np.argmax(x[:, :3], axis=1).astype("int32"),
    }
    weights = np.resize(np.array([0, 1, 2], "float32"), rows)
    rng.shuffle(weights)
    return x, y, weights


def _model(aggregator, dim: int = 5, **compile_arguments) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(1)
    trunk = keras.Sequential([keras.Input((INPUT_DIM,)), keras.layers.Dense(dim, activation="tanh")])
    model = kb.MultiTaskModel(trunk, {name: make() for name, make in TASKS.items()})
    model.build((None, INPUT_DIM))  # the heads draw their weights now, under this seed
    model.compile(optimizer=keras.optimizers.SGD(0.1), aggregator=aggregator, **compile_arguments)
    return model


def _repeated(x, y, weights):
    rows = np.repeat(np.arange(len(x)), weights.astype(int))
    return x[rows], {name: labels[rows] for name, labels in y.items()}


def _assert_same_weights(first, second, rtol=1e-5, atol=1e-6):
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=atol, err_msg=a.path)


def _bayesagg() -> kb.BayesAgg:
    return kb.BayesAgg(warmup_epochs=1, num_samples=32, seed=3)


# ---------------------------------------------------------------------- the repetition rule
EAGER = {"run_eagerly": True}


@pytest.mark.parametrize(
    "aggregator, dim, mode",
    [("linear", 5, {"jit_compile": True}), ("bayesagg", 5, {"jit_compile": False}), ("bayesagg", 24, EAGER)],
    ids=["linear-xla", "bayesagg-full-rank-graph", "bayesagg-low-rank-eager"],
)
def test_weights_0_1_2_equal_dropping_and_repeating_rows(aggregator, dim, mode):
    """Two full-batch epochs (BayesAgg: a warm-up whose weighted statistics make the prior, then an epoch with its
    posteriors, and the refresh after it; D > B takes the rank-B path).
    The weighted model runs in `mode`, the one on repeated rows eagerly (one trace per case)."""
    make = _bayesagg if aggregator == "bayesagg" else kb.aggregators.LinearScalarization
    x, y, weights = _data()
    weighted, repeated = _model(make(), dim, **mode), _model(make(), dim, **EAGER)
    logs = weighted.fit(x, y, sample_weight=weights, batch_size=B, epochs=2, shuffle=False, verbose=0)
    x_rep, y_rep = _repeated(x, y, weights)
    expected = repeated.fit(x_rep, y_rep, batch_size=len(x_rep), epochs=2, shuffle=False, verbose=0)
    _assert_same_weights(weighted, repeated)
    for key, values in expected.history.items():
        np.testing.assert_allclose(logs.history[key], values, rtol=1e-5, err_msg=key)
    if aggregator == "bayesagg":
        _assert_same_weights(weighted.aggregator, repeated.aggregator, rtol=1e-4, atol=1e-5)
        assert int(weighted.aggregator.completed_epochs.numpy()) == 2


def test_a_per_task_weight_of_zero_equals_that_label_missing():
    """Per task and per output ([B, 2] for Regression(2): its outputs then take their own posteriors)."""
    x, y, _ = _data()
    rng = np.random.default_rng(5)
    size_weights = (rng.random((B, 2)) > 0.3).astype("float32")
    kind_weights = (rng.random(B) > 0.3).astype("float32")
    missing = {
        **y,
        "size": np.where(size_weights > 0, y["size"], np.nan),
        "kind": np.where(kind_weights > 0, y["kind"], -1),
    }
    weighted, marked = _model(_bayesagg(), run_eagerly=True), _model(_bayesagg(), run_eagerly=True)
    weighted.fit(
        x,
        y,
        sample_weight={"size": size_weights, "kind": kind_weights},
        batch_size=B,
        epochs=2,
        shuffle=False,
        verbose=0,
    )
    marked.fit(x, missing, batch_size=B, epochs=2, shuffle=False, verbose=0)
    _assert_same_weights(weighted, marked)
    _assert_same_weights(weighted.aggregator, marked.aggregator, rtol=1e-4, atol=1e-5)


def test_class_weight_equals_the_sample_weights_it_implies():
    x, y, _ = _data()
    class_weight = {"kind": {0: 2.0, 2: 0.5}, "flags": {0: 0.25, 1: 3.0}}
    implied = {
        "kind": np.array([2.0, 1.0, 0.5], "float32")[y["kind"]],
        "flags": np.where(y["flags"] > 0, 3.0, 0.25).astype("float32"),
    }
    # The weights are made before any aggregator sees them: linear scalarization shows it (BayesAgg's use of
    # weights is the repetition test above).
    by_class = _model(kb.aggregators.LinearScalarization())
    by_sample = _model(kb.aggregators.LinearScalarization(), **EAGER)  # graph mode (and its retrace) in by_class
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
    by_class.fit(data, class_weight=class_weight, epochs=2, verbose=0)
    by_sample.fit(tf.data.Dataset.from_tensor_slices((x, y, implied)).batch(B), epochs=2, verbose=0)
    _assert_same_weights(by_class, by_sample, rtol=1e-6, atol=1e-7)
    by_class.fit(data, epochs=1, verbose=0)  # a later fit without class_weight: unweighted again
    by_sample.fit(data, epochs=1, verbose=0)
    _assert_same_weights(by_class, by_sample, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", OTHER_AGGREGATORS + ["PCGrad(level='parameters')"])
def test_every_other_aggregator_follows_the_repetition_rule(name):
    """One full-batch step, run eagerly (the same step functions, without tracing for every aggregator)."""
    make = (lambda: kb.aggregators.PCGrad(level="parameters", seed=2)) if "(" in name else getattr(kb.aggregators, name)
    x, y, weights = _data()
    weighted, repeated = _model(make(), run_eagerly=True), _model(make(), run_eagerly=True)
    weighted.fit(x, y, sample_weight=weights, batch_size=B, epochs=1, shuffle=False, verbose=0)
    repeated.fit(*_repeated(x, y, weights), batch_size=int(weights.sum()), epochs=1, shuffle=False, verbose=0)
    _assert_same_weights(weighted, repeated, rtol=1e-4, atol=1e-5)
    _assert_same_weights(weighted.aggregator, repeated.aggregator, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- evaluate, metrics, all-zero batches
def test_evaluate_and_metrics_weigh_rows_like_repetitions():
    x, y, weights = _data()
    model = _model(None)
    metrics = {"kind": ["accuracy"], "size": ["mae"], "flags": ["binary_accuracy"]}
    model.compile(optimizer="sgd", metrics=metrics, run_eagerly=True)
    weighted = model.evaluate(x, y, sample_weight=weights, batch_size=B, verbose=0, return_dict=True)
    repeated = model.evaluate(*_repeated(x, y, weights), batch_size=B * 2, verbose=0, return_dict=True)
    assert weighted.keys() == repeated.keys()
    for key, value in repeated.items():
        np.testing.assert_allclose(weighted[key], value, rtol=1e-5, err_msg=key)


def test_an_all_zero_batch_changes_nothing():
    x, y, _ = _data()
    model = _model(kb.aggregators.MGDA())
    before = [v.numpy().copy() for v in model.weights]
    model.fit(x, y, sample_weight=np.zeros(B, "float32"), batch_size=B, epochs=1, verbose=0)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_multiclass_curvature_of_weighted_rows_is_that_of_repeated_rows():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6, 3))
    labels = np.eye(4)[rng.integers(0, 4, 6)]
    head = rng.normal(size=(4, 4))
    weights = np.array([0.0, 1.0, 2.0, 3.0, 1.0, 0.0])
    rows = np.repeat(np.arange(6), weights.astype(int))
    weighted = classification.multiclass_curvature(features, labels, head, weights)
    repeated = classification.multiclass_curvature(features[rows], labels[rows], head)
    np.testing.assert_allclose(weighted.ggn, repeated.ggn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weighted.loss_gradient, repeated.loss_gradient, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- errors
def test_a_bad_weight_value_stops_the_step_naming_the_task():
    x, y, weights = _data()
    model = _model(kb.aggregators.LinearScalarization())
    before = [v.numpy().copy() for v in model.weights]
    for bad in (-1.0, np.nan, np.inf):  # one traced step for all three
        kind_weights = weights.copy()
        kind_weights[3] = bad
        with pytest.raises(ValueError, match="Task 'kind'.*sample weights"):
            model.fit(x, y, sample_weight={"kind": kind_weights}, batch_size=B, epochs=1, verbose=0)
        for a, b in zip(before, model.weights):
            np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize(
    "sample_weight, class_weight, message",
    [
        ({"kind": np.ones((B, 3), "float32")}, None, r"Task 'kind'.*shape \(batch,\) or \(batch, 1\)"),
        ({"ghost": np.ones(B, "float32")}, None, "unknown task"),
        (np.ones((B, 5), "float32"), None, "one weight per sample"),
        (None, {"size": {0: 1.0}}, "has no classes"),
        (None, {"kind": {3: 1.0}}, "classes 0..2"),
        (None, {"flags": {1: -2.0}}, r"class_weight\['flags'\]\[1\]"),
    ],
    ids=["multiclass-per-output", "unknown-task", "wrong-rank", "regression-class-weight", "no-such-class", "negative"],
)
def test_weights_of_the_wrong_form_are_a_clear_error(sample_weight, class_weight, message):
    x, y, _ = _data()
    model = _model(kb.aggregators.LinearScalarization())
    data = (x, y) if sample_weight is None else (x, y, sample_weight)
    with pytest.raises(ValueError, match=message):
        model.fit(tf.data.Dataset.from_tensor_slices(data).batch(B), class_weight=class_weight, epochs=1, verbose=0)
