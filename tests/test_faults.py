"""Faults leave no trace: a bad step makes no update at all, nothing stays poisoned, errors are clear.

Each numbered case of issue 8 (a user's bad input or an unusual situation) is one test here.
"""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from tests.conftest import make_mixed_model, mixed_task_data

NUM_FEATURES = 8


def _model(seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((NUM_FEATURES,)), keras.layers.Dense(16, activation="elu")])
    return kb.MultiTaskModel(trunk, {"r": kb.tasks.Regression(), "c": kb.tasks.Multiclass(3)})


def _data(num_samples: int = 256, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, NUM_FEATURES)).astype("float32")
    return x, {"r": (x[:, 0] - x[:, 1]).astype("float32"), "c": np.argmax(x[:, 2:5], axis=1).astype("int32")}


def _dataset(x: np.ndarray, y: dict[str, np.ndarray], batch_size: int = 32) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _bayesagg() -> kb.BayesAgg:
    return kb.BayesAgg(warmup_epochs=0, num_samples=16, seed=1)


def _state(model: kb.MultiTaskModel) -> list[np.ndarray]:
    """Everything a step may change: weights, optimizer variables (iterations included), aggregator state."""
    variables = list(model.weights) + list(model.optimizer.variables) + list(model.aggregator.weights)
    return [np.array(v.numpy()) for v in variables]


def _assert_same(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _corrupted(y: dict[str, np.ndarray], task: str, row: int, value: float) -> dict[str, np.ndarray]:
    corrupted = {name: labels.copy() for name, labels in y.items()}
    corrupted[task][row] = value
    return corrupted


@pytest.mark.parametrize("jit_compile", [False, True])
def test_1_a_label_error_leaves_no_poisoned_state_and_the_next_fit_works(jit_compile):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", aggregator=_bayesagg(), jit_compile=jit_compile)
    model.fit(_dataset(x, y), epochs=1, verbose=0)
    before = _state(model)
    with pytest.raises(ValueError, match="Task 'r'.*finite"):
        model.fit(_dataset(x, _corrupted(y, "r", 3, np.inf)), epochs=1, verbose=0)  # bad first batch (NaN: missing)
    _assert_same(before, _state(model))
    history = model.fit(_dataset(x, y), epochs=1, verbose=0)  # clean data trains again
    assert np.isfinite(history.history["loss"][0])
    assert np.all(np.isfinite(model.aggregator.regression.target_sum.numpy()))


@pytest.mark.parametrize("aggregator", ["linear", "bayesagg", "pcgrad"])
def test_2_non_finite_inputs_never_reach_the_weights(aggregator):
    x, y = _data()
    model = _model()
    chosen = {"linear": None, "bayesagg": _bayesagg(), "pcgrad": kb.aggregators.PCGrad(seed=0)}[aggregator]
    model.compile(optimizer="adam", aggregator=chosen)
    model.fit(_dataset(x, y), epochs=1, verbose=0)
    before = _state(model)
    bad_x = x.copy()
    bad_x[5, 2] = np.nan
    with pytest.raises(FloatingPointError, match="Non-finite input/representation"):
        model.fit(_dataset(bad_x, y), epochs=1, verbose=0)
    _assert_same(before, _state(model))
    with pytest.raises(FloatingPointError, match="loss of task 'r'"):
        model.fit(_dataset(x, _corrupted(y, "r", 7, 1e30)), epochs=1, verbose=0)  # finite, but its square is not
    _assert_same(before, _state(model))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_3_an_empty_epoch_changes_nothing():
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", aggregator=_bayesagg())
    model.fit(_dataset(x, y), epochs=2, verbose=0)
    predictions = model.predict(x[:16], verbose=0)
    state = _state(model)
    model.fit(_dataset(x, y).take(0), epochs=1, verbose=0)
    _assert_same(state, _state(model))
    np.testing.assert_array_equal(model.predict(x[:16], verbose=0)["r"], predictions["r"])


def test_4_steps_per_execution_stops_at_the_bad_step():
    x, y = _data(num_samples=512)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), steps_per_execution=8)
    with pytest.raises(FloatingPointError, match="loss of task 'r'"):
        model.fit(_dataset(x, _corrupted(y, "r", 3 * 32 + 1, 1e30)), epochs=1, verbose=0)  # in the 4th batch
    # The three good steps before it were applied, nothing after it.
    assert int(model.optimizer.iterations.numpy()) == 3
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_5_custom_loops_learn_of_a_skipped_step_and_keep_training():
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", aggregator=_bayesagg())
    step = tf.function(model.train_step)
    clean = (x[:32], {name: labels[:32] for name, labels in y.items()})
    step(clean)
    model.raise_for_faults()
    assert int(model.optimizer.iterations.numpy()) == 1
    bad = (x[:32], _corrupted(clean[1], "c", 0, 7))
    step(bad)
    assert int(model.optimizer.iterations.numpy()) == 1  # skipped
    with pytest.raises(ValueError, match="Task 'c'.*class indices in \\[0, 3\\)"):
        model.raise_for_faults()
    model.raise_for_faults()  # reported once
    step(clean)
    model.end_batch()  # the documented per-step hook raises nothing for a clean step
    assert int(model.optimizer.iterations.numpy()) == 2  # later clean steps train


