"""Loss trackers and metric updates weighted by w_ik: the presence of each label times its sample and class
weights (missing labels: docs/missing-labels.md; weights: docs/contract.md).

Compiled metrics get each task's weights as sample weight — [B, units] for regression and
binary outputs, [B] for a multiclass head — and labels whose missing entries hold the prediction
itself (finite), so NaN never reaches a metric. This is exact for single-output tasks and for
metrics with one value per output (BinaryAccuracy, AUC). A metric that averages over the outputs
of a multi-output task first (MAE of Regression(3)) cannot take a per-output weight: it gets the
largest weight of each sample's outputs, and a missing output counts as zero error in that average.
Loss trackers weigh a step's loss by Σ_i max_k w_ik over the task's units (samples counted by weight).
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import TaskLayout, labelled_samples
from keras_bayesagg.engine.metric_labels import class_index_labels, takes_class_indices
from keras_bayesagg.tasks import Multiclass


def update_loss_trackers(
    model: keras.Model, losses: tf.Tensor, regularization: tf.Tensor | None, present: tf.Tensor
) -> None:
    """`loss` and `<task>_loss` of a MultiTaskModel: each weighted by the samples with a label of its task(s)."""
    layout = model.task_layout
    for name in layout.tasks:
        columns = layout.unit_slice(name)
        model.task_loss_trackers[name].update_state(
            tf.reduce_sum(losses[columns]), sample_weight=labelled_samples(present[:, columns])
        )
    total = tf.reduce_sum(losses) + (0.0 if regularization is None else regularization)
    model._loss_tracker.update_state(total, sample_weight=labelled_samples(present))


def metric_labels_and_weights(
    layout: TaskLayout, labels: Mapping[str, tf.Tensor], predictions: Mapping[str, tf.Tensor], present: tf.Tensor
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Per task: labels with the prediction in missing entries, and the presence mask as sample weight."""
    metric_labels, weights = {}, {}
    for name, task in layout.tasks.items():
        mask = present[:, layout.unit_slice(name)]
        if isinstance(task, Multiclass):
            metric_labels[name], weights[name] = labels[name], mask[:, 0]
        else:
            prediction = tf.cast(predictions[name], labels[name].dtype)
            metric_labels[name], weights[name] = tf.where(mask > 0.0, labels[name], prediction), mask
    return metric_labels, weights


def update_compiled_metrics(
    model: keras.Model,
    x: Any,
    labels: Mapping[str, tf.Tensor],
    predictions: Mapping[str, tf.Tensor],
    present: tf.Tensor,
) -> None:
    """Keras's compiled `metrics` and `weighted_metrics` of a MultiTaskModel, weighted by label presence.

    Keras passes sample weights to `weighted_metrics` only, so both lists are updated here, per task.
    """
    compiled = getattr(model, "_compile_metrics", None)
    if compiled is None:
        return
    metric_labels, weights = metric_labels_and_weights(model.task_layout, labels, predictions, present)
    if not compiled.built:
        compiled.build(metric_labels, predictions)
    indices = class_index_labels(model.task_layout.tasks, metric_labels)  # for sparse metrics (engine/metric_labels.py)
    flat = [compiled._flatten_y(part) for part in (metric_labels, indices, predictions, weights)]
    for metric_lists in (compiled._flat_metrics, compiled._flat_weighted_metrics):
        for metric_list, rows, class_indices, y_pred, weight in zip(metric_lists, *flat):
            for metric in metric_list.metrics if metric_list else ():
                y_true = class_indices if takes_class_indices(metric) else rows
                metric.update_state(y_true, y_pred, sample_weight=_weight_for(metric, y_true, y_pred, weight))


def _weight_for(metric: keras.metrics.Metric, y_true: tf.Tensor, y_pred: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    """`weight` [B, units], or [B] (any output present) for a metric function that averages over the outputs."""
    function = getattr(metric, "_fn", None)
    if len(weight.shape) < 2 or weight.shape[1] == 1 or function is None:
        return weight
    values = function(y_true, y_pred, **getattr(metric, "_fn_kwargs", {}))  # traced only for its shape
    return weight if len(values.shape) >= 2 else tf.reduce_max(weight, axis=1)
