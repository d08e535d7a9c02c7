"""One model, one state (issue 16): what Keras validates, restores, checkpoints, copies and recompiles is the
model BayesAgg trained. Two trained models are shared by the module's tests."""

from __future__ import annotations

import pathlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg import model_state
from tests.conftest import make_mixed_model, mixed_task_data

DATA = pathlib.Path(__file__).parent / "data"


def _outputs(model: kb.MultiTaskModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """predict and predict_with_uncertainty in one flat dict."""
    out = {f"predict/{key}": value for key, value in model.predict(x, verbose=0).items()}
    return {**out, **model.predict_with_uncertainty(x)}


def _assert_same(got: dict, expected: dict, rtol: float = 1e-6) -> None:
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def data():
    x, labels = mixed_task_data(num_samples=256)
    validation = mixed_task_data(num_samples=128, seed=1)
    return x, labels, validation


@pytest.fixture(scope="module")
def restored_best(data, tmp_path_factory):
    """BayesAgg (fixed γ) with EarlyStopping(restore_best_weights) and ModelCheckpoint(save_best_only) on the
    same monitor; on this data the best epoch is an early one (past the first refresh), not the last."""
    x, labels, validation = data
    path = str(tmp_path_factory.mktemp("best") / "best.keras")
    monitor = dict(monitor="val_value_loss", mode="min")
    callbacks = [
        keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True, **monitor),
        keras.callbacks.ModelCheckpoint(path, save_best_only=True, **monitor),
    ]
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(0.02), aggregator=kb.BayesAgg(num_samples=16, seed=3))
    history = model.fit(x, labels, batch_size=64, epochs=4, validation_data=validation, callbacks=callbacks, verbose=0)
    return model, history.history, path


def test_early_stopping_and_the_best_checkpoint_predict_and_serve_identically(restored_best, data):
    model, history, path = restored_best
    best = int(np.argmin(history["val_value_loss"]))
    assert best < len(history["val_value_loss"]) - 1
    _assert_same(_outputs(model, data[0][:40]), _outputs(keras.models.load_model(path), data[0][:40]))
    # The restored model is the one the logged val_* of its epoch describe.
    logs = model.evaluate(*data[2], batch_size=64, verbose=0, return_dict=True)
    for key in ("loss", "value_loss", "kind_loss"):
        np.testing.assert_allclose(logs[key], history[f"val_{key}"][best], rtol=1e-5, err_msg=key)


def test_last_logged_validation_equals_evaluate_after_fit_with_the_evidence_prior(data):
    x, labels, validation = data
    model = make_mixed_model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(prior_variance="auto", num_samples=16, seed=1))
    history = model.fit(x, labels, batch_size=64, epochs=2, validation_data=validation, verbose=0).history
    logs = model.evaluate(*validation, batch_size=64, verbose=0, return_dict=True)
    for key in ("loss", "value_loss", "flags_loss", "kind_loss"):
        np.testing.assert_allclose(logs[key], history[f"val_{key}"][-1], rtol=1e-5, err_msg=key)
    assert model.aggregator.completed_epochs.numpy() == 2  # one refresh per epoch, not two


def test_the_weight_list_does_not_depend_on_the_aggregator_and_copies_everything(restored_best, data):
    model, _, _ = restored_best
    copy = kb.MultiTaskModel.from_config(model.get_config())
    copy.build((None, 12))  # not compiled at all
    linear = make_mixed_model(seed=5)
    linear.compile(optimizer="adam")
    linear.build((None, 12))
    assert len(copy.weights) == len(linear.weights) == len(model.weights)
    copy.set_weights(model.get_weights())
    _assert_same(_outputs(copy, data[0][:40]), _outputs(model, data[0][:40]))


def test_tf_checkpoint_and_weights_files_carry_predictions_and_uncertainty(restored_best, data, tmp_path):
    model, _, _ = restored_best
    expected = _outputs(model, data[0][:40])
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = make_mixed_model(seed=9)
    fresh.build((None, 12))
    tf.train.Checkpoint(model=fresh).read(prefix).assert_existing_objects_matched()
    _assert_same(_outputs(fresh, data[0][:40]), expected)
    model.save_weights(str(tmp_path / "m.weights.h5"))
    other = make_mixed_model(seed=8)
    other.build((None, 12))
    other.load_weights(str(tmp_path / "m.weights.h5"))
    _assert_same(_outputs(other, data[0][:40]), expected)


