"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import alpha_fair_weights
from keras_bayesagg.validation import nonnegative_float, whole_number


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class FairGrad(GradientCombination):
    """α-fair allocation of the update among the tasks: d = Σ_k w_k g_k with (Gᵀ G w)_k = w_k^{-1/α}.

    Each task's gain ⟨g_k, d⟩ = w_k^{-1/α} > 0 is its "utility"; d maximizes Σ_k u_α(⟨g_k, d⟩) over a
    ball (paper Section 3; the condition is its Eq. 4): α = 0 is linear scalarization (the average here), α = 1 proportional fairness
    (Nash-MTL's condition), α → ∞ max-min fairness (MGDA-like). Like the paper and TorchJD, the equation
    is solved on the raw Gram matrix, so d is not scale-free: scaling every gradient by s scales w by
    s^{-2α/(α+1)} and d by s^{(1-α)/(1+α)}; K identical gradients g give d = K^{1/(α+1)} ‖g‖^{-2α/(α+1)} g
    (α = 1: √K·g/‖g‖). α = 0 is special-cased to the average, as in TorchJD.
    Solved by damped Newton (`alpha_fair_weights`) instead of the authors' scipy least squares.
    `task_weights` are w.

    Args:
        alpha: the fairness exponent α ≥ 0 (the paper's experiments use 1, 2, 5, 10).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        max_iterations: Newton budget.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        level: str = "representation",
        max_iterations: int = 100,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.alpha = nonnegative_float("FairGrad", "alpha", alpha)
        self.max_iterations = whole_number("FairGrad", "max_iterations", max_iterations)

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        if self.alpha == 0.0:  # the limit: equal weights (paper Section 3); the equation itself degenerates
            size = tf.shape(gram)[0]
            return tf.fill([size], 1.0 / tf.cast(size, tf.float32))
        return alpha_fair_weights(gram, self.alpha, self.max_iterations)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "max_iterations": self.max_iterations}
