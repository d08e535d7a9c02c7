"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators.base import peek_seed
from keras_bayesagg.validation import optional_seed


def pcgrad_weights(gram: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """Coefficients of Σ_i g_i^PC in terms of the original gradients, from the Gram matrix.

    For each task i, in the task order `order[i]` ([K, K], a permutation per row), whenever the
    running g_i^PC conflicts with an original g_j it loses its component along g_j
    (paper Algorithm 1):  g_i^PC ← g_i^PC - min(⟨g_i^PC, g_j⟩, 0) / ‖g_j‖² · g_j.
    g_i^PC stays a combination Σ_l C_il g_l, so only C [K, K] and M are needed; all tasks i
    are projected in parallel, one position of their orders at a time (K static).
    """
    gram = tf.cast(gram, tf.float64)
    num_tasks = gram.shape[0]
    if num_tasks is None:
        raise ValueError("PCGrad needs a statically known number of tasks.")
    coefficients = tf.eye(num_tasks, dtype=gram.dtype)
    squared_norms = tf.linalg.diag_part(gram)
    for position in range(num_tasks):
        other = order[:, position]  # [K]: the task each g_i^PC is compared with now
        # ⟨g_i^PC, g_other(i)⟩ = Σ_l C_il M_l,other(i)
        dots = tf.reduce_sum(coefficients * tf.transpose(tf.gather(gram, other, axis=1)), axis=1)
        other_norms = tf.gather(squared_norms, other)
        shrink = tf.where((dots < 0) & (other_norms > 0), dots / tf.where(other_norms > 0, other_norms, 1.0), 0.0)
        coefficients -= shrink[:, None] * tf.one_hot(other, num_tasks, dtype=gram.dtype)
    return tf.reduce_sum(coefficients, axis=0)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class PCGrad(GradientCombination):
    """Project each task gradient off the gradients it conflicts with, then sum (Algorithm 1).

    d = Σ_i g_i^PC, where g_i^PC is g_i projected, in a random task order drawn afresh every
    step, onto the normal plane of every g_j with ⟨g_i^PC, g_j⟩ < 0. Without conflicts d is the
    plain sum (linear scalarization). For two tasks ⟨d, g_k⟩ ≥ 0 (the paper's analysis);
    for more tasks no such guarantee holds. `task_weights` are the coefficients of d in terms
    of the original gradients (d = Σ_k w_k g_k; all ones when nothing conflicts).

    Args:
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        seed: seed of the task orders (stateless draws from a `keras.random.SeedGenerator`,
            so the same seed gives the same run, also under XLA).
    """

    def __init__(
        self, level: str = "representation", seed: int | None = None, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.seed = optional_seed("PCGrad", "seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed, name="pcgrad_seed")

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        num_tasks = gram.shape[0]
        seed, advance = peek_seed(self.seed_generator)
        keys = tf.random.stateless_uniform((num_tasks, num_tasks), seed=tf.cast(seed, tf.int32))
        return pcgrad_weights(gram, tf.argsort(keys, axis=1)), advance

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}
