"""The Keras contract a new user relies on (issue 17, "the rest of the contract"): the interface apart from the
methods, metrics on every label form, clear errors for string labels and colliding task names, honest memory
figures, real output shapes in `summary()`, and a quiet export."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.interface import Aggregator, AggregatorInputs, TaskLayout
from tests.conftest import make_mixed_model, mixed_task_data

SPARSE_METRICS = ["sparse_categorical_accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")]
DENSE_METRICS = ["categorical_accuracy", keras.metrics.TopKCategoricalAccuracy(k=2, name="dense_top2")]


@pytest.fixture(scope="module")
def trained():
    """One small mixed model trained for one epoch with integer class labels and sparse and dense metrics."""
    x, labels = mixed_task_data(num_samples=96)
    model = make_mixed_model()
    model.compile(optimizer="adam", metrics={"kind": SPARSE_METRICS + DENSE_METRICS, "flags": ["accuracy"]})
    history = model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
    return model, x, labels, history


def test_kb_aggregators_exports_methods_only_and_the_interface_has_its_own_module():
    for name in kb.aggregators.__all__:
        cls = getattr(kb.aggregators, name)
        assert inspect.isclass(cls) and issubclass(cls, Aggregator) and cls is not Aggregator, name
    for name in ("Aggregator", "AggregatorInputs", "TaskLayout", "TaskUnit", "ObjectiveAggregation"):
        assert not hasattr(kb.aggregators, name), name
        assert getattr(kb.interface, name) is getattr(kb.aggregators.base, name)
    assert {"peek_seed", "peek_seeds", "Aggregation", "RepresentationAggregation"} <= set(kb.interface.__all__)
    assert AggregatorInputs is kb.aggregators.base.AggregatorInputs and TaskLayout is kb.aggregators.base.TaskLayout


def test_the_bare_interface_is_refused_at_compile_with_a_message_that_says_what_to_use():
    model = make_mixed_model()
    with pytest.raises(TypeError, match=r"Aggregator does not implement aggregate.*kb\.aggregators"):
        model.compile(optimizer="adam", aggregator=Aggregator())
    with pytest.raises(NotImplementedError, match="is the interface, not a method"):
        Aggregator().aggregate(None)


def test_the_paper_scripts_offer_methods_only():
    paper = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "paper")
    if paper not in sys.path:
        sys.path.insert(0, paper)
    paper_common = importlib.import_module("paper_common")
    with pytest.raises(SystemExit, match="choose one of") as raised:
        paper_common.make_aggregator("ObjectiveAggregation", None, 0)
    assert "ObjectiveAggregation" not in str(raised.value).split("choose one of")[1]
    assert "Aggregator'" not in str(raised.value)


def test_sparse_and_dense_metrics_of_a_multiclass_head_take_integer_and_one_hot_labels(trained):
    model, x, labels, history = trained
    assert {"kind_sparse_categorical_accuracy", "kind_top2", "kind_categorical_accuracy"} <= set(history.history)
    probabilities = model.predict(x, verbose=0)["kind"]
    expected = {
        "kind_sparse_categorical_accuracy": np.mean(np.argmax(probabilities, axis=1) == labels["kind"]),
        "kind_top2": np.mean(np.any(np.argsort(probabilities, axis=1)[:, -2:] == labels["kind"][:, None], axis=1)),
    }
    expected["kind_categorical_accuracy"] = expected["kind_sparse_categorical_accuracy"]
    expected["kind_dense_top2"] = expected["kind_top2"]
    for labels_given in (labels, {**labels, "kind": np.eye(4, dtype="float32")[labels["kind"]]}):  # integers, one-hot
        results = model.evaluate(x, labels_given, batch_size=96, verbose=0, return_dict=True)
        for key, value in expected.items():
            assert results[key] == pytest.approx(value, abs=1e-6), key
    sparse = keras.metrics.SparseCategoricalCrossentropy()  # the Keras value on the user's integers: the task's loss
    sparse.update_state(labels["kind"], probabilities)
    assert float(sparse.result()) == pytest.approx(results["kind_loss"], rel=1e-4)


def test_string_labels_are_refused_naming_the_task(trained):
    model, x, labels, _ = trained
    words = np.array(["a", "b", "c", "d"])[labels["kind"]]
    for given in (words, list(words), tf.constant(words)):
        with pytest.raises(ValueError, match=r"task 'kind' are text"):
            model.fit(x, {**labels, "kind": given}, batch_size=32, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"task 'kind' are text"):
        model.evaluate(x, {**labels, "kind": words}, verbose=0)
    with pytest.raises(ValueError, match=r"validation labels of task 'kind' are text"):
        model.fit(x, labels, validation_data=(x, {**labels, "kind": words}), epochs=1, verbose=0)


@pytest.mark.parametrize(
    "names, key",
    [(["a", "val_a"], "val_a_loss"), (["x", "val_x_loss"], None), (["loss", "b"], "reserved")],
)
def test_task_names_whose_log_keys_collide_are_refused_at_construction(names, key):
    trunk = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    tasks = {name: kb.tasks.Regression() for name in names}
    if key is None:  # val_x_loss_loss and val_x_loss: no two values share a key
        kb.MultiTaskModel(trunk, tasks)
        return
    with pytest.raises(ValueError, match=key):
        kb.MultiTaskModel(trunk, tasks)


def test_metric_names_that_collide_with_a_task_loss_are_refused_at_compile():
    trunk = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model = kb.MultiTaskModel(trunk, {"a": kb.tasks.Regression(), "a_mae": kb.tasks.Regression()})
    model.compile(optimizer="adam", metrics={"a": ["mse"]})  # a_mse: no collision
    with pytest.raises(ValueError, match="'a_mae_loss'.*metric 'mae_loss' of task 'a'"):
        model.compile(optimizer="adam", metrics={"a": [keras.metrics.MeanAbsoluteError(name="mae_loss")]})


def test_summary_shows_every_heads_output_shape(trained):
    model = trained[0]
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    heads = {
        name: next(line for line in lines if f"{name} (LinearHead)" in line) for name in ("value", "flags", "kind")
    }
    for name, units in (("value", 1), ("flags", 3), ("kind", 4)):
        assert f"(None, {units})" in heads[name], heads[name]


def test_export_is_quiet_unless_asked(trained, tmp_path, capsys):
    model = trained[0]
    model.export(str(tmp_path / "quiet"))
    assert "Captures" not in capsys.readouterr().out
    model.export(str(tmp_path / "verbose"), verbose=True)
    assert "Captures" in capsys.readouterr().out


def test_the_memory_message_is_estimated_at_the_batch_fit_uses_with_a_figure_to_act_on():
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32)])
    model = kb.MultiTaskModel(trunk, {"species": kb.tasks.Multiclass(100)})
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(memory_limit_gb=2.0))
    model.build((None, 4))  # a one-sample step fits: no error before the batch is known
    x, y = np.zeros((64, 4), "float32"), {"species": np.zeros(64, "int32")}
    with pytest.raises(MemoryError) as raised:
        model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # 64 rows: the batch is 64
    message = str(raised.value)
    assert "at batch size 64" in message and "0.0 GiB" not in message
    fits = int(message.split("a batch of at most ")[1].split(" ")[0])
    assert 1 <= fits < 64
    model.aggregator.check_batch_size(fits)  # the advice holds, and is the largest such batch
    with pytest.raises(MemoryError, match=f"at batch size {fits + 1}"):
        model.aggregator.check_batch_size(fits + 1)
