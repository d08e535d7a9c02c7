"""GradVac (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
Multilingual Models", ICLR 2021)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, trace_normalized
from keras_bayesagg.aggregators.base import TaskLayout, peek_seed
from keras_bayesagg.validation import nonnegative_float, optional_seed


def visiting_orders(seed: tf.Tensor, num_tasks: int) -> tf.Tensor:
    """[K, K-1]: for every task i, the other tasks in a random order (stateless in `seed`)."""
    keys = tf.random.stateless_uniform((num_tasks, num_tasks), seed=tf.cast(seed, tf.int32))
    keys += 2.0 * tf.eye(num_tasks)  # task i itself sorts last and is dropped
    return tf.argsort(keys, axis=1)[:, : num_tasks - 1]


def gradvac_weights(
    gram: tf.Tensor, targets: tf.Tensor, orders: tf.Tensor, beta: float, epsilon: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """(w [K], the new similarity targets [K, K]) of d = Σ_i g_i' from the Gram matrix (paper Algorithm 1).

    For each task i, visiting the other tasks j in `orders[i]`: φ = cos(g_i', g_j) of the running g_i' and
    the original g_j; if φ < φ̂_ij (the target), g_i' gains the multiple of g_j that lifts the cosine to φ̂_ij,
        g_i' += ‖g_i'‖ (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (‖g_j‖ √(1-φ̂²)) · g_j   (paper Eq. 3),
    and the target moves towards φ: φ̂_ij ← (1-β) φ̂_ij + β φ. g_i' = Σ_l C_il g_l stays a combination of the
    originals, so C [K, K] and M suffice; the tasks i run in parallel (their rows are independent).
    """
    matrix = trace_normalized(gram)  # cosines and the coefficients are scale-free; ε then is relative
    targets = tf.cast(targets, SOLVER_DTYPE)
    num_tasks = matrix.shape[0]
    coefficients = tf.eye(num_tasks, dtype=SOLVER_DTYPE)
    dots = matrix  # ⟨g_i', g_l⟩ = (C M)_il
    norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(matrix), 0.0))
    for position in range(num_tasks - 1):
        other = orders[:, position]
        picked = tf.one_hot(other, num_tasks, dtype=SOLVER_DTYPE)
        dot = tf.reduce_sum(dots * picked, axis=1)
        own_norm = tf.sqrt(tf.maximum(tf.reduce_sum(dots * coefficients, axis=1), 0.0))
        other_norm = tf.gather(norms, other)
        cosine = dot / (own_norm * other_norm + epsilon)
        target = tf.reduce_sum(targets * picked, axis=1)
        target_sine = tf.sqrt(tf.maximum(1.0 - target * target, 0.0))
        lift = own_norm * (target * tf.sqrt(tf.maximum(1.0 - cosine * cosine, 0.0)) - cosine * target_sine)
        added = tf.where(cosine < target, lift / (other_norm * target_sine + epsilon), 0.0)
        coefficients += added[:, None] * picked
        dots += added[:, None] * tf.gather(matrix, other)
        targets += picked * (beta * (cosine - target))[:, None]
    return tf.reduce_sum(coefficients, axis=0), targets


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class GradVac(GradientCombination):
    """Gradient vaccine: lift every pair's cosine similarity to an EMA target of its past similarities.

    PCGrad only acts on negative cosines (its target is 0); GradVac keeps a target φ̂_ij per ordered pair
    (an exponential moving average of the observed cos(g_i', g_j), starting at 0) and adds to g_i' the
    multiple of g_j that raises its cosine to φ̂_ij whenever it falls short. d = Σ_i g_i'. The visiting
    order of the other tasks is drawn afresh per task and step. `task_weights` are d's coefficients in
    terms of the original gradients (all ones when nothing is corrected).

    As in TorchJD (`GradVac`, whole-model grouping) the observed similarity φ that updates the target is
    the one of the running g_i'; the paper applies GradVac per parameter block, which here is a single
    block (the representation batch or the whole trunk). Solved on the trace-normalized Gram matrix, so
    `epsilon` is relative to the gradients' size (TorchJD adds it to the raw norms).

    Args:
        beta: EMA rate of the targets (paper β; TorchJD's and LibMTL's default 0.5).
        epsilon: guards the divisions.
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
        seed: seed of the visiting orders (stateless draws, as in PCGrad).
    """

    def __init__(
        self,
        beta: float = 0.5,
        epsilon: float = 1e-8,
        level: str = "representation",
        seed: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.beta = nonnegative_float("GradVac", "beta", beta)
        if self.beta > 1.0:
            raise ValueError(f"GradVac: beta must be in [0, 1], got {beta!r}.")
        self.epsilon = nonnegative_float("GradVac", "epsilon", epsilon)
        self.seed = optional_seed("GradVac", "seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed, name="gradvac_seed")

    def build_state(self, layout: TaskLayout) -> None:
        size = layout.num_units
        self.similarity_targets = self.add_weight(
            name="similarity_targets", shape=(size, size), initializer="zeros", trainable=False
        )

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        seed, advance = peek_seed(self.seed_generator)
        orders = visiting_orders(seed, gram.shape[0])
        weights, targets = gradvac_weights(gram, self.similarity_targets, orders, self.beta, self.epsilon)
        targets = tf.cast(targets, tf.float32)

        def commit() -> None:
            self.similarity_targets.assign(targets)
            advance()

        return weights, commit

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "epsilon": self.epsilon, "seed": self.seed}