def test_recompiling_keeps_todays_predictions_then_trains_every_head_and_bayesagg_resumes(restored_best, data):
    x, labels, _ = data
    model = keras.models.load_model(restored_best[2])  # after load_model, as a user fine-tunes
    head = model.heads["value"]
    assert float(head.override_active.numpy()) == 1.0
    before = model.predict(x[:40], verbose=0)
    model.compile(optimizer="adam", aggregator=kb.aggregators.LinearScalarization())
    _assert_same(model.predict(x[:40], verbose=0), before)
    assert float(head.override_active.numpy()) == 0.0
    with pytest.raises(ValueError, match="LinearScalarization keeps no posterior"):
        model.predict_with_uncertainty(x[:4])  # BayesAgg's posterior no longer describes the heads
    kernel = head.kernel.numpy().copy()
    model.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    assert np.abs(head.kernel.numpy() - kernel).max() > 1e-4  # the regression head trains
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(num_samples=8, warmup_epochs=1, seed=2))
    model.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    assert float(head.override_active.numpy()) == 1.0  # its rule again, after its own warm-up
    assert np.all(np.isfinite(model.predict_with_uncertainty(x[:4])["value/variance"]))


def test_train_on_batch_loops_get_the_epoch_hooks_and_one_warning(data, monkeypatch):
    monkeypatch.setattr(model_state, "STEPS_WITHOUT_EPOCH_END_WARNING", 3)
    x, labels, _ = data
    model = make_mixed_model()
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(num_samples=8, seed=0))
    batch = (x[:64], {name: value[:64] for name, value in labels.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            model.train_on_batch(*batch)
    assert sum("without an epoch end" in str(w.message) for w in caught) == 1
    model.begin_epoch()
    model.train_on_batch(*batch)
    model.end_epoch()
    assert model.aggregator.completed_epochs.numpy() == 1
    assert float(model.heads["value"].override_active.numpy()) == 1.0


def test_files_of_version_0_2_0_load_predict_and_serve_the_same():
    expected = np.load(DATA / "v0_2_0_outputs.npz")
    for label in ("bayesagg", "linear"):
        model = keras.models.load_model(DATA / f"v0_2_0_{label}.keras")
        for task, values in model.predict(expected["x"], verbose=0).items():
            np.testing.assert_allclose(values, expected[f"{label}/{task}"], rtol=1e-6, atol=1e-7)
    for key, values in model_bayes_uncertainty(expected["x"]).items():
        np.testing.assert_allclose(values, expected[f"bayesagg/uncertainty/{key}"], rtol=1e-6, atol=1e-7)


def model_bayes_uncertainty(x: np.ndarray) -> dict[str, np.ndarray]:
    return keras.models.load_model(DATA / "v0_2_0_bayesagg.keras").predict_with_uncertainty(x)


def test_heads_over_the_state_limit_serve_no_uncertainty_and_say_how_to_get_it():
    x, labels = mixed_task_data(num_samples=64)
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16)])
    tasks = {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(4)}
    # kind: dense (4·17)² floats = 0.018 MB, factored 4² + 17² + 4·17 floats = 0.0015 MB; value: 16² floats
    model = kb.MultiTaskModel(trunk, tasks, uncertainty_state_mb=0.0012)
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(num_samples=8, seed=0))
    model.fit(x, {"value": labels["value"], "kind": labels["kind"]}, batch_size=64, epochs=2, verbose=0)
    assert model.heads["kind"].served is None and model.heads["value"].served is not None
    with pytest.raises(ValueError, match=r"head 'kind' keeps no served state.*0.00149 MB.*uncertainty_state_mb=1\)"):
        model.predict_with_uncertainty(x)


def test_no_compilation_or_retracing_after_the_first_step_of_a_graph_mode_run():
    """Issue 16, item 8: the end of warm-up stalled for seconds, compiling BayesAgg's factorizations at the
    first refresh and again at the first BayesAgg step. TensorFlow logs each XLA compilation (C++ INFO log);
    a fresh process fits through two warm-up epochs and two BayesAgg epochs, and marks its steps on stderr."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).parent.parent
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=1"}
    environment["PYTHONPATH"] = os.pathsep.join([str(root), environment.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "tests.scripts.compile_log_script"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "MARK" in line or "Compilation of XLA executable" in line]
    first_step = lines.index("MARK step 0")
    assert any("Compilation of XLA executable" in line for line in lines[:first_step])  # the log is on
    assert "MARK epoch 3 completed=4" in lines  # two warm-up epochs, two BayesAgg epochs, four refreshes
    late = [line for line in lines[first_step:] if "Compilation of XLA executable" in line]
    assert late == [], f"XLA compilations after the first step: {late}"
    assert "MARK traces 1" in lines
