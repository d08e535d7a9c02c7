"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import nash_bargaining_weights
from keras_bayesagg.aggregators.base import Aggregation, AggregatorInputs, TaskLayout


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class NashMTL(GradientCombination):
    """The Nash bargaining solution of the tasks: d = Σ_k α_k g_k with Gᵀ G α = 1/α (paper Eq. 3).

    d maximizes Σ_k log ⟨g_k, d⟩ in a ball, so every task gains: ⟨g_k, d⟩ = 1/α_k > 0, and
    scaling one task's gradient by c scales its α_k by 1/c (scale invariance, Theorem 5.4).
    The Gram matrix is normalized by its Frobenius norm as in the authors' code, so d is on
    the scale of the gradients (with identical gradients it is their sum). The authors'
    sequential convex solver (cvxpy) is replaced by damped Newton steps on the equivalent
    convex problem (see `nash_bargaining_weights`). As in the authors' code, the combined
    direction is then clipped to norm `max_norm` (their default 1.0): d ← d·min(1, max_norm/‖d‖),
    in-graph. Without the clipping ‖d‖ = √(K·‖M‖_F) for the Gram matrix M, often far above 1.
    `task_weights` are the coefficients of the (clipped) d, i.e. α·min(1, max_norm/‖d‖).

    Args:
        update_weights_every: recompute α every n steps and reuse the last α in between
            (paper Section 5.4, the speed-up for many tasks); α lives in a Keras variable.
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        max_iterations: Newton budget (converges in a few steps in practice).
        max_norm: clip the Euclidean norm of d to this (the authors' `max_norm`, default 1.0);
            None turns clipping off. At level="parameters" this is the norm of the trunk
            update, as in the authors' code; at level="representation" the norm of the
            representation gradient [B, D] (the mean-over-batch gradient w.r.t. h).
    """

    def __init__(
        self,
        update_weights_every: int = 1,
        level: str = "representation",
        max_iterations: int = 50,
        max_norm: float | None = 1.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        if int(update_weights_every) != update_weights_every or update_weights_every < 1:
            raise ValueError(f"NashMTL: update_weights_every must be a positive whole number; got {update_weights_every!r}.")
        if int(max_iterations) != max_iterations or max_iterations < 1:
            raise ValueError(f"NashMTL: max_iterations must be a positive whole number; got {max_iterations!r}.")
        if max_norm is not None and (
            isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not math.isfinite(max_norm) or max_norm <= 0
        ):
            raise ValueError(f"NashMTL: max_norm must be a finite number > 0, or None for no clipping; got {max_norm!r}.")
        self.update_weights_every = int(update_weights_every)
        self.max_iterations = int(max_iterations)
        self.max_norm = None if max_norm is None else float(max_norm)

    def build_state(self, layout: TaskLayout) -> None:
        self.bargaining_weights = self.add_weight(
            name="bargaining_weights", shape=(layout.num_units,), initializer="ones", trainable=False
        )
        self.step_counter = self.add_weight(name="step_counter", shape=(), dtype="int64", initializer="zeros", trainable=False)

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        if self.update_weights_every == 1:
            weights = tf.cast(nash_bargaining_weights(gram, self.max_iterations), tf.float32)
        else:
            weights = tf.cond(
                tf.equal(self.step_counter % self.update_weights_every, 0),
                lambda: tf.cast(nash_bargaining_weights(gram, self.max_iterations), tf.float32),
                lambda: tf.convert_to_tensor(self.bargaining_weights),
            )
        self.bargaining_weights.assign(weights)
        self.step_counter.assign_add(1)
        return weights

    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        aggregation = super().aggregate(inputs)
        if self.max_norm is None:
            return aggregation
        field = "parameter_gradient" if self.level == "parameters" else "representation_gradient"
        direction = getattr(aggregation, field)
        # min(1, max_norm/‖d‖) without dividing by zero: max_norm / max(‖d‖, max_norm).
        max_norm = tf.constant(self.max_norm, direction.dtype)
        scale = max_norm / tf.maximum(tf.norm(direction), max_norm)
        return dataclasses.replace(
            aggregation,
            **{field: direction * scale},
            task_weights=aggregation.task_weights * tf.cast(scale, aggregation.task_weights.dtype),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "update_weights_every": self.update_weights_every,
            "max_iterations": self.max_iterations,
            "max_norm": self.max_norm,
        }
