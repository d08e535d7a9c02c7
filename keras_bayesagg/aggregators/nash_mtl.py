"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination, repetition_scale
from keras_bayesagg.aggregators._solvers import nash_bargaining_weights
from keras_bayesagg.aggregators.base import (
    AggregatorInputs,
    ParameterAggregation,
    RepresentationAggregation,
    TaskLayout,
)
from keras_bayesagg.validation import optional_positive_float, whole_number


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
        self.update_weights_every = whole_number("NashMTL", "update_weights_every", update_weights_every)
        self.max_iterations = whole_number("NashMTL", "max_iterations", max_iterations)
        self.max_norm = optional_positive_float("NashMTL", "max_norm", max_norm)

    def build_state(self, layout: TaskLayout) -> None:
        self.bargaining_weights = self.add_weight(
            name="bargaining_weights", shape=(layout.num_units,), initializer="ones", trainable=False
        )
        self.step_counter = self.add_weight(
            name="step_counter", shape=(), dtype="int64", initializer="zeros", trainable=False
        )

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        if self.update_weights_every == 1:
            weights = tf.cast(nash_bargaining_weights(gram, self.max_iterations), tf.float32)
        else:
            weights = tf.cond(
                tf.equal(self.step_counter % self.update_weights_every, 0),
                lambda: tf.cast(nash_bargaining_weights(gram, self.max_iterations), tf.float32),
                lambda: tf.convert_to_tensor(self.bargaining_weights),
            )

        def commit() -> None:
            self.bargaining_weights.assign(weights)
            self.step_counter.assign_add(1)

        return weights, commit

    def aggregate(self, inputs: AggregatorInputs) -> RepresentationAggregation | ParameterAggregation:
        aggregation = super().aggregate(inputs)
        if self.max_norm is None:
            return aggregation
        field = "parameter_gradient" if self.level == "parameters" else "representation_gradient"
        direction = getattr(aggregation, field)
        # min(1, max_norm/‖d‖) without dividing by zero: max_norm / max(‖d‖, max_norm).
        max_norm = tf.constant(self.max_norm, direction.dtype)
        # The norm over the batch as repeated rows (sample weights: `repetition_scale`).
        norm = tf.norm(direction if self.level == "parameters" else direction * repetition_scale(inputs))
        scale = max_norm / tf.maximum(norm, max_norm)
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
