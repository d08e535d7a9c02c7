"""Dynamic weight average (DWA, Liu et al. 2019): weights from how fast each loss fell last epoch."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, TaskLayout
from keras_bayesagg.validation import positive_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class DynamicWeightAverage(Aggregator):
    """DWA (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, Eq. 7).

    λ_k(t) = K·exp(r_k(t-1)/T) / Σ_i exp(r_i(t-1)/T),  r_k(t-1) = L̄_k(t-1) / L̄_k(t-2),
    where L̄_k(e) is task unit k's loss averaged over the steps of epoch e; the objective is
    Σ_k λ_k L_k. Epochs 0 and 1 have no two past averages and use λ_k = 1 (plain sum).

    The averages live in Keras variables: each applied step adds its losses, and `end_epoch`
    (called through `model.end_epoch()`, which `fit` runs by itself) turns the sums into averages
    at the end of each epoch; custom loops call `model.begin_epoch()` and `model.end_epoch()`.

    Args:
        temperature: T; larger T flattens the weights (the paper uses 2).
    """

    def __init__(self, temperature: float = 2.0, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.temperature = positive_float("DynamicWeightAverage", "temperature", temperature)

    def build_state(self, layout: TaskLayout) -> None:
        k = layout.num_units

        def state(name: str, shape: tuple[int, ...], initializer: str = "zeros") -> keras.Variable:
            return self.add_weight(name=name, shape=shape, initializer=initializer, trainable=False)

        self.epoch_loss_sum = state("epoch_loss_sum", (k,))
        self.epoch_steps = state("epoch_steps", ())
        self.last_epoch_loss = state("last_epoch_loss", (k,), "ones")
        self.previous_epoch_loss = state("previous_epoch_loss", (k,), "ones")
        self.completed_epochs = self.add_weight(
            name="completed_epochs", shape=(), dtype="int32", initializer="zeros", trainable=False
        )

    def current_weights(self) -> tf.Tensor:
        """λ(t) from the two last epoch averages (ones until two epochs have completed)."""
        ratio = tf.convert_to_tensor(self.last_epoch_loss) / tf.maximum(
            tf.convert_to_tensor(self.previous_epoch_loss), 1e-12
        )
        dwa = self.layout.num_units * tf.nn.softmax(ratio / self.temperature)
        return tf.where(self.completed_epochs >= 2, dwa, tf.ones_like(dwa))

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        weights = self.current_weights()
        losses = tf.stop_gradient(inputs.losses)

        def commit() -> None:
            self.epoch_loss_sum.assign_add(losses)
            self.epoch_steps.assign_add(1.0)

        return ObjectiveAggregation(
            objective=tf.reduce_sum(weights * inputs.losses), task_weights=weights, commit=commit
        )

    def begin_epoch(self) -> None:
        """Drop sums left by an interrupted epoch so each average covers exactly one epoch."""
        self.epoch_loss_sum.assign(tf.zeros_like(self.epoch_loss_sum))
        self.epoch_steps.assign(0.0)

    def end_epoch(self, head_weights: Any = None) -> None:
        """Make this epoch's average loss the last one and start a new sum (an epoch without steps is skipped)."""
        steps = float(self.epoch_steps.numpy())
        if steps == 0:
            return
        self.previous_epoch_loss.assign(self.last_epoch_loss)
        self.last_epoch_loss.assign(self.epoch_loss_sum / steps)
        self.epoch_loss_sum.assign(tf.zeros_like(self.epoch_loss_sum))
        self.epoch_steps.assign(0.0)
        self.completed_epochs.assign_add(1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}
