"""One global batch across tf.distribute replicas: every aggregator decides on the rows of all replicas.

Under a strategy with R > 1 replicas (MirroredStrategy, MultiWorkerMirroredStrategy), each replica
holds b_r rows of a global batch of B = Σ b_r rows. `gather` turns a replica's `AggregatorInputs`
into the global batch's, the same on every replica:

- h, the labels and the weights `present` (presence × sample weights) are all-gathered (in replica order, which is the order of the
  rows in the global batch), and the per-sample task gradients rebuilt from them (or gathered too);
- the per-unit losses take the value of the global mean over present labels, while their gradient
  stays this replica's own, weighted by its share of the unit's total weight so that the
  optimizer's sum over replicas (times 1/R) is the global mean's gradient;
- per-unit parameter gradients are all-reduced to the global mean.

The aggregator then runs on identical inputs on every replica (same seeds, same state), so its
decision and its state writes are identical everywhere. `local_part` hands each replica the rows of
a representation gradient that are its own. On one replica both are the identity.

An aggregator with `computes_own_rows` (BayesAgg) also gets `inputs.rows`, this replica's place in the
global batch: it computes its per-row work (gradient moments, the per-row aggregation) for these rows
only and returns their gradient, which `local_part` then only rescales.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from typing import Callable, Mapping

import tensorflow as tf

from keras_bayesagg.aggregators import base
from keras_bayesagg.aggregators.base import ReplicaRows

TaskGradients = Callable[[tf.Tensor, Mapping[str, tf.Tensor], tf.Tensor], tf.Tensor]


COLLECTIVE_INSTANCES_PER_STRATEGY = 1_000_000
_instance_bases = itertools.count(1)
_isolated_strategies: "weakref.WeakSet[tf.distribute.Strategy]" = weakref.WeakSet()


def isolate_collective_keys(strategy: tf.distribute.Strategy) -> None:
    """Give a MirroredStrategy collective instance keys no other strategy of this process uses.

    The gather below is a collective op with a data-dependent shape (an uneven last batch). Every new
    MirroredStrategy numbers its collective instances from the same start, and the runtime keeps what an
    earlier strategy's op of the same key had: a second strategy in one process (a notebook, a sweep) then
    fails with "Shape mismatch in the collective instance ..." for every model. Plain Keras does not gather.
    TensorFlow offers no public setting; the counters live in the strategy's `CollectiveKeys`, and are moved
    here to a range of their own while no key has been handed out (a no-op otherwise, or on other strategies).
    """
    keys = getattr(getattr(strategy.extended, "_collective_ops", None), "_collective_keys", None)
    table = getattr(keys, "_instance_key_table", None)
    if not isinstance(table, dict) or strategy in _isolated_strategies:
        return
    _isolated_strategies.add(strategy)
    base = COLLECTIVE_INSTANCES_PER_STRATEGY * next(_instance_bases)
    with keys._lock:
        for counters in table.values():
            for device, counter in counters.items():
                if isinstance(counter, int) and counter < COLLECTIVE_INSTANCES_PER_STRATEGY:
                    counters[device] = counter + base


@tf.autograph.experimental.do_not_convert
def multi_replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context of a step with more than one replica in sync, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


@tf.autograph.experimental.do_not_convert
def gather(
    inputs: base.AggregatorInputs, task_gradients_of: TaskGradients | None = None, hand_rows: bool = False
) -> tuple[base.AggregatorInputs, ReplicaRows | None]:
    """The global batch's aggregator inputs (identical on every replica), and this replica's rows.

    `task_gradients_of(representation, labels, present)` rebuilds the per-sample task gradients
    [B, K, D] from the gathered rows (for linear heads that is cheap), so only h and the labels cross
    devices: B·(D + label columns) values per step instead of B·(D + label columns + K·D).
    `hand_rows` (the aggregator's `computes_own_rows`): the inputs also carry this replica's rows (`rows`).
    """
    context = multi_replica_context()
    if context is None:
        return inputs, None
    replicas = context.num_replicas_in_sync
    local_rows = tf.shape(inputs.representation)[0]
    sizes = context.all_gather(tf.reshape(local_rows, [1]), axis=0)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(tf.where(tf.range(replicas) < replica, sizes, tf.zeros_like(sizes)))
    rows = ReplicaRows(offset=offset, size=local_rows, replicas=replicas)

    present = inputs.presence()
    counts = tf.reduce_sum(present, axis=0)  # the weight (present labels × sample weights) behind each unit's mean
    total_counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)
    share = counts / tf.where(total_counts > 0.0, total_counts, tf.ones_like(total_counts))
    global_losses = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(inputs.losses) * share)
    # Value: the global mean. Gradient: R·share·∇(own mean), which the optimizer sums over replicas with 1/R.
    weighted = inputs.losses * (replicas * share)
    losses = weighted + tf.stop_gradient(global_losses - weighted)

    def all_rows(tensor: tf.Tensor | None) -> tf.Tensor | None:
        if tensor is None:
            return None
        gathered = context.all_gather(tf.stop_gradient(tensor), axis=0)
        gathered.set_shape([None] + tensor.shape.as_list()[1:])  # the gather keeps the other dimensions
        return gathered

    parameter_gradients = inputs.parameter_gradients
    if parameter_gradients is not None:
        parameter_gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, parameter_gradients * share[:, None])
    global_inputs = dataclasses.replace(
        inputs,
        losses=losses,
        representation=all_rows(inputs.representation),
        task_gradients=None,
        labels={name: all_rows(labels) for name, labels in inputs.labels.items()},
        parameter_gradients=parameter_gradients,
        present=all_rows(present),
        rows=rows if hand_rows else None,
    )
    if inputs.task_gradients is not None:
        task_gradients = (
            all_rows(inputs.task_gradients)
            if task_gradients_of is None
            else tf.stop_gradient(
                task_gradients_of(global_inputs.representation, global_inputs.labels, global_inputs.present)
            )
        )
        global_inputs = dataclasses.replace(global_inputs, task_gradients=task_gradients)
    return global_inputs, rows


@tf.autograph.experimental.do_not_convert
def local_part(
    aggregation: base.Aggregation, rows: ReplicaRows | None, computed_for_own_rows: bool = False
) -> base.Aggregation:
    """The aggregation as this replica applies it: its own rows of a representation gradient.

    The engine scales every replica's gradients by 1/R before the optimizer sums them; the rows of
    the replicas partition the global batch, so their share is multiplied back by R.
    `computed_for_own_rows` (the aggregator's `computes_own_rows`): the gradient already holds only them.
    """
    if rows is None or not isinstance(aggregation, base.RepresentationAggregation):
        return aggregation
    own = aggregation.representation_gradient
    if not computed_for_own_rows:
        own = rows.select(own)
    return dataclasses.replace(aggregation, representation_gradient=own * rows.replicas)


def logs_for_reduction(strategy: tf.distribute.Strategy, logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A step's logs in the shape Keras can reduce across workers.

    On several workers, Keras reduces each log with `strategy.reduce("MEAN", value, axis=0)`, which
    fails for the scalars every step returns; a leading axis of one makes it the plain mean.
    """
    extended = strategy.extended
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and extended._in_multi_worker_mode()):
        return logs
    return {name: tf.reshape(value, [1]) if value.shape.rank == 0 else value for name, value in logs.items()}
