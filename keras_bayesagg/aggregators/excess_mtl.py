"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination, tracked_width
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import positive_float, whole_number

ADAGRAD_EPSILON = 1e-7  # inside the square root of the accumulated squares (paper and both anchors)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class ExcessMTL(GradientCombination):
    """Excess-risk weighting: more weight to the tasks furthest from their own optimum, not the largest losses.

    Each task's excess risk (its loss above the best it could reach) is estimated by a second-order
    expansion, E_k ≈ g_kᵀ H_k⁻¹ g_k, with H_k the AdaGrad diagonal √(Σ_steps g_k² + ε) of the squared
    gradients accumulated so far (paper Eq. 6-7); divided by its value at the start (the paper's scale
    processing, so tasks of different units compare) it drives an exponentiated-gradient step
    w ← softmax(log w + η E_k/E_k⁰) (Eq. 9). d = Σ_k w_k g_k, w on the simplex (an average-sized direction,
    uniform at first, as in the paper and TorchJD; the authors' code and LibMTL start at 1).

    Baseline E⁰: the mean over the first `warmup_steps` steps (weights stay uniform meanwhile; the paper's
    Appendix C.1 collects 3 epochs), or the first step's estimate when `warmup_steps=0`. The first step
    is then divided by itself too (weights unchanged), where TorchJD and the authors' code apply that step
    with the undivided estimate; from the second step on all agree.

    State: the accumulated squares, [K, P] at level="parameters" (as in the paper) and [K, D] at
    level="representation", summed over the batch's rows per feature of h (the rows are other samples
    every step; the features are what persists). Plus E⁰, w and a step count.

    Args:
        robust_step_size: η (paper and anchors: 1).
        warmup_steps: steps that only collect the baseline (0: the first step's estimate is it).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    gram_only = False

    def __init__(
        self,
        robust_step_size: float = 1.0,
        warmup_steps: int = 0,
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.robust_step_size = positive_float("ExcessMTL", "robust_step_size", robust_step_size)
        self.warmup_steps = whole_number("ExcessMTL", "warmup_steps", warmup_steps, minimum=0)

    def build_state(self, layout: TaskLayout) -> None:
        size = layout.num_units
        self.width = tracked_width(self, layout)
        self.squared_sums = self.add_weight(
            name="squared_sums", shape=(size, self.width), initializer="zeros", trainable=False
        )
        self.baseline_risks = self.add_weight(
            name="baseline_risks", shape=(size,), initializer="zeros", trainable=False
        )
        self.warmup_risks = self.add_weight(name="warmup_risks", shape=(size,), initializer="zeros", trainable=False)
        self.simplex_weights = self.add_weight(
            name="simplex_weights", shape=(size,), initializer=keras.initializers.Constant(1.0 / size), trainable=False
        )
        self.steps_done = self.add_weight(name="steps_done", shape=(), initializer="zeros", trainable=False)

    def propose_direction(
        self, gradients: tf.Tensor, coordinate_weights: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, Callable[[], Any]]:
        squares = tf.square(gradients)
        if self.level == "representation":  # [K, B·D] → per feature of h, summed over the rows
            squares = tf.reduce_sum(tf.reshape(squares, [tf.shape(squares)[0], -1, self.width]), axis=1)
        squared_sums = self.squared_sums + squares
        risks = tf.reduce_sum(squares / tf.sqrt(squared_sums + ADAGRAD_EPSILON), axis=1)
        in_warmup = self.steps_done < self.warmup_steps
        warmup_risks = self.warmup_risks + tf.where(in_warmup, risks, 0.0)
        first_weighted = tf.equal(self.steps_done, float(self.warmup_steps))
        started = warmup_risks / self.warmup_steps if self.warmup_steps else risks
        baseline = tf.where(first_weighted, started, self.baseline_risks)
        relative = tf.where(baseline > 0, risks / tf.where(baseline > 0, baseline, 1.0), 0.0)
        moved = tf.nn.softmax(tf.math.log(self.simplex_weights) + self.robust_step_size * relative)
        weights = tf.where(in_warmup, tf.convert_to_tensor(self.simplex_weights), moved)

        def commit() -> None:
            self.squared_sums.assign(squared_sums)
            self.warmup_risks.assign(warmup_risks)
            self.baseline_risks.assign(baseline)
            self.simplex_weights.assign(weights)
            self.steps_done.assign_add(1.0)

        return tf.linalg.matvec(gradients, weights, transpose_a=True), weights, commit

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "robust_step_size": self.robust_step_size, "warmup_steps": self.warmup_steps}
