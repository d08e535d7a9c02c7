"""MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
Approach", ICLR 2023)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination, tracked_width
from keras_bayesagg.aggregators._solvers import SOLVER_DTYPE, project_onto_simplex
from keras_bayesagg.aggregators.base import AggregatorInputs, TaskLayout
from keras_bayesagg.validation import nonnegative_float, one_of, positive_float

SIMPLEX_MAPS = ("projection", "softmax")


def moco_weights(
    tracked_gram: tf.Tensor, weights: tf.Tensor, step_size: tf.Tensor, regularization: float, simplex_map: str
) -> tf.Tensor:
    """λ ← Π(λ - γ_t (YYᵀ + ρI) λ) (paper Algorithm 1), or softmax(·) in place of Π (the authors' code); float64."""
    gram, weights = tf.cast(tracked_gram, SOLVER_DTYPE), tf.cast(weights, SOLVER_DTYPE)
    moved = weights - tf.cast(step_size, SOLVER_DTYPE) * (tf.linalg.matvec(gram, weights) + regularization * weights)
    return tf.cast(project_onto_simplex(moved) if simplex_map == "projection" else tf.nn.softmax(moved), tf.float32)


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class MoCo(GradientCombination):
    """Stochastic MGDA with tracked gradients: Y ← Y - β_t(Y - G), λ ← Π(λ - γ_t(YYᵀ + ρI)λ), d = Yᵀλ.

    Tracking the task gradients by a moving average removes the bias that one mini-batch's gradients
    put into MGDA's weights; β_t = β/t^σβ and γ_t = γ/t^σγ decay with the step t. Gradients are first
    rescaled to ‖ĝ_k‖ = L_k (`loss_normalization`, the authors' code). Weights λ stay on the simplex.

    level="parameters" is the method as published: Y [K, P] is state. At level="representation" a
    gradient's coordinates are the batch's rows, which are other samples every step, so a moving average
    of them means nothing; there the Gram matrix YYᵀ is what is tracked (an average of the batches' Gram
    matrices, which estimates the same inner products) and d = Ĝᵀλ uses this batch's gradients.
    `task_weights` are λ at level="parameters" (weights of Y) and d's coefficients on the original g_k at
    level="representation".

    Differences from the authors' code (LibMTL's `MoCo`): λ is projected onto the simplex as in the
    paper (`simplex_map="softmax"` gives the code's λ ← softmax(·)); the normalization divides by ‖g_k‖
    with a zero guard instead of ‖g_k‖ + 1e-8.

    Args:
        beta: β of the tracking rate β/t^σβ (authors' 0.5).
        beta_decay: σβ of the tracking rate (authors' 0.5).
        gamma: γ of the weights' step γ/t^σγ (authors' 0.1).
        gamma_decay: σγ of the weights' step (authors' 0.5).
        regularization: ρ (authors' 0).
        loss_normalization: rescale each g_k to norm L_k first (authors' code: True).
        simplex_map: "projection" (paper) or "softmax" (authors' code).
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    gram_only = False

    def __init__(
        self,
        beta: float = 0.5,
        beta_decay: float = 0.5,
        gamma: float = 0.1,
        gamma_decay: float = 0.5,
        regularization: float = 0.0,
        loss_normalization: bool = True,
        simplex_map: str = "projection",
        level: str = "representation",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.beta = positive_float("MoCo", "beta", beta)
        if self.beta > 1.0:
            raise ValueError(f"MoCo: beta must be in (0, 1], got {beta!r}.")
        self.beta_decay = nonnegative_float("MoCo", "beta_decay", beta_decay)
        self.gamma = positive_float("MoCo", "gamma", gamma)
        self.gamma_decay = nonnegative_float("MoCo", "gamma_decay", gamma_decay)
        self.regularization = nonnegative_float("MoCo", "regularization", regularization)
        if not isinstance(loss_normalization, bool):
            raise ValueError(f"MoCo: loss_normalization must be True or False, got {loss_normalization!r}.")
        self.loss_normalization = loss_normalization
        self.simplex_map = one_of("MoCo", "simplex_map", simplex_map, SIMPLEX_MAPS)
        self._losses: tf.Tensor | None = None

    def build_state(self, layout: TaskLayout) -> None:
        size = layout.num_units
        tracked = (size, tracked_width(self, layout)) if self.level == "parameters" else (size, size)
        self.tracked = self.add_weight(name="tracked", shape=tracked, initializer="zeros", trainable=False)
        self.simplex_weights = self.add_weight(
            name="simplex_weights", shape=(size,), initializer=keras.initializers.Constant(1.0 / size), trainable=False
        )
        self.steps_done = self.add_weight(name="steps_done", shape=(), initializer="zeros", trainable=False)

    def aggregate(self, inputs: AggregatorInputs) -> Any:
        self._losses = tf.stop_gradient(tf.cast(inputs.losses, tf.float32))  # read by propose_direction
        return super().aggregate(inputs)

    def propose_direction(
        self, gradients: tf.Tensor, coordinate_weights: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, Callable[[], Any]]:
        scales = tf.ones([tf.shape(gradients)[0]])
        if self.loss_normalization:
            norms = tf.norm(gradients, axis=1)
            scales = self._losses / tf.where(norms > 0, norms, 1.0)
        normalized = gradients * scales[:, None]
        step = self.steps_done + 1.0
        tracking_rate = self.beta / step**self.beta_decay
        if self.level == "parameters":
            tracked = self.tracked - tracking_rate * (self.tracked - normalized)
            gram = tf.matmul(tracked, tracked, transpose_b=True)
        else:
            tracked = self.tracked - tracking_rate * (
                self.tracked - tf.matmul(normalized, normalized, transpose_b=True)
            )
            gram = tracked
        weights = moco_weights(
            gram, self.simplex_weights, self.gamma / step**self.gamma_decay, self.regularization, self.simplex_map
        )
        if self.level == "parameters":
            direction, reported = tf.linalg.matvec(tracked, weights, transpose_a=True), weights
        else:
            direction, reported = tf.linalg.matvec(normalized, weights, transpose_a=True), weights * scales

        def commit() -> None:
            self.tracked.assign(tracked)
            self.simplex_weights.assign(weights)
            self.steps_done.assign(step)

        return direction, reported, commit

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta": self.beta,
            "beta_decay": self.beta_decay,
            "gamma": self.gamma,
            "gamma_decay": self.gamma_decay,
            "regularization": self.regularization,
            "loss_normalization": self.loss_normalization,
            "simplex_map": self.simplex_map,
        }
