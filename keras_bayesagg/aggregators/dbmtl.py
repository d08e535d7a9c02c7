"""DB-MTL (Lin, Ye, Xu, Shi & Kwok, "Dual-Balancing for Multi-Task Learning", 2023)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._scalarization import labelled_units
from keras_bayesagg.aggregators._scaled_gradients import on_original_losses, with_unit_scales
from keras_bayesagg.aggregators.base import Aggregation, AggregatorInputs, TaskLayout
from keras_bayesagg.validation import finite_float, nonnegative_float, positive_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class DBMTL(GradientCombination):
    """Dual balancing: loss scales by logarithms, gradient magnitudes by the largest one.

    1. Loss-scale balancing: every unit trains on log(L_k + ε), so g_k = ∇ log(L_k + ε) =
       ∇L_k / (L_k + ε) (the heads train on Σ_k log(L_k + ε) too).
    2. Gradient-magnitude balancing: with n̂_k an exponential moving average of ‖g_k‖
       (n̂ ← β_t n̂ + (1 - β_t)‖g_k‖, β_t = β / t^σ at step t, from n̂ = 0), the update is
       d = Σ_k α_k g_k with α_k = max_j n̂_j / n̂_k: every unit's log-loss gradient is
       brought to the size of the largest one.

    The paper (Alg. 1) and LibMTL's `DB_MTL` average the gradient *vectors* ĝ_k and combine those
    (d = Σ_k α_k ĝ_k, parameter level only). Here the moving average is over the norms and d
    combines this step's gradients, so the same rule works at the representation level, where
    consecutive batches' per-sample gradients cannot be averaged, and needs no [K, P] buffer. With
    the same gradients every step the two give the same α and the same direction; LibMTL's
    update is then c_t times ours (c_t = 1 - Π β_s, 0.1 at its first step with β = 0.9). A unit
    without labels in the batch (zero gradient) keeps its average and gets no weight.
    `task_weights` are the coefficients on the gradients of the plain losses, α_k / (L_k + ε).

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        beta: β in [0, 1), the moving average's memory (LibMTL: 0.9).
        beta_decay: σ ≥ 0, β_t = β / t^σ (LibMTL's `DB_beta_sigma`: 0).
        epsilon: ε > 0 inside the logarithm (LibMTL: 1e-8).
    """

    def __init__(
        self,
        level: str = "representation",
        beta: float = 0.9,
        beta_decay: float = 0.0,
        epsilon: float = 1e-8,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.beta = finite_float("DBMTL", "beta", beta, low=0.0, high=1.0, high_inclusive=False)
        self.beta_decay = nonnegative_float("DBMTL", "beta_decay", beta_decay)
        self.epsilon = positive_float("DBMTL", "epsilon", epsilon)

    def build_state(self, layout: TaskLayout) -> None:
        k = layout.num_units
        self.norm_averages = self.add_weight(name="norm_averages", shape=(k,), initializer="zeros", trainable=False)
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False)

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(tf.cast(gram, tf.float32)), 0.0))
        step = tf.convert_to_tensor(self.steps) + 1.0
        beta = self.beta / tf.pow(step, self.beta_decay)
        previous = tf.convert_to_tensor(self.norm_averages)
        averages = tf.where(norms > 0.0, norms + beta * (previous - norms), previous)
        # LibMTL divides by n̂_k + 1e-8, which is not scale-free for tiny gradients; a unit never seen gets 0.
        weights = tf.where(averages > 0.0, tf.reduce_max(averages) / tf.where(averages > 0.0, averages, 1.0), 0.0)

        def commit() -> None:
            self.norm_averages.assign(averages)
            self.steps.assign(step)

        return weights, commit

    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        labelled = labelled_units(inputs)
        shifted = tf.stop_gradient(tf.cast(inputs.losses, tf.float32)) + self.epsilon
        scales = tf.where(labelled, 1.0 / shifted, 0.0)
        aggregation = super().aggregate(with_unit_scales(inputs, scales))
        log_losses = tf.math.log(tf.where(labelled, inputs.losses, 1.0) + self.epsilon)
        objective = tf.reduce_sum(tf.where(labelled, log_losses, 0.0))
        return on_original_losses(aggregation, objective, scales)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "beta_decay": self.beta_decay, "epsilon": self.epsilon}
