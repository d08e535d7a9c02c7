"""One train step and one test step of `MultiTaskModel` (the Keras glue of a batch; docs/architecture.md).

unpack → forward → losses → aggregator inputs (→ global batch) → aggregate → route → faults → apply if
sound → metrics. The pieces are in `engine`, `labels`, `sample_weights` and the aggregators; the model's
`train_step` / `test_step` call these functions.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg import building, sample_weights
from keras_bayesagg import labels as label_checks
from keras_bayesagg.engine import global_batch, gradients
from keras_bayesagg.engine.checks import step_faults
from keras_bayesagg.engine.faults import apply_if, overflow_guard
from keras_bayesagg.engine.metric_updates import update_compiled_metrics, update_loss_trackers


def unpack_batch(model: Any, data: Any, training: bool = False) -> tuple[Any, dict, dict, tf.Tensor, list]:
    """(x, canonical labels, the labels with missing entries filled, weights w [B, K], weight faults) of a
    batch, building the model on first use. w is the presence mask times the sample (and, in training, class) weights."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not model.built:
        building.build_symbolically(
            model, keras.tree.map_structure(lambda t: building.InputSpec(tuple(t.shape), t.dtype), x)
        )
    labels = label_checks.prepare_labels(model.task_specs, y)
    # --- sample and class weights (keras_bayesagg/sample_weights.py)
    present, filled = label_checks.present_and_filled(model.task_specs, labels)
    class_weights = sample_weights.class_weights_of(model) if training else ()
    present, weight_faults = sample_weights.weighted_presence(
        model.task_specs, present, filled, sample_weight, class_weights
    )
    return x, labels, filled, present, weight_faults


def regularization_loss(model: Any) -> tf.Tensor | None:
    return tf.add_n([tf.cast(loss, tf.float32) for loss in model.losses]) if model.losses else None


def train_step(model: Any, data: Any) -> dict[str, tf.Tensor]:
    x, labels, filled, present, weight_faults = unpack_batch(model, data, training=True)
    aggregator, tasks = model.aggregator, model.task_specs
    trunk_variables = list(model.trunk.trainable_variables)
    other_variables = [v for head in model.heads.values() for v in head.trainable_variables]
    other_variables += list(aggregator.trainable_variables)
    with tf.GradientTape(persistent=True) as tape:
        h = model._representation(x, training=True)
        h32 = tf.cast(h, tf.float32)
        logits = model._logits(h32)
        per_sample = gradients.per_sample_unit_losses(tasks, filled, logits, present)
        losses = gradients.masked_mean_losses(per_sample, present)
        kernels = {name: head.kernel_and_bias()[0] for name, head in model.heads.items()}
        heads = model.head_weights()
        inputs = gradients.aggregator_inputs(
            aggregator, tape, tasks, filled, logits, losses, h32, kernels, heads, trunk_variables, present
        )
        rebuild = gradients.task_gradients_from_rows(tasks, model._logits, kernels)
        own_rows_only = aggregator.computes_own_rows  # BayesAgg: per-row work for this replica's rows only
        inputs, own_rows = global_batch.gather(inputs, rebuild, hand_rows=own_rows_only)  # identity on one replica
        aggregation = global_batch.local_part(aggregator.aggregate(inputs), own_rows, own_rows_only)
        scale = model.optimizer.scale_loss(tf.constant(1.0 / model.distribute_strategy.num_replicas_in_sync))
        objectives = gradients.scaled_objectives(aggregation, regularization_loss(model), scale)
    grads = gradients.route(aggregation, tape, h, *objectives, trunk_variables, other_variables, scale)
    del tape
    sound = record_faults(model, labels, h32, per_sample, (*weight_faults, *aggregation.faults), grads)
    variables = trunk_variables + other_variables
    apply_if(
        sound,
        lambda g: model.optimizer.apply_gradients(zip(g, variables)),
        grads,
        commit=lambda: aggregator.commit(aggregation),
        commit_when=overflow_guard(model.optimizer, grads),
    )
    return update_metrics(model, sound, x, filled, logits, per_sample, present)


def record_faults(
    model: Any,
    labels: dict,
    h32: tf.Tensor,
    per_sample: tf.Tensor,
    aggregator_faults: tuple = (),
    grads: list | None = None,
) -> tf.Tensor:
    """Record this step's first fault; True when the step may be applied. Under steps_per_execution > 1
    a recorded fault also blocks the rest of the execution, so the error describes the model as it is."""
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        grads = None  # it skips non-finite gradients itself (and lowers its scale)
    faults = step_faults(model.task_specs, labels, h32, per_sample, aggregator_faults, grads)
    return model._compiled_parts.faults.sound(faults, blocks_rest=model.steps_per_execution > 1)


def update_metrics(
    model: Any, sound: tf.Tensor, x: Any, labels: dict, logits: dict, per_sample: tf.Tensor, present: tf.Tensor
) -> dict:
    """Loss trackers and compiled metrics take only sound steps (an unsound one would poison the epoch's means)
    and present labels only: a tracker's weight is the number of samples with a label of its task(s)."""
    losses, regularization = gradients.masked_mean_losses(per_sample, present), regularization_loss(model)

    def update() -> tf.Tensor:
        update_loss_trackers(model, losses, regularization, present)
        update_compiled_metrics(model, x, labels, model._predictions(logits), present)
        return tf.constant(True)

    tf.cond(sound, update, lambda: tf.constant(False))
    return global_batch.logs_for_reduction(model.distribute_strategy, model.get_metrics_result())


def test_step(model: Any, data: Any) -> dict[str, tf.Tensor]:
    x, labels, filled, present, weight_faults = unpack_batch(model, data)
    h32 = tf.cast(model._representation(x, training=False), tf.float32)
    logits = model._logits(h32)
    per_sample = gradients.per_sample_unit_losses(model.task_specs, filled, logits, present)
    sound = record_faults(model, labels, h32, per_sample, weight_faults)
    return update_metrics(model, sound, x, filled, logits, per_sample, present)
