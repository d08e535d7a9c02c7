"""What `MultiTaskModel.compile` resolves beyond Keras: the aggregator and per-task metrics."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras

from keras_bayesagg.aggregators.base import Aggregator, bare_interface_message, implements_aggregate
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization
from keras_bayesagg.engine.faults import FaultRecord
from keras_bayesagg.tasks import Binary, Multiclass, Task

KERAS_COMPILE_ARGUMENTS = (
    "optimizer",
    "aggregator",
    "metrics",
    "weighted_metrics",
    "run_eagerly",
    "steps_per_execution",
    "jit_compile",
    "auto_scale_loss",
)


@dataclasses.dataclass
class CompiledParts:
    """What `compile` adds beyond Keras's own state: kept out of `model.weights` (like the optimizer);
    the aggregator is still saved with the model through the model's `aggregator` property."""

    aggregator: Aggregator
    faults: FaultRecord | None = None


def check_compile_arguments(keras_arguments: Mapping[str, Any]) -> None:
    """No loss arguments (losses come from the task kinds) and no arguments Keras's compile would not take."""
    if "loss" in keras_arguments or "loss_weights" in keras_arguments:
        raise ValueError(
            "MultiTaskModel derives each task's loss from its kind (squared error, sigmoid or softmax "
            "cross-entropy); do not pass loss= or loss_weights=. To weigh tasks, pass an aggregator."
        )
    unknown = sorted(set(keras_arguments) - set(KERAS_COMPILE_ARGUMENTS))
    if unknown:
        raise TypeError(
            f"MultiTaskModel.compile() got unknown argument(s) {unknown}; it accepts {list(KERAS_COMPILE_ARGUMENTS)}."
        )


def resolve_aggregator(aggregator: Any) -> Aggregator:
    """None → linear scalarization; a name or config → the registered aggregator; else it must be one."""
    if aggregator is None:
        return LinearScalarization()
    if isinstance(aggregator, (str, dict)):
        aggregator = keras.saving.deserialize_keras_object(aggregator)
    if not isinstance(aggregator, Aggregator):
        raise TypeError(
            f"aggregator must be a method from kb.aggregators (a kb.interface.Aggregator, e.g. kb.BayesAgg()); "
            f"got {aggregator!r}."
        )
    if not implements_aggregate(type(aggregator)):
        raise TypeError(bare_interface_message(type(aggregator)))
    return aggregator


def resolve_accuracy(task: Task, metric: Any) -> Any:
    """'accuracy' means binary accuracy for a Binary set and categorical accuracy for a Multiclass head."""
    if isinstance(metric, str) and metric in ("accuracy", "acc"):
        if isinstance(task, Binary):
            return keras.metrics.BinaryAccuracy(name=metric)
        if isinstance(task, Multiclass):
            return keras.metrics.CategoricalAccuracy(name=metric)
    return metric


def resolve_metrics(tasks: Mapping[str, Task], metrics: Any, argument: str) -> Any:
    """Per-task metrics for Keras: a dict keyed by task name, with 'accuracy' resolved per task kind."""
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise ValueError(
            f"{argument} must be a dict keyed by task name, e.g. {{'gender': ['accuracy']}}; got {metrics!r}. "
            f"Tasks: {list(tasks)}."
        )
    resolved = {}
    for name, task_metrics in metrics.items():
        if name not in tasks:
            raise ValueError(f"{argument} names task '{name}', which the model does not have; tasks: {list(tasks)}.")
        listed = task_metrics if isinstance(task_metrics, (list, tuple)) else [task_metrics]
        resolved[name] = [resolve_accuracy(tasks[name], m) for m in listed]
    return resolved
