"""MoDo (Chen et al., "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance", NeurIPS 2023 / JMLR 2024)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, project_onto_simplex
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import nonnegative_float, positive_float


def modo_weights(gram: tf.Tensor, weights: tf.Tensor, learning_rate: float, regularization: float) -> tf.Tensor:
    """λ ← Π_simplex(λ - γ(M + ρI)λ): one projected gradient step on ½‖Gλ‖² + ½ρ‖λ‖² (paper Eq. 2.9a)."""
    matrix = tf.cast(gram, SOLVER_DTYPE)
    weights = tf.cast(weights, SOLVER_DTYPE)
    return project_onto_simplex(
        weights - learning_rate * (tf.linalg.matvec(matrix, weights) + regularization * weights)
    )


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class MoDo(GradientCombination):
    """Multi-objective gradient with double sampling: MGDA's weights moved by one projected step per step.

    λ ← Π(λ - γ(GᵀG + ρI)λ), then d = Gλ with the new λ (paper Eq. 2.9): instead of solving the min-norm
    problem every step, its weights follow it slowly, which trades conflict-avoidance (γ large) against
    optimization and generalization (γ small). Weights stay on the simplex: an average-sized direction.

    The paper's double sampling estimates GᵀG from two independent mini-batches (z₁, z₂), and the
    update uses a third (or their mean). One step here has one batch, so M is this batch's Gram matrix
    (its biased single-sample estimate; see `SDMGrad` on why halves of the batch cannot stand in at
    level="representation"). M is not normalized (as in the paper and TorchJD): γ is in the units of the
    squared gradients, and at level="representation" the entries scale as 1/B.

    Args:
        learning_rate: γ, the step of the weights (TorchJD's default 0.1).
        regularization: ρ, the ℓ2 term on λ (TorchJD 0.1).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def __init__(
        self,
        learning_rate: float = 0.1,
        regularization: float = 0.1,
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.learning_rate = positive_float("MoDo", "learning_rate", learning_rate)
        self.regularization = nonnegative_float("MoDo", "regularization", regularization)

    def build_state(self, layout: TaskLayout) -> None:
        size = layout.num_units
        self.simplex_weights = self.add_weight(
            name="simplex_weights", shape=(size,), initializer=keras.initializers.Constant(1.0 / size), trainable=False
        )

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        weights = tf.cast(modo_weights(gram, self.simplex_weights, self.learning_rate, self.regularization), tf.float32)
        return weights, lambda: self.simplex_weights.assign(weights)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "learning_rate": self.learning_rate, "regularization": self.regularization}
