"""CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, frank_wolfe_simplex, trace_normalized
from keras_bayesagg.validation import nonnegative_float, one_of, whole_number

RESCALINGS = {"none": lambda c: 1.0, "one_plus_c_squared": lambda c: 1.0 + c * c, "one_plus_c": lambda c: 1.0 + c}


def cagrad_weights(gram: tf.Tensor, c: float, max_iterations: int = 200, tolerance: float = 1e-7) -> tf.Tensor:
    """Weights of d = g0 + (c‖g0‖ / ‖g_w‖) g_w (before rescaling) in terms of the g_k.

    g0 = Σ_k g_k / K; w solves the dual (paper Eq. 4 / Algorithm 1)
        min_{w ∈ simplex}  g_wᵀ g0 + c‖g0‖ ‖g_w‖,   g_w = Σ_k w_k g_k,
    here by Frank-Wolfe on the Gram matrix. d is the best direction in the ball ‖d - g0‖ ≤ c‖g0‖
    for the worst task: it maximizes min_k ⟨g_k, d⟩ there.
    """
    matrix = trace_normalized(gram)
    size = tf.shape(matrix)[0]
    mean_weights = tf.fill([size], tf.constant(1.0, SOLVER_DTYPE) / tf.cast(size, SOLVER_DTYPE))
    matrix_mean = tf.linalg.matvec(matrix, mean_weights)
    radius = c * tf.sqrt(tf.maximum(tf.tensordot(mean_weights, matrix_mean, 1), 0.0))  # c‖g0‖

    def objective_and_gradient(points: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        points_matrix = tf.matmul(points, matrix)
        norms = tf.sqrt(tf.maximum(tf.reduce_sum(points_matrix * points, axis=1), 0.0) + 1e-24)
        values = tf.linalg.matvec(points, matrix_mean) + radius * norms
        return values, matrix_mean[None] + radius * points_matrix / norms[:, None]

    w = frank_wolfe_simplex(objective_and_gradient, size, max_iterations, tolerance)
    combined_norm = tf.sqrt(tf.maximum(tf.tensordot(w, tf.linalg.matvec(matrix, w), 1), 0.0))
    # ‖λ g_w‖ = c‖g0‖·‖g_w‖/max(‖g_w‖, ε) ≤ c‖g0‖ even when g_w vanishes.
    scale = radius / tf.maximum(combined_norm, 1e-12)
    return mean_weights + scale * w


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class CAGrad(GradientCombination):
    """Conflict-averse gradient: the average gradient, bent towards the worst-off task.

    d = argmax_{‖d - g0‖ ≤ c‖g0‖} min_k ⟨g_k, d⟩ = g0 + (c‖g0‖/‖g_w‖) g_w (paper Eq. 4-5),
    divided by `rescale` (the authors' default 1 + c²). c = 0 gives the average gradient;
    c → ∞ approaches MGDA. No non-conflict guarantee for c < ∞, but the worst task never does
    worse than under g0: min_k ⟨g_k, d⟩ ≥ min_k ⟨g_k, g0⟩ (before rescaling).
    `task_weights` are the coefficients of d in terms of the g_k (1/K + λ w_k, rescaled).

    Args:
        c: the radius of the ball around g0, relative to ‖g0‖ (paper default 0.4 for
            supervised MTL).
        rescale: "one_plus_c_squared" (authors' default), "one_plus_c" (identical gradients
            then give exactly their average) or "none".
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        max_iterations: Frank-Wolfe budget for the dual.
        tolerance: stop Frank-Wolfe when the duality gap of the dual is below this.
    """

    def __init__(
        self,
        c: float = 0.4,
        rescale: str = "one_plus_c_squared",
        level: str = "representation",
        max_iterations: int = 200,
        tolerance: float = 1e-7,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.c = nonnegative_float("CAGrad", "c", c)
        self.rescale = one_of("CAGrad", "rescale", rescale, tuple(RESCALINGS))
        self.max_iterations = whole_number("CAGrad", "max_iterations", max_iterations)
        self.tolerance = nonnegative_float("CAGrad", "tolerance", tolerance)

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        weights = cagrad_weights(gram, self.c, self.max_iterations, self.tolerance)
        return weights / RESCALINGS[self.rescale](self.c)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "c": self.c,
            "rescale": self.rescale,
            "max_iterations": self.max_iterations,
            "tolerance": self.tolerance,
        }
