"""MultiTaskModel as Keras users use it: fit/evaluate/predict, metrics, save/load, export, bad input."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from tests.conftest import make_mixed_model, mixed_dataset, mixed_task_data

DATA = pathlib.Path(__file__).parent / "data"


def _regression_model(seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="elu")])
    return kb.MultiTaskModel(trunk, {"value": kb.tasks.Regression(), "pair": kb.tasks.Regression(2)})


def _regression_dataset():
    x, labels = mixed_task_data()
    pair = np.stack([labels["value"] * 0.5, labels["flags"][:, 0]], axis=1).astype("float32")
    return x, {"value": labels["value"], "pair": pair}


def test_predict_returns_values_and_probabilities_and_logs_per_task_losses():
    model = make_mixed_model()
    model.compile(optimizer="adam", metrics={"kind": ["accuracy"], "flags": ["accuracy"]})
    history = model.fit(mixed_dataset(), epochs=2, verbose=0).history
    assert {"loss", "value_loss", "flags_loss", "kind_loss", "kind_accuracy", "flags_accuracy"} <= set(history)
    np.testing.assert_allclose(
        history["loss"][-1], history["value_loss"][-1] + history["flags_loss"][-1] + history["kind_loss"][-1], rtol=1e-4
    )
    x, _ = mixed_task_data(num_samples=8)
    predictions = model.predict(x, verbose=0)
    assert predictions["value"].shape == (8, 1)
    assert predictions["flags"].shape == (8, 3) and np.all((predictions["flags"] >= 0) & (predictions["flags"] <= 1))
    np.testing.assert_allclose(predictions["kind"].sum(axis=1), 1.0, rtol=1e-5)
    results = model.evaluate(mixed_dataset(), verbose=0, return_dict=True)
    assert 0.0 <= results["kind_accuracy"] <= 1.0 and np.isfinite(results["loss"])


def test_default_aggregator_is_linear_scalarization_and_it_matches_plain_keras():
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    assert isinstance(model.aggregator, kb.aggregators.LinearScalarization)
    x, labels = mixed_task_data(num_samples=64)
    reference = make_mixed_model()
    reference.build((None, 12))
    model.build((None, 12))
    reference.set_weights(model.get_weights())
    model.train_on_batch(x, labels)
    # The same step by hand: SGD on the plain sum of the task losses.
    variables = reference.trainable_variables
    with tf.GradientTape() as tape:
        out = reference(x, training=True)
        loss = (
            tf.reduce_mean(tf.square(out["value"][:, 0] - labels["value"]))
            + tf.reduce_sum(tf.reduce_mean(keras.ops.binary_crossentropy(labels["flags"], out["flags"]), axis=0))
            + tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels["kind"], out["kind"]))
        )
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign_sub(0.1 * gradient)
    for variable, expected in zip(model.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(variable.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_keras_round_trip_keeps_predictions_aggregator_and_prior(tmp_path):
    x, labels = _regression_dataset()
    model = _regression_model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=1, prior_variance=0.01, seed=3))
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(64)
    model.fit(ds, epochs=2, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, kb.MultiTaskModel)
    assert isinstance(restored.aggregator, kb.BayesAgg)
    assert restored.aggregator.get_config() == model.aggregator.get_config()
    for key in ("value", "pair"):
        np.testing.assert_allclose(
            restored.predict(x[:16], verbose=0)[key], model.predict(x[:16], verbose=0)[key], rtol=1e-6
        )
    np.testing.assert_allclose(
        restored.aggregator.regression.prior_precision.numpy(), model.aggregator.regression.prior_precision.numpy()
    )
    assert int(restored.aggregator.completed_epochs.numpy()) == 2
    restored.fit(ds, epochs=1, verbose=0)  # training goes on from the restored state
    assert int(restored.aggregator.completed_epochs.numpy()) == 3


def test_export_serves_the_same_predictions_without_keras_bayesagg(tmp_path):
    x, labels = _regression_dataset()
    model = _regression_model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=0))
    model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(64), epochs=1, verbose=0)
    served = str(tmp_path / "served")
    model.export(served, verbose=False)
    np.save(tmp_path / "x.npy", x[:16])
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.modules["keras_bayesagg"] = None  # serving must not need this package
        import tensorflow as tf
        loaded = tf.saved_model.load({served!r})
        out = loaded.serve(tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        np.savez({str(tmp_path / "out.npz")!r}, **{{k: v.numpy() for k, v in out.items()}})
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=str(tmp_path), timeout=300)
    served_out = np.load(tmp_path / "out.npz")
    expected = model.predict(x[:16], verbose=0)
    for key in ("value", "pair"):
        np.testing.assert_allclose(served_out[key], expected[key], rtol=1e-5, atol=1e-6)


def test_steps_per_execution_and_jit_compile_work_together():
    model = make_mixed_model()
    model.compile(optimizer="adam", steps_per_execution=4, jit_compile=True)
    history = model.fit(mixed_dataset(), epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))


# ---------------------------------------------------------------------------------------- bad input
def test_missing_task_in_batch_names_it():
    model = make_mixed_model()
    model.compile(optimizer="adam")
    x, labels = mixed_task_data(num_samples=32)
    del labels["kind"]
    with pytest.raises(ValueError, match=r"no labels for task\(s\) \['kind'\]"):
        model.fit(x, labels, verbose=0)


def test_unknown_task_in_batch_names_it():
    model = make_mixed_model()
    model.compile(optimizer="adam")
    x, labels = mixed_task_data(num_samples=32)
    labels["colour"] = labels["value"]
    with pytest.raises(ValueError, match="unknown task.*colour"):
        model.fit(x, labels, verbose=0)


@pytest.mark.parametrize(
    "task, bad_labels, message",
    [
        (
            "flags",
            np.zeros((32, 4), "float32"),
            r"Task 'flags' \(Binary with 3 outputs\) expects labels of shape \(batch, 3\)",
        ),
        (
            "value",
            np.zeros((32, 2), "float32"),
            r"Task 'value' \(Regression with 1 output\) expects labels of shape \(batch,\) or \(batch, 1\)",
        ),
        (
            "kind",
            np.zeros((32, 3), "float32"),
            r"Task 'kind' \(Multiclass with 4 classes\) expects integer class indices",
        ),
        ("value", np.array(["a"] * 32), r"Task 'value'.*numeric labels"),
    ],
)
def test_label_shape_and_dtype_errors_name_the_task(task, bad_labels, message):
    model = make_mixed_model()
    model.compile(optimizer="adam")
    x, labels = mixed_task_data(num_samples=32)
    labels[task] = bad_labels
    with pytest.raises(ValueError, match=message):
        model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(16), verbose=0)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "task, corrupt, message",
    [
        (
            "kind",
            lambda y: np.where(np.arange(len(y)) == 5, 7, y).astype("int32"),
            r"Task 'kind'.*class indices in \[0, 4\)",
        ),
        ("flags", lambda y: y * 2.0, r"Task 'flags'.*values in \[0, 1\]"),
        ("value", lambda y: np.where(np.arange(len(y)) == 0, np.inf, y).astype("float32"), r"Task 'value'.*finite"),
    ],
)
def test_label_values_that_do_not_fit_stop_training_without_an_update(task, corrupt, message, jit_compile):
    model = make_mixed_model()
    model.compile(optimizer="adam", jit_compile=jit_compile)
    x, labels = mixed_task_data(num_samples=64)
    model.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    before = [w.numpy().copy() for w in model.trainable_weights]
    labels[task] = corrupt(labels[task])
    with pytest.raises(ValueError, match=message):
        model.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    for old, new in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    with pytest.raises(ValueError, match=message):
        model.evaluate(x, labels, batch_size=64, verbose=0)


def test_trunk_must_return_rank_two_representation():
    trunk = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3)])
    model = kb.MultiTaskModel(trunk, {"value": kb.tasks.Regression()})
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="rank-2 representation.*Flatten or pooling"):
        model.fit(np.zeros((8, 4, 4, 3), "float32"), {"value": np.zeros(8, "float32")}, verbose=0)


def test_compile_rejects_unknown_arguments_and_losses():
    model = make_mixed_model()
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['optimiser'\]"):
        model.compile(optimiser="adam")
    with pytest.raises(ValueError, match="derives each task's loss"):
        model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="names task 'age'"):
        model.compile(optimizer="adam", metrics={"age": ["mae"]})
    with pytest.raises(TypeError, match="must be a method from kb.aggregators"):
        model.compile(optimizer="adam", aggregator="adam")


def test_bad_task_definitions():
    trunk = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="non-empty dict"):
        kb.MultiTaskModel(trunk, {})
    with pytest.raises(TypeError, match="Task 'x' must be"):
        kb.MultiTaskModel(trunk, {"x": "regression"})
    with pytest.raises(ValueError, match="at least 2 classes"):
        kb.tasks.Multiclass(1)
    with pytest.raises(ValueError, match="units must be a whole number >= 1"):
        kb.tasks.Binary(0)
    with pytest.raises(ValueError, match="prior_variance must be a finite number > 0"):
        kb.BayesAgg(prior_variance=0.0)
    with pytest.raises(ValueError, match=r"regression_power must be a finite number > 0 and <= 1"):
        kb.BayesAgg(regression_power=2.0)


def test_keras_round_trip_of_a_mixed_bayesagg_model(tmp_path):
    model = make_mixed_model()
    aggregator = kb.BayesAgg(warmup_epochs=1, num_samples=32, seed=1)
    model.compile(optimizer="adam", aggregator=aggregator, metrics={"kind": ["accuracy"]})
    model.fit(mixed_dataset(), epochs=2, verbose=0)
    assert not any("buffer" in v.path for v in aggregator.weights)  # staging area, not state
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    x, _ = mixed_task_data(num_samples=16)
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(restored.predict(x, verbose=0)[key], value, rtol=1e-6)
    for saved, loaded in zip(aggregator.weights, restored.aggregator.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    history = restored.fit(mixed_dataset(), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and int(restored.aggregator.completed_epochs.numpy()) == 3


def test_weight_checkpoints_written_by_callbacks_carry_the_refreshed_prior(tmp_path):
    path = str(tmp_path / "ckpt.weights.h5")
    model = make_mixed_model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=1, num_samples=16, seed=0))
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    model.fit(mixed_dataset(), epochs=2, verbose=0, callbacks=[checkpoint])
    fresh = make_mixed_model(seed=5)
    fresh.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=1, num_samples=16, seed=0))
    fresh.build((None, 12))
    fresh.load_weights(path)
    for saved, loaded in zip(model.aggregator.weights, fresh.aggregator.weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    x, _ = mixed_task_data(num_samples=8)
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(fresh.predict(x, verbose=0)[key], value, rtol=1e-6)


class _CountingAggregator(kb.aggregators.LinearScalarization):
    """Linear scalarization that counts its hook calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = {"begin_epoch": 0, "end_batch": 0, "end_epoch": 0}

    def begin_epoch(self):
        self.calls["begin_epoch"] += 1

    def end_batch(self):
        self.calls["end_batch"] += 1

    def end_epoch(self, head_weights):
        self.calls["end_epoch"] += 1