BAD_ARGUMENTS = [
    (kb.BayesAgg, "prior_variance", ["0.1", float("inf"), float("nan"), 0.0, -1.0, True, None]),
    (kb.BayesAgg, "regression_power", [0.0, 1.5, "x", float("nan")]),
    (kb.BayesAgg, "classification_power", [-0.1, float("inf")]),
    (kb.BayesAgg, "num_samples", [0, 2.5, "8", float("inf")]),
    (kb.BayesAgg, "warmup_epochs", [-1, 0.5, None]),
    (kb.BayesAgg, "seed", [-1, 1.5, "3"]),
    (kb.BayesAgg, "linalg_dtype", ["float16", 32]),
    (kb.BayesAgg, "feature_buffer_rows", [0, float("nan")]),
    (kb.BayesAgg, "memory_limit_gb", [0.0, float("inf"), "4"]),
    (kb.aggregators.DynamicWeightAverage, "temperature", [0.0, float("nan"), "2"]),
    (kb.aggregators.UncertaintyWeighting, "variant", ["other", 1]),
    (kb.aggregators.FAMO, "learning_rate", [0.0, float("inf")]),
    (kb.aggregators.FAMO, "weight_decay", [-1.0, float("nan")]),
    (kb.aggregators.FAMO, "epsilon", [0.0]),
    (kb.aggregators.GradNorm, "alpha", [-1.0, float("nan")]),
    (kb.aggregators.GradNorm, "learning_rate", [0.0, "0.1"]),
    (kb.aggregators.ScaleInvariant, "epsilon", [-1.0, float("inf")]),
    (kb.aggregators.RandomLossWeighting, "seed", [-3, 0.5]),
    (kb.aggregators.MGDA, "max_iterations", [0, 1.5]),
    (kb.aggregators.MGDA, "tolerance", [-1.0, float("nan")]),
    (kb.aggregators.MGDA, "level", ["weights"]),
    (kb.aggregators.CAGrad, "c", [-0.1, float("inf")]),
    (kb.aggregators.CAGrad, "rescale", ["sometimes"]),
    (kb.aggregators.NashMTL, "update_weights_every", [0, "1"]),
    (kb.aggregators.PCGrad, "seed", [-1]),
    (kb.aggregators.FairGrad, "alpha", [-1.0, float("nan"), "1"]),
    (kb.aggregators.Krum, "n_byzantine", [-1, 0.5]),
    (kb.aggregators.Krum, "n_selected", [0]),
    (kb.aggregators.TrimmedMean, "trim_number", [-1, 1.5]),
    (kb.aggregators.PCD, "tau", [-0.1, 1.5]),
    (kb.aggregators.PCD, "beta", [1.0, -0.5]),
    (kb.aggregators.PCD, "epsilon", [-1.0]),
    (kb.aggregators.CRMOGM, "alpha", [1.5, float("nan")]),
]


