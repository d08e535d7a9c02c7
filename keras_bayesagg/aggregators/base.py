"""The one small interface every aggregator implements.

An aggregator decides how the task gradients w.r.t. the shared representation h combine before
they reach the trunk. It sees tensors only (no Keras layers, no model). Each train step:

1. the engine computes, per task unit k, the loss L_k (mean over the batch, differentiable) and,
   if asked, the exact per-sample gradients G[i, k] = ∂ℓ_ik/∂h_i or the per-unit parameter
   gradients ∂L_k/∂θ;
2. `aggregate(inputs)` returns one of three kinds of `Aggregation`:
   `ObjectiveAggregation` (train the trunk on this objective), `RepresentationAggregation`
   (back-propagate this [B, D] gradient from h) or `ParameterAggregation` (use this flattened
   trunk gradient). Heads and the aggregator's own trainable variables always train on the
   objective;
3. the engine applies the update, and then `aggregation.commit()` (the aggregator's state writes),
   only if the step is sound; the aggregation's `faults` are part of that check.

Aggregators are Keras layers only to own Keras variables (saved in `.keras` files and weight
checkpoints, created before `fit` so XLA works); they are never called on data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence  # noqa: F401  (Any, Callable: importable from here as before)

import keras  # noqa: F401  (importable from here as before)
import tensorflow as tf

# The rest of the interface lives in two modules; every name stays importable from here.
from keras_bayesagg.aggregators.aggregator_interface import (
    SEED_STATE_PREFIX,
    Aggregator,
    bare_interface_message,
    implements_aggregate,
)
from keras_bayesagg.aggregators.decisions import (
    Aggregation,
    ObjectiveAggregation,
    ParameterAggregation,
    RepresentationAggregation,
    _no_commit,  # noqa: F401  (importable from here as before)
    peek_seed,
    peek_seeds,
)
from keras_bayesagg.engine.faults import Fault  # noqa: F401  (importable from here as before)
from keras_bayesagg.tasks import Task

__all__ = [
    "SEED_STATE_PREFIX",
    "Aggregation",
    "Aggregator",
    "AggregatorInputs",
    "ObjectiveAggregation",
    "ParameterAggregation",
    "ReplicaRows",
    "RepresentationAggregation",
    "TaskLayout",
    "TaskUnit",
    "bare_interface_message",
    "implements_aggregate",
    "labelled_samples",
    "peek_seed",
    "peek_seeds",
    "sum_of_losses_gradient",
]


@dataclasses.dataclass(frozen=True)
class TaskUnit:
    """One task in the aggregation sense: an output of a regression/binary head, or a multiclass head."""

    name: str  # e.g. "age", "attributes[3]"
    task: str  # key in the model's task dict
    kind: str  # "regression" | "binary" | "multiclass" (for display; code uses the Task classes)
    output: int | None  # output index in the head (None for a multiclass head)


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """The model's tasks as seen by an aggregator, in a fixed order."""

    tasks: dict[str, Task]
    representation_dim: int
    # P, the length of `AggregatorInputs.parameter_gradients` (trunk trainable parameters); 0 when unknown
    # (hand-made layouts). Methods that keep per-parameter state at level="parameters" size it with this.
    parameter_count: int = 0

    @property
    def units(self) -> tuple[TaskUnit, ...]:
        return tuple(
            TaskUnit(unit, name, task.kind, output)
            for name, task in self.tasks.items()
            for unit, output in task.unit_outputs(name)
        )

    @property
    def num_units(self) -> int:
        return sum(task.num_task_units for task in self.tasks.values())

    def unit_slice(self, task_name: str) -> slice:
        """The columns of `task_name` among the K task units."""
        start = 0
        for name, task in self.tasks.items():
            if name == task_name:
                return slice(start, start + task.num_task_units)
            start += task.num_task_units
        raise KeyError(task_name)

    def unit_columns(self, task_names: Sequence[str]) -> tuple[int, ...]:
        """The columns of these tasks' units among the K task units, in the order given."""
        return tuple(column for name in task_names for column in range(*self.unit_slice(name).indices(self.num_units)))

    def names_of(self, kind: type[Task]) -> list[str]:
        """Task names of one kind (a Task class), in layout order."""
        return [name for name, task in self.tasks.items() if isinstance(task, kind)]


@dataclasses.dataclass(frozen=True)
class ReplicaRows:
    """Where this replica's rows sit in the global batch under R > 1 tf.distribute replicas (rows of the
    replicas in replica order make the global batch; `engine/global_batch.py`)."""

    offset: tf.Tensor  # int32 scalar: rows of the replicas before this one
    size: tf.Tensor  # int32 scalar: this replica's rows
    replicas: int

    def select(self, tensor: tf.Tensor) -> tf.Tensor:
        """This replica's rows of a [B, ...] tensor of the global batch (static rank; XLA: a dynamic slice)."""
        rank = tensor.shape.rank
        rows = tf.slice(tensor, [self.offset] + [0] * (rank - 1), [self.size] + [-1] * (rank - 1))
        rows.set_shape([None] + tensor.shape.as_list()[1:])  # the slice keeps the other dimensions
        return rows

    def sum(self, value: tf.Tensor) -> tf.Tensor:
        """The sum of `value` over all replicas (an all-reduce; call it in the replica context, outside conds)."""
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


