"""SDMGrad (Xiao et al., "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, project_onto_simplex
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import nonnegative_float, positive_float, whole_number


def sdmgrad_weights(
    gram: tf.Tensor,
    weights: tf.Tensor,
    preference: tf.Tensor,
    preference_weight: float,
    learning_rate: float,
    momentum: float,
    iterations: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(the combination (w + λw̃)/(1 + λ) [K], the new simplex weights w [K]).

    w approximately solves min_{w ∈ simplex} ½‖G(w + λw̃)‖² (paper Eq. 6, the direction-oriented dual) by
    `iterations` steps of projected SGD with heavy-ball momentum, warm-started at the last step's w:
    v ← μv + M(w + λw̃), w ← Π(w - ηv), with M normalized by the squared mean gradient norm (paper §6.1).
    """
    matrix = tf.cast(gram, SOLVER_DTYPE)
    scale = tf.square(tf.reduce_mean(tf.sqrt(tf.maximum(tf.linalg.diag_part(matrix), 0.0))))
    matrix /= tf.where(scale > 0, scale, tf.ones_like(scale))
    preference = tf.cast(preference, SOLVER_DTYPE)
    target = preference_weight * preference

    def step(i: tf.Tensor, w: tf.Tensor, velocity: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        velocity = momentum * velocity + tf.linalg.matvec(matrix, w + target)
        return i + 1, project_onto_simplex(w - learning_rate * velocity), velocity

    start = tf.cast(weights, SOLVER_DTYPE)
    _, new_weights, _ = tf.while_loop(
        lambda i, w, velocity: i < iterations, step, (tf.constant(0), start, tf.zeros_like(start))
    )
    return (new_weights + target) / (1.0 + preference_weight), new_weights


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class SDMGrad(GradientCombination):
    """Stochastic direction-oriented MGDA: MGDA's min-norm weights pulled towards a preference direction.

    d = G(w + λw̃)/(1 + λ), w on the simplex minimizing ½‖G(w + λw̃)‖², i.e. the common-descent
    direction regularized towards the preferred combination Gw̃ (w̃ uniform: the average gradient).
    λ = 0 is a warm-started MGDA; λ → ∞ the average. Weights sum to 1: an average-sized direction.

    The paper estimates ⟨∇L_k, ∇L_l⟩ without bias from two independent mini-batches (and a third for the
    update). One step here has one batch: the Gram matrix M of this step's gradients is used (the
    deterministic-gradient version of the method). At level="representation" the two halves of a batch
    would not help: their gradients live on disjoint rows of the [B·D] vector, so their cross products vanish.

    Args:
        preference_weight: λ (paper and the authors' experiments 0.3).
        preference: w̃, K non-negative numbers summing to 1 (default uniform).
        learning_rate: η of the inner solver (authors' 10, on the normalized Gram matrix; with it the inner
            steps cycle between simplex vertices rather than converge, see docs/aggregators.md).
        momentum: μ of the inner solver (0.5).
        iterations: inner steps per train step (20).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def __init__(
        self,
        preference_weight: float = 0.3,
        preference: Sequence[float] | None = None,
        learning_rate: float = 10.0,
        momentum: float = 0.5,
        iterations: int = 20,
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.preference_weight = nonnegative_float("SDMGrad", "preference_weight", preference_weight)
        self.preference = None if preference is None else simplex_point("SDMGrad", "preference", preference)
        self.learning_rate = positive_float("SDMGrad", "learning_rate", learning_rate)
        self.momentum = nonnegative_float("SDMGrad", "momentum", momentum)
        if self.momentum >= 1.0:
            raise ValueError(f"SDMGrad: momentum must be in [0, 1), got {momentum!r}.")
        self.iterations = whole_number("SDMGrad", "iterations", iterations)

    def build_state(self, layout: TaskLayout) -> None:
        size = layout.num_units
        if self.preference is not None and len(self.preference) != size:
            raise ValueError(f"SDMGrad: preference has {len(self.preference)} values, the model {size} task units.")
        self.simplex_weights = self.add_weight(
            name="simplex_weights", shape=(size,), initializer=keras.initializers.Constant(1.0 / size), trainable=False
        )

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        size = gram.shape[0]
        preference = tf.fill([size], 1.0 / size) if self.preference is None else tf.constant(self.preference)
        combination, weights = sdmgrad_weights(
            gram,
            self.simplex_weights,
            preference,
            self.preference_weight,
            self.learning_rate,
            self.momentum,
            self.iterations,
        )
        return combination, lambda: self.simplex_weights.assign(tf.cast(weights, tf.float32))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "preference_weight": self.preference_weight,
            "preference": None if self.preference is None else list(self.preference),
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "iterations": self.iterations,
        }


def simplex_point(owner: str, argument: str, values: Sequence[float]) -> tuple[float, ...]:
    """A validated point of the probability simplex (non-negative numbers summing to 1)."""
    point = tuple(float(v) for v in values)
    if not point or min(point) < 0 or abs(sum(point) - 1.0) > 1e-6:
        raise ValueError(f"{owner}: {argument} must be non-negative numbers summing to 1, got {values!r}.")
    return point