@pytest.mark.parametrize("cls, argument, values", BAD_ARGUMENTS, ids=lambda v: getattr(v, "__name__", str(v))[:24])
def test_7_every_constructor_argument_is_validated_with_one_message_style(cls, argument, values):
    for value in values:
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: {argument} must be .*; got "):
            cls(**{argument: value})


def test_8_tensorboard_works_in_fit(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam")
    model.fit(_dataset(x, y), epochs=1, verbose=0, callbacks=[keras.callbacks.TensorBoard(str(tmp_path))])
    assert any(tmp_path.rglob("events.out.tfevents.*"))


def test_9_task_weights_reach_loggers_wherever_the_callback_stands_and_keep_one_scale(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=1, num_samples=16, seed=0))
    path = tmp_path / "log.csv"
    history = kb.callbacks.TaskWeightHistory()
    model.fit(_dataset(x, y), epochs=3, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(path)), history])
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert {"weight/r", "weight/c"} <= set(rows[0])
    totals = [history.history["r"][e] + history.history["c"][e] for e in range(3)]
    np.testing.assert_allclose(totals, [2.0, 2.0, 2.0], rtol=1e-5)  # warm-up and BayesAgg epochs alike


def test_9_validation_data_is_checked_before_the_first_training_step():
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"validation_data has no labels for task\(s\) \['c'\]"):
        model.fit(_dataset(x, y), validation_data=(x, {"r": y["r"]}), epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_9_weights_of_a_model_compiled_with_another_aggregator_say_so(tmp_path):
    x, y = _data()
    trained = _model()
    trained.compile(optimizer="adam", aggregator=_bayesagg())
    trained.fit(_dataset(x, y), epochs=1, verbose=0)
    path = str(tmp_path / "m.weights.h5")
    trained.save_weights(path)
    other = _model(seed=1)
    other.compile(optimizer="adam", aggregator=kb.aggregators.UncertaintyWeighting())
    other.build((None, NUM_FEATURES))
    with pytest.raises(ValueError, match="compile the model with"):
        other.load_weights(path)


def test_10_many_class_heads_are_refused_before_allocating():
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((NUM_FEATURES,)), keras.layers.Dense(32)])
    model = kb.MultiTaskModel(trunk, {"species": kb.tasks.Multiclass(100)})
    model.compile(optimizer="adam", aggregator=kb.BayesAgg())
    model.build((None, NUM_FEATURES))  # a one-sample step fits in 4 GiB; a batch of 256 does not
    x, y = np.zeros((256, NUM_FEATURES), "float32"), {"species": np.zeros(256, "int32")}
    with pytest.raises(MemoryError, match=r"batch size 256.*multiclass task 'species' \(100 classes\).*num_samples"):
        model.fit(x, y, batch_size=256, epochs=1, verbose=0)


def test_a_loss_scale_overflow_step_leaves_the_aggregator_state_untouched():
    """A LossScaleOptimizer skips an overflowing step itself (and lowers its scale); BayesAgg's
    statistics and seeds must skip it too, and the next finite step commits as usual."""
    x, labels = mixed_task_data(num_samples=64)
    labels["value"] = labels["value"] * 100.0  # a loss of about 1e4: times the scale, more than float32 holds
    model = make_mixed_model()
    aggregator = kb.BayesAgg(warmup_epochs=0, moments="monte_carlo", num_samples=16, seed=0)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=2.0**126)
    model.compile(optimizer=optimizer, aggregator=aggregator)
    model.train_on_batch(x, labels)  # the scaled loss overflows float32
    assert float(optimizer.dynamic_scale.numpy()) < 2.0**126
    assert int(aggregator.epoch_steps.numpy()) == 0
    assert not np.any(aggregator.regression.gram_sum.numpy())
    seed_state = np.array(aggregator.seed_generator.state.numpy())
    for _ in range(100):  # the scale halves until the step is finite
        if int(aggregator.epoch_steps.numpy()):
            break
        model.train_on_batch(x, labels)
    assert int(aggregator.epoch_steps.numpy()) == 1
    assert np.any(aggregator.regression.gram_sum.numpy())
    assert not np.array_equal(seed_state, aggregator.seed_generator.state.numpy())
