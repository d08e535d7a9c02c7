"""BayesAgg computing one replica's rows only (`computes_own_rows`, `inputs.rows`): the gradient of a part of
the global batch equals those rows of the whole batch's gradient, and the parts' task-weight sums add up to the
whole batch's weights, for every moment kind (regression at both ranks, binary and 2-class exact, Monte Carlo,
Kronecker). Without a strategy `sum_over_replicas` is the identity, so each part's weights are its own share.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators.base import AggregatorInputs, ReplicaRows, TaskLayout

DIM = 12
TASKS = {
    "value": kb.tasks.Regression(2),
    "flags": kb.tasks.Binary(3),
    "kind": kb.tasks.Multiclass(4),
    "side": kb.tasks.Multiclass(2),
}


def global_inputs(batch: int, tasks: dict = TASKS, seed: int = 0) -> AggregatorInputs:
    """A global batch with missing labels and weights 0, 0.5, 1, 2 (through `present`)."""
    rng = np.random.default_rng(seed)
    units = TaskLayout(dict(tasks), DIM).num_units
    present = rng.choice(np.array([0.0, 0.5, 1.0, 2.0], "float32"), size=(batch, units), p=[0.2, 0.2, 0.4, 0.2])
    labels = {
        "value": rng.normal(size=(batch, 2)).astype("float32"),
        "flags": (rng.random((batch, 3)) > 0.5).astype("float32"),
        "kind": np.eye(4, dtype="float32")[rng.integers(0, 4, batch)],
        "side": np.eye(2, dtype="float32")[rng.integers(0, 2, batch)],
    }
    labels = {name: labels[name] for name in tasks}
    heads = {name: (0.3 * rng.normal(size=(task.units, DIM + 1))).astype("float32") for name, task in tasks.items()}
    return AggregatorInputs(
        losses=tf.constant(rng.random(units), tf.float32),
        representation=tf.constant(rng.normal(size=(batch, DIM)), tf.float32),
        task_gradients=tf.constant(rng.normal(size=(batch, units, DIM)), tf.float32),
        labels={name: tf.constant(value) for name, value in labels.items()},
        head_weights={name: tf.constant(value) for name, value in heads.items()},
        present=tf.constant(present),
    )


def built(moments: str, multiclass_posterior: str, warm: bool, tasks: dict = TASKS) -> kb.BayesAgg:
    aggregator = kb.BayesAgg(
        moments=moments, multiclass_posterior=multiclass_posterior, num_samples=32, seed=5, warmup_epochs=1
    )
    aggregator.build_for(TaskLayout(dict(tasks), DIM))
    aggregator.completed_epochs.assign(1 if warm else 0)
    return aggregator


# B = 8 < D: the rank-B update of the regression prior; B = 20 ≥ D: the D×D factorization.
@pytest.mark.parametrize(
    "batch, moments, multiclass_posterior, warm",
    [
        (8, "exact", "full", True),
        (20, "exact", "full", True),
        (8, "monte_carlo", "kronecker", True),
        (20, "monte_carlo", "full", True),
        (20, "exact", "full", False),
    ],
)
def test_parts_of_the_global_batch_give_its_rows_and_add_up_to_its_task_weights(
    batch, moments, multiclass_posterior, warm
):
    assert kb.BayesAgg.computes_own_rows
    aggregator = built(moments, multiclass_posterior, warm)
    inputs = global_inputs(batch)

    @tf.function  # graph mode, as in a train step (the rows' offset and size are tensors)
    def aggregate(offset: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        rows = ReplicaRows(offset=offset, size=size, replicas=2)
        result = aggregator.aggregate(dataclasses.replace(inputs, rows=rows))
        return result.representation_gradient, result.task_weights, tf.stack([fault.failed for fault in result.faults])

    whole = aggregator.aggregate(inputs)
    first = batch // 2 + 1  # an uneven split
    parts = [aggregate(tf.constant(0), tf.constant(first)), aggregate(tf.constant(first), tf.constant(batch - first))]
    gradient = whole.representation_gradient.numpy()
    np.testing.assert_allclose(parts[0][0].numpy(), gradient[:first], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(parts[1][0].numpy(), gradient[first:], rtol=2e-5, atol=1e-7)
    if warm:
        np.testing.assert_allclose(parts[0][1] + parts[1][1], whole.task_weights, rtol=2e-5, atol=1e-7)
        assert not np.allclose(whole.task_weights, 1.0)
    else:  # warm-up: linear scalarization, equal weights everywhere
        for part in parts:
            np.testing.assert_array_equal(part[1], np.ones(7, "float32"))
    for part in parts:
        np.testing.assert_array_equal(part[2], [fault.failed for fault in whole.faults])


def test_compiled_bayesian_part_takes_the_rows_too():
    """`compile_bayesian_part` (one XLA cluster) with a dynamic offset and size (a small layout: compiling is slow)."""
    tasks = {"value": TASKS["value"], "flags": TASKS["flags"]}
    aggregator = built("exact", "full", True, tasks)
    aggregator.compile_bayesian_part = True
    inputs = global_inputs(20, tasks)

    @tf.function  # the cluster is compiled in graph mode only (XLA's normal draws differ from the CPU kernel's)
    def aggregate(offset: tf.Tensor | None = None, size: tf.Tensor | None = None) -> tf.Tensor:
        rows = None if offset is None else ReplicaRows(offset=offset, size=size, replicas=2)
        return aggregator.aggregate(dataclasses.replace(inputs, rows=rows)).representation_gradient

    whole = aggregate().numpy()
    part = aggregate(tf.constant(7), tf.constant(13)).numpy()
    np.testing.assert_allclose(part, whole[7:], rtol=1e-4, atol=1e-7)
