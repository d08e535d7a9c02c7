"""MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import min_norm_weights
from keras_bayesagg.validation import nonnegative_float, whole_number


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class MGDA(GradientCombination):
    """The minimum-norm point of the convex hull of the task gradients (paper Eq. 3):

        d = Σ_k α_k g_k,  α = argmin_{α ∈ simplex} ‖Σ_k α_k g_k‖².

    d is a common descent direction: ⟨d, g_k⟩ ≥ ‖d‖² ≥ 0 for every task (the KKT conditions
    of the problem), and d = 0 exactly at Pareto-stationary points. α sums to 1, so d is on
    the scale of the *average* task gradient (K times smaller than linear scalarization's).
    `task_weights` are α. With level="representation" this is the paper's MGDA-UB.

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        max_iterations: budget of the min-norm solver (accelerated projected gradient, see
            `min_norm_weights`; the paper's Frank-Wolfe solves the same problem less exactly).
        tolerance: stop when the duality gap, relative to tr(M), is below this.
    """

    def __init__(
        self,
        level: str = "representation",
        max_iterations: int = 500,
        tolerance: float = 1e-10,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.max_iterations = whole_number("MGDA", "max_iterations", max_iterations)
        self.tolerance = nonnegative_float("MGDA", "tolerance", tolerance)

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        return min_norm_weights(gram, self.max_iterations, self.tolerance)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_iterations": self.max_iterations, "tolerance": self.tolerance}
