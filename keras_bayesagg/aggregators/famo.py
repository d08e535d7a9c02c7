"""FAMO (Liu et al. 2023): task logits steered by how much each log-loss fell in the last step."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._own_adam import AdamProposal, OwnAdam
from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, TaskLayout
from keras_bayesagg.validation import nonnegative_float, positive_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class FAMO(Aggregator):
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023, Alg. 1-2).

    Task logits ξ (Keras variables, not trained by the model's optimizer), z = softmax(ξ). The
    model minimizes Σ_k z_k log(L_k + ε) / c with c = Σ_k z_k/(L_k + ε) held constant, so the
    update is the convex combination Σ_k w_k ∇L_k with w_k = (z_k/(L_k + ε)) / c: these w_k are
    the reported task weights (they sum to 1).

    The logits follow FAMO's own rule: with δ_k = log(L_k^prev + ε) - log(L_k + ε), the fall of
    each log-loss, ξ takes an Adam step (its own `learning_rate`, coupled L2 decay
    `weight_decay` = the paper's γ) along ∂(zᵀδ)/∂ξ = z ⊙ (δ - zᵀδ), moving weight to the
    tasks whose loss fell least. The authors' code measures δ by re-evaluating the same batch
    after the update (an extra forward pass); here L^prev is the previous step's loss, so δ
    compares consecutive steps (different batches): no extra cost, but a noisier δ. Each step
    first updates ξ from δ, then weighs its losses with the new z. The first step has no
    previous loss and keeps ξ = 0 (uniform z).

    Args:
        learning_rate: Adam learning rate of the logits (paper: 0.025).
        weight_decay: γ, L2 decay of the logits (paper's Alg. 2 and LibMTL: 1e-3).
        epsilon: ε keeps the logarithms finite at zero loss (paper: 1e-8).
    """

    def __init__(
        self,
        learning_rate: float = 0.025,
        weight_decay: float = 1e-3,
        epsilon: float = 1e-8,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.learning_rate = positive_float("FAMO", "learning_rate", learning_rate)
        self.weight_decay = nonnegative_float("FAMO", "weight_decay", weight_decay)
        self.epsilon = positive_float("FAMO", "epsilon", epsilon)

    def build_state(self, layout: TaskLayout) -> None:
        k = layout.num_units
        self.task_logits = self.add_weight(name="task_logits", shape=(k,), initializer="zeros", trainable=False)
        self.previous_log_losses = self.add_weight(
            name="previous_log_losses", shape=(k,), initializer="zeros", trainable=False
        )
        self.has_previous = self.add_weight(name="has_previous", shape=(), initializer="zeros", trainable=False)
        self.logit_optimizer = OwnAdam(self, "task_logits", (k,), self.learning_rate, self.weight_decay)

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        shifted = tf.stop_gradient(inputs.losses) + self.epsilon
        # A unit without labels in this batch has no loss change: it keeps its last log loss.
        labelled = tf.reduce_sum(inputs.presence(), axis=0) > 0.0
        log_losses = tf.where(labelled, tf.math.log(shifted), tf.convert_to_tensor(self.previous_log_losses))
        proposal = self._propose_logits(log_losses)
        z = tf.nn.softmax(proposal.value)
        inverse = tf.where(labelled, z / shifted, 0.0)  # an unlabelled unit's loss (0) must not set the scale
        normalizer = tf.reduce_sum(inverse)
        objective = tf.reduce_sum(z * tf.math.log(inputs.losses + self.epsilon)) / normalizer

        def commit() -> None:
            self.logit_optimizer.commit(self.task_logits, proposal)
            self.previous_log_losses.assign(log_losses)
            self.has_previous.assign(1.0)

        return ObjectiveAggregation(objective=objective, task_weights=inverse / normalizer, commit=commit)

    def _propose_logits(self, log_losses: tf.Tensor) -> AdamProposal:
        def step() -> AdamProposal:
            decrease = tf.convert_to_tensor(self.previous_log_losses) - log_losses
            z = tf.nn.softmax(tf.convert_to_tensor(self.task_logits))
            gradient = z * (decrease - tf.reduce_sum(z * decrease))
            return self.logit_optimizer.propose(self.task_logits, gradient)

        return AdamProposal(
            *tf.cond(self.has_previous > 0, step, lambda: self.logit_optimizer.unchanged(self.task_logits))
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "epsilon": self.epsilon,
        }