def test_fit_with_validation_data_runs_the_same_callbacks_every_epoch():
    model = make_mixed_model()
    aggregator = _CountingAggregator()
    model.compile(optimizer="adam", aggregator=aggregator)
    guards = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            guards.append(dict(aggregator.calls))

    model.fit(
        mixed_dataset(num_samples=256),
        validation_data=mixed_dataset(num_samples=128),
        epochs=5,
        verbose=0,
        callbacks=[Watch()],
    )
    # 4 batches an epoch: each hook runs once per epoch (per batch) however many validations came before.
    assert [g["end_epoch"] for g in guards] == [1, 2, 3, 4, 5]
    assert [g["begin_epoch"] for g in guards] == [1, 2, 3, 4, 5]
    assert [g["end_batch"] for g in guards] == [4, 8, 12, 16, 20]


def test_models_saved_by_version_0_1_0_still_load():
    data = np.load(DATA / "v0_1_0_predictions.npz")
    for label in ("bayesagg", "linear"):
        model = keras.models.load_model(DATA / f"v0_1_0_{label}.keras")
        predictions = model.predict(data["x"], verbose=0)
        for task, values in predictions.items():
            np.testing.assert_allclose(values, data[f"{label}/{task}"], rtol=1e-5, atol=1e-6, err_msg=f"{label}/{task}")
        assert isinstance(model.aggregator, kb.BayesAgg if label == "bayesagg" else kb.aggregators.LinearScalarization)
    model.fit(tf.data.Dataset.from_tensor_slices(mixed_task_data(num_samples=128)).batch(64), epochs=1, verbose=0)


def test_head_weights_move_between_models_with_and_without_overrides(tmp_path):
    x, y = mixed_task_data(num_samples=128)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    linear = make_mixed_model()
    linear.compile(optimizer="adam")
    linear.fit(dataset, epochs=1, verbose=0)
    path = str(tmp_path / "linear.weights.h5")
    linear.save_weights(path)
    bayes = make_mixed_model(seed=1)
    bayes.compile(optimizer="adam", aggregator=kb.BayesAgg(num_samples=8))
    bayes.build((None, 12))
    assert bayes.heads["value"].has_override
    bayes.load_weights(path, skip_mismatch=True)  # the aggregators differ; the heads load
    np.testing.assert_allclose(
        bayes.predict(x[:8], verbose=0)["value"], linear.predict(x[:8], verbose=0)["value"], rtol=1e-5
    )