@dataclasses.dataclass(frozen=True)
class AggregatorInputs:
    """What one train step hands to `Aggregator.aggregate` (tensors only).

    losses: [K] loss per task unit, the mean over the unit's present labels (differentiable: computed
        under the tape).
    representation: h, [B, D] float32, without gradient (the trunk is reached through the result).
    task_gradients: [B, K, D] per-sample w_ik ∂ℓ_ik/∂h_i (weighted by `present`, not divided by B; zero
        where the label is missing), or None unless `needs_task_gradients`. ∂L_k/∂h_i is `loss_gradients()`.
    labels: per task name, canonical float32 labels ([B, units]; multiclass as probability rows),
        with a finite placeholder where the label is missing.
    head_weights: per task name, the head as W [units, D+1] (bias last), float32, no gradient.
    parameter_gradients: [K, P] ∂L_k/∂θ for the trunk's trainable variables, flattened in
        `trunk.trainable_variables` order, or None unless `needs_parameter_gradients`.
    present: [B, K] float32 weights w_ik >= 0: the presence of the label of (sample i, unit k) (0 where
        missing) times its sample and class weights, a repetition count (2: as if the row came twice).
        Not only 0/1: use `presence()`, `unit_counts()`, `loss_gradients()`. The engine always sets it;
        None, e.g. in hand-made inputs, means every label is present with weight 1.
    rows: under R > 1 replicas, for an aggregator with `computes_own_rows` only: this replica's rows of the
        global batch the other fields hold (`own_rows`, `sum_over_replicas`). None: all rows are this
        replica's (one replica, or an aggregator that decides on the whole global batch).
    """

    losses: tf.Tensor
    representation: tf.Tensor
    task_gradients: tf.Tensor | None
    labels: Mapping[str, tf.Tensor]
    head_weights: Mapping[str, tf.Tensor]
    parameter_gradients: tf.Tensor | None = None
    present: tf.Tensor | None = None
    rows: ReplicaRows | None = None

    @property
    def batch_size(self) -> tf.Tensor:
        return tf.shape(self.representation)[0]

    def presence(self) -> tf.Tensor:
        """The weights w [B, K] (`present`), or all ones when it is None."""
        if self.present is not None:
            return tf.cast(self.present, tf.float32)
        rows = self.batch_size if self.task_gradients is None else tf.shape(self.task_gradients)[0]
        return tf.ones([rows, tf.shape(self.losses)[0]], tf.float32)

    def own_rows(self, tensor: tf.Tensor) -> tf.Tensor:
        """This replica's rows of a [B, ...] tensor of these inputs (the tensor itself when `rows` is None)."""
        return tensor if self.rows is None else self.rows.select(tensor)

    def sum_over_replicas(self, value: tf.Tensor) -> tf.Tensor:
        """Σ over replicas of a per-replica `value` (e.g. sums over own rows); `value` itself when `rows` is None."""
        return value if self.rows is None else self.rows.sum(value)

    def unit_counts(self) -> tf.Tensor:
        """n_k = Σ_i w_ik [K] float32 (1 where it is 0): the denominators of the unit losses."""
        totals = tf.reduce_sum(self.presence(), axis=0)
        return tf.where(totals > 0.0, totals, tf.ones_like(totals))

    def loss_gradients(self) -> tf.Tensor:
        """∂L_k/∂h_i = G[i, k] / n_k (G already holds the weight w_ik): [B, K, D] (G[:, k] / B unweighted)."""
        if self.task_gradients is None:
            raise ValueError("loss_gradients needs task_gradients; set needs_task_gradients = True.")
        counts = tf.cast(self.unit_counts(), self.task_gradients.dtype)
        return self.task_gradients / counts[None, :, None]


def labelled_samples(present: tf.Tensor) -> tf.Tensor:
    """Σ_i max_k w_ik over `present` [B, k]: the rows with at least one label, each counted by its largest
    weight (a row of weight 2 counts as two samples): a float32 scalar."""
    return tf.reduce_sum(tf.reduce_max(tf.cast(present, tf.float32), axis=1))


def sum_of_losses_gradient(inputs: AggregatorInputs) -> tf.Tensor:
    """The representation gradient of Σ_k L_k: Σ_k G[:, k] / n_k (Σ_k G[:, k] / B when fully labelled)."""
    return tf.reduce_sum(inputs.loss_gradients(), axis=1)
