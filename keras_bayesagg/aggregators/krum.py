"""Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import trace_normalized
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import whole_number


def krum_weights(gram: tf.Tensor, n_byzantine: int, n_selected: int) -> tf.Tensor:
    """1/m on the m = `n_selected` gradients with the smallest Krum scores, 0 elsewhere.

    Score of g_i: Σ of the squared distances ‖g_i - g_j‖² = M_ii + M_jj - 2M_ij to its K - f - 2 nearest
    other gradients (paper Section 4). Distances need the Gram matrix only. Ties go to the earlier task.
    """
    matrix = trace_normalized(gram)
    size = matrix.shape[0]
    squared_norms = tf.linalg.diag_part(matrix)
    distances = tf.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * matrix, 0.0)
    nearest = tf.sort(distances, axis=1)[:, 1 : size - n_byzantine - 1]  # position 0: the gradient itself
    scores = tf.reduce_sum(nearest, axis=1)
    _, selected = tf.math.top_k(-scores, k=n_selected)
    return tf.reduce_sum(tf.one_hot(selected, size, dtype=tf.float32), axis=0) / float(n_selected)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class Krum(GradientCombination):
    """Byzantine-robust choice: the task gradient(s) closest to their K - f - 2 nearest neighbours.

    With `n_selected` = 1 (Krum) d is the single gradient of smallest score; m > 1 (Multi-Krum, paper
    Section 5) averages the m best. Robust to f = `n_byzantine` arbitrary gradients when K > 2f + 2; it
    needs K ≥ f + 3. Scores sum *squared* distances, as in the paper; TorchJD 0.18 sums distances
    (square roots), which can pick a different gradient when the gaps are uneven. K identical gradients
    give g (the average). `task_weights` are 1/m on the chosen tasks.

    Args:
        n_byzantine: f, the number of task gradients that may be arbitrary (≥ 0).
        n_selected: m, how many gradients to average (≥ 1, ≤ K).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    def __init__(
        self,
        n_byzantine: int = 0,
        n_selected: int = 1,
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.n_byzantine = whole_number("Krum", "n_byzantine", n_byzantine, minimum=0)
        self.n_selected = whole_number("Krum", "n_selected", n_selected)

    def build_state(self, layout: TaskLayout) -> None:
        if layout.num_units < self.n_byzantine + 3 or layout.num_units < self.n_selected:
            raise ValueError(
                f"Krum: n_byzantine={self.n_byzantine}, n_selected={self.n_selected} need at least "
                f"{max(self.n_byzantine + 3, self.n_selected)} task units (n_byzantine + 3 and n_selected); "
                f"this model has {layout.num_units}."
            )
        self.num_units = layout.num_units

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        gram = tf.ensure_shape(gram, [self.num_units, self.num_units])
        return krum_weights(gram, self.n_byzantine, self.n_selected)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_byzantine": self.n_byzantine, "n_selected": self.n_selected}
