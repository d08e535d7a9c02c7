"""GradNorm (Chen et al. 2018): task weights that equalize gradient norms at matched training rates."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import repetition_scale
from keras_bayesagg.aggregators._own_adam import OwnAdam
from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, TaskLayout
from keras_bayesagg.validation import nonnegative_float, positive_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class GradNorm(Aggregator):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, Eqs. 1-2).

    The model minimizes Σ_k w_k L_k with task weights w (Keras variables, initialized at 1,
    not trained by the model's optimizer). GradNorm's W is here the shared representation h:
    G_k = w_k ‖∂L_k/∂H‖_F, the norm of task unit k's gradient w.r.t. the whole batch of
    representations H [B, D] (from the exact per-sample gradients, so no extra backward pass).
    With L̃_k = L_k / L_k(0) (L(0): the first step's losses), r_k = L̃_k / mean(L̃) and the
    target Ḡ·r_k^α (Ḡ = mean_k G_k, held constant), the weights take an Adam step (their own
    `learning_rate`) on ∂/∂w Σ_k |G_k - Ḡ r_k^α| = sign(G_k - Ḡ r_k^α)·‖∂L_k/∂H‖, are kept
    positive and renormalized to Σ_k w_k = K. A step uses the weights from before its update;
    those are the reported task weights.

    Args:
        alpha: α, the strength of the pull towards equal training rates (paper: 1.5).
        learning_rate: Adam learning rate of the task weights.
    """

    needs_task_gradients = True

    def __init__(
        self, alpha: float = 1.5, learning_rate: float = 0.025, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.alpha = nonnegative_float("GradNorm", "alpha", alpha)
        self.learning_rate = positive_float("GradNorm", "learning_rate", learning_rate)

    def build_state(self, layout: TaskLayout) -> None:
        k = layout.num_units
        self.task_weights = self.add_weight(name="task_weights", shape=(k,), initializer="ones", trainable=False)
        self.initial_losses = self.add_weight(name="initial_losses", shape=(k,), initializer="ones", trainable=False)
        self.has_initial_losses = self.add_weight(
            name="has_initial_losses", shape=(), initializer="zeros", trainable=False
        )
        self.weight_optimizer = OwnAdam(self, "task_weights", (k,), self.learning_rate)

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        if inputs.task_gradients is None:
            raise ValueError("GradNorm needs task_gradients (needs_task_gradients = True).")
        losses = tf.stop_gradient(inputs.losses)
        weights = tf.convert_to_tensor(self.task_weights)
        objective = tf.reduce_sum(weights * inputs.losses)

        # A unit's initial loss is its first loss with labels (a unit without labels in a batch has loss 0).
        stored = tf.convert_to_tensor(self.initial_losses)
        initial = tf.where((self.has_initial_losses > 0) & (stored > 0.0), stored, losses)

        # ‖∂L_k/∂h‖ over the batch as repeated rows (sample weights: `repetition_scale`).
        scaled = inputs.loss_gradients() * repetition_scale(inputs)[:, :, None]
        gradient_norms = tf.sqrt(tf.reduce_sum(tf.square(scaled), axis=[0, 2]))
        weighted_norms = weights * gradient_norms
        loss_ratios = losses / tf.maximum(initial, 1e-12)
        training_rates = loss_ratios / tf.maximum(tf.reduce_mean(loss_ratios), 1e-12)
        targets = tf.reduce_mean(weighted_norms) * tf.pow(training_rates, self.alpha)
        weight_gradient = tf.sign(weighted_norms - targets) * gradient_norms
        proposal = self.weight_optimizer.propose(self.task_weights, weight_gradient)
        positive = tf.maximum(proposal.value, 1e-6)

        def commit() -> None:
            self.weight_optimizer.commit(
                self.task_weights, proposal, self.layout.num_units * positive / tf.reduce_sum(positive)
            )
            self.initial_losses.assign(initial)
            self.has_initial_losses.assign(1.0)

        return ObjectiveAggregation(objective=objective, task_weights=weights, commit=commit)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "learning_rate": self.learning_rate}
