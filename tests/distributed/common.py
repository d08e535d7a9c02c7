"""The training run the distributed tests repeat on one device, on MirroredStrategy and on workers."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

import keras_bayesagg as kb
from tests.conftest import MIXED_TASKS, mixed_task_data

GLOBAL_BATCH = 64
NUM_SAMPLES = 249  # the last global batch (57 rows) splits unevenly over two replicas


def bayesagg() -> kb.BayesAgg:
    """Monte Carlo on (the multiclass head and, with moments="monte_carlo", the binary set), one warm-up epoch."""
    return kb.BayesAgg(moments="monte_carlo", num_samples=64, seed=3, warmup_epochs=1)


def dataset(num_samples: int = NUM_SAMPLES, missing: bool = False, weighted: bool = False) -> tf.data.Dataset:
    """The mixed-task rows in global batches; `missing`: about a third of the labels marked missing;
    `weighted`: (x, y, sample_weight) with weights 0, 0.5, 1, 2 per row and, for the binary set, per output."""
    x, y = mixed_task_data(num_samples=num_samples)
    if missing:
        rng = np.random.default_rng(7)
        y["value"] = np.where(rng.random(num_samples) < 0.3, np.nan, y["value"]).astype("float32")
        y["flags"] = np.where(rng.random(y["flags"].shape) < 0.3, np.nan, y["flags"]).astype("float32")
        y["kind"] = np.where(rng.random(num_samples) < 0.3, -1, y["kind"]).astype("int32")
    parts = (x, y)
    if weighted:
        rng = np.random.default_rng(11)
        choices = np.array([0.0, 0.5, 1.0, 2.0], "float32")
        rows = choices[rng.integers(0, 4, num_samples)]
        parts = (x, y, {"value": rows, "kind": rows, "flags": choices[rng.integers(0, 4, y["flags"].shape)]})
    data = tf.data.Dataset.from_tensor_slices(parts).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    # Worker w gets the w-th slice of every global batch (the order one device sees the rows in).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def probe_inputs() -> np.ndarray:
    return mixed_task_data(num_samples=16, seed=1)[0]


def trained(
    strategy: tf.distribute.Strategy,
    make_aggregator: Callable[[], Any],
    epochs: int = 2,
    steps_per_execution: int = 1,
    callbacks: list | None = None,
    missing: bool = False,
    weighted: bool = False,
) -> kb.MultiTaskModel:
    with strategy.scope():
        keras.utils.set_random_seed(0)
        trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="elu")])
        model = kb.MultiTaskModel(trunk, {name: make() for name, make in MIXED_TASKS.items()})
        model.compile(
            optimizer=keras.optimizers.SGD(0.05), aggregator=make_aggregator(), steps_per_execution=steps_per_execution
        )
    model.fit(dataset(missing=missing, weighted=weighted), epochs=epochs, verbose=0, callbacks=callbacks)
    return model


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(variable.numpy()) for variable in model.weights]


def worst_relative_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """max |a - b| / (|a| + 1e-3) over all weights (relative, with a floor for weights near zero)."""
    assert len(first) == len(second)
    return max(float(np.max(np.abs(a - b) / (np.abs(a) + 1e-3))) for a, b in zip(first, second))
