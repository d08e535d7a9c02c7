"""PCD, priority-constrained descent ("Not All Objectives Are Born Equal: Priority-Constrained Descent for
Hierarchical Multi-Objective Optimization", TMLR 2026, arXiv:2606.29521; TorchJD's `PCD`)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, nonnegative_quadratic_minimizers
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import finite_float, nonnegative_float

# Below 10·ε (float32, the Gram matrix's precision) of its scale a direction counts as zero.
PRECISION = 10.0 * float(np.finfo(np.float32).eps)


def pcd_weights(gram: tf.Tensor, scales: tf.Tensor, tau: float) -> tf.Tensor:
    """Weights of d = ‖g_1‖ d̃/‖d̃‖, d̃ = argmin ½‖d - g̃_1‖² s.t. ⟨g̃_j, d⟩ ≥ τ‖g̃_j‖² (j ≥ 2), g̃_i = s_i g_i.

    By the KKT conditions d̃ = g̃_1 + Σ_j μ_j g̃_j with μ = argmin_{μ ≥ 0} ½μᵀÑ_SSμ + (Ñ_S1 - τ diag Ñ_SS)ᵀμ
    (Ñ = the Gram matrix of the g̃, S the secondary tasks): the dual, solved exactly. Infeasible
    constraints (which the dual's minimizer then violates) are dropped: d = g_1. g_1 = 0 or d̃ = 0 give 0.
    """
    gram = tf.cast(gram, SOLVER_DTYPE)
    scales = tf.cast(scales, SOLVER_DTYPE)
    normalized = gram * scales[:, None] * scales[None, :]
    trace = tf.linalg.trace(normalized)
    unit = normalized / tf.where(trace > 0.0, trace, 1.0)
    secondary = unit[1:, 1:]
    linear = unit[1:, 0] - tau * tf.linalg.diag_part(secondary)
    multipliers = nonnegative_quadratic_minimizers(secondary, linear[None])[0]
    weights = tf.concat([tf.ones([1], SOLVER_DTYPE), multipliers], axis=0)
    slacks = tf.linalg.matvec(unit[1:], weights) - tau * tf.linalg.diag_part(secondary)
    # Feasible programs leave slacks of -ridge·μ ≈ -1e-12 (XLA's float64 solve ~1e-9); infeasible ones, whose
    # multipliers grow to ~1/ridge, violate a constraint by O(its size).
    feasible = tf.reduce_min(slacks) >= -1e-6 * tf.reduce_max(tf.linalg.diag_part(unit))
    primary_only = tf.one_hot(0, tf.shape(unit)[0], dtype=SOLVER_DTYPE)
    weights = tf.where(feasible, weights, primary_only)
    direction_squared = tf.tensordot(weights, tf.linalg.matvec(normalized, weights), 1)
    magnitude = tf.square(tf.tensordot(tf.abs(weights), tf.sqrt(tf.maximum(tf.linalg.diag_part(normalized), 0.0)), 1))
    primary_squared = gram[0, 0]
    usable = tf.logical_and(primary_squared > 0.0, direction_squared > PRECISION * magnitude)
    rescale = tf.sqrt(primary_squared / tf.where(usable, direction_squared, 1.0))
    return tf.where(usable, weights * scales * rescale, tf.zeros_like(weights))


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class PCD(GradientCombination):
    """Follow the primary task (the first task unit) as closely as possible, while every other task gets at
    least a fraction τ of the first-order progress of a step along its own normalized gradient:

        d̃ = argmin_d ½‖d - g̃_1‖²  s.t.  ⟨g̃_j, d⟩ ≥ τ‖g̃_j‖² for j ≥ 2,   d = ‖g_1‖ d̃ / ‖d̃‖,

    g̃_i = g_i/√(v̂_i + ε), v̂_i the bias-corrected moving average (decay β) of ‖g_i‖² over the steps, so τ is
    scale-free. Infeasible constraints (possible from K = 3) are dropped: d = g_1. Not symmetric in the
    tasks: order the model's tasks so that the primary one comes first. The quadratic program is solved
    exactly through its dual (`pcd_weights`), as TorchJD does (Goldfarb-Idnani). State: the moving average
    and the step count, written in `commit`. `task_weights` are the coefficients of d; d has g_1's norm.

    Args:
        tau: τ ∈ [0, 1] (0.02 by default, as TorchJD).
        beta: the moving average's decay β ∈ [0, 1) (0.999).
        epsilon: ε ≥ 0 added to v̂ before the inverse square root (1e-8).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def __init__(
        self,
        tau: float = 0.02,
        beta: float = 0.999,
        epsilon: float = 1e-8,
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.tau = finite_float("PCD", "tau", tau, low=0.0, high=1.0)
        self.beta = finite_float("PCD", "beta", beta, low=0.0, high=1.0, high_inclusive=False)
        self.epsilon = nonnegative_float("PCD", "epsilon", epsilon)

    def build_state(self, layout: TaskLayout) -> None:
        if layout.num_units < 2:
            raise ValueError(
                f"PCD needs a primary and at least one secondary task unit; this model has {layout.num_units}."
            )
        self.squared_norm_average = self.add_weight(
            name="squared_norm_average", shape=(layout.num_units,), initializer="zeros", trainable=False
        )
        self.step_count = self.add_weight(name="step_count", shape=(), initializer="zeros", trainable=False)

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        squared_norms = tf.cast(tf.linalg.diag_part(gram), tf.float32)
        average = self.beta * self.squared_norm_average + (1.0 - self.beta) * squared_norms
        steps = self.step_count + 1.0
        debiased = tf.cast(average, SOLVER_DTYPE) / (
            1.0 - tf.cast(self.beta, SOLVER_DTYPE) ** tf.cast(steps, SOLVER_DTYPE)
        )
        denominators = tf.sqrt(debiased + self.epsilon)
        scales = tf.where(denominators > 0.0, 1.0 / tf.where(denominators > 0.0, denominators, 1.0), 0.0)
        weights = tf.cast(pcd_weights(gram, scales, self.tau), tf.float32)

        def commit() -> None:
            self.squared_norm_average.assign(average)
            self.step_count.assign(steps)

        return weights, commit

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tau": self.tau, "beta": self.beta, "epsilon": self.epsilon}
