"""Shared machinery of the gradient-based aggregators (MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL).

Each of these methods turns the K task gradients into one update direction d = Σ_k w_k g_k,
with weights w that depend only on the Gram matrix M = [⟨g_k, g_l⟩] (and, for PCGrad, a random
task order). So a method only implements `combination_weights(gram)`; this base class
computes the Gram matrix and the direction at the chosen level:

- level="representation" (default): g_k is the gradient of L_k w.r.t. the batch of shared
  representations, i.e. the per-sample gradients G[:, k, :] / B flattened to a B·D vector
  (G[:, k, :] / n_k with missing labels: L_k is the mean over the unit's n_k present labels).
  It comes for free from the linear heads (no extra backward pass) and the trunk then gets
  d reshaped to [B, D] by one backward pass, as with linear scalarization.
- level="parameters": g_k = ∂L_k/∂θ over the trunk's trainable variables θ, as in the
  papers. Costs one backward pass through the trunk per task unit plus a [K, P] matrix.

Heads always get the ordinary gradient of Σ_k L_k.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from keras_bayesagg.aggregators.base import (
    Aggregator,
    AggregatorInputs,
    ParameterAggregation,
    RepresentationAggregation,
    TaskLayout,
    _no_commit,
)
from keras_bayesagg.validation import one_of

LEVELS = ("representation", "parameters")


def representation_gram(loss_gradients: tf.Tensor) -> tf.Tensor:
    """M_kl = ⟨g_k, g_l⟩ over the flattened batch, g_k = ∂L_k/∂h (`AggregatorInputs.loss_gradients`): [K, K]."""
    return tf.einsum("bkd,bld->kl", loss_gradients, loss_gradients)


def repetition_scale(inputs: AggregatorInputs) -> tf.Tensor:
    """1/√ω_i [B, 1] with ω_i = max_k w_ik: a row of weight ω stands for ω copies, so inner products and norms over
    the batch weigh it by ω (its rows of G already hold one factor w); 0 for rows of weight 0 (their G is 0)."""
    multiplicity = tf.reduce_max(inputs.presence(), axis=1, keepdims=True)
    return tf.where(multiplicity > 0.0, 1.0 / tf.sqrt(tf.where(multiplicity > 0.0, multiplicity, 1.0)), 0.0)


def representation_direction(loss_gradients: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Σ_k w_k g_k: the combined representation gradient, [B, D]."""
    return tf.einsum("k,bkd->bd", tf.cast(weights, loss_gradients.dtype), loss_gradients)


class GradientCombination(Aggregator):
    """Base class: a direction Σ_k w_k g_k with weights computed from the Gram matrix of the g_k."""

    gram_only: bool = True  # False: `propose_direction` needs the gradients, not just their Gram matrix

    def __init__(self, level: str = "representation", name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.level = one_of(type(self).__name__, "level", level, LEVELS)
        self.needs_task_gradients = level == "representation"
        self.needs_parameter_gradients = level == "parameters"

    def combination_weights(self, gram: tf.Tensor) -> tf.Tensor:
        """w [K] (float32) from the Gram matrix M [K, K] of the task gradients."""
        raise NotImplementedError

    def propose_weights(self, gram: tf.Tensor) -> tuple[tf.Tensor, Callable[[], Any]]:
        """(w, the method's state writes); stateful methods (random orders, cached weights) override it."""
        return self.combination_weights(gram), _no_commit

    def propose_direction(
        self, gradients: tf.Tensor, coordinate_weights: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor | None, Callable[[], Any]]:
        """(direction [N], task weights [K] or None, state writes) from the K task gradients `gradients` [K, N].

        `coordinate_weights` [N]: at level="representation", each coordinate's repetition count (its row's
        ω_i = max_k w_ik; sample weights), for methods that count coordinates (TrimmedMean's task shares);
        None at level="parameters".

        Methods that are not a weighting of the gradients by their Gram matrix alone (sign dropout, robust
        means, projections of the gradients themselves) override this and set `gram_only = False`; the
        default is `propose_weights` on M = G Gᵀ and d = Gᵀ w.
        """
        weights, commit = self.propose_weights(tf.matmul(gradients, gradients, transpose_b=True))
        weights = tf.cast(weights, tf.float32)
        return tf.linalg.matvec(gradients, weights, transpose_a=True), weights, commit

    def aggregate(self, inputs: AggregatorInputs) -> RepresentationAggregation | ParameterAggregation:
        objective = tf.reduce_sum(inputs.losses)
        if self.level == "representation":
            if inputs.task_gradients is None:
                raise ValueError(f"{type(self).__name__}(level='representation') needs task_gradients.")
            # Sample weights are repetition counts: combine in the space where row i is ω_i copies (rows · 1/√ω_i,
            # an isometry), then map the direction back (· √ω_i). With weights 0/1 both scales are 1.
            scale = repetition_scale(inputs)
            loss_gradients = tf.stop_gradient(tf.cast(inputs.loss_gradients(), tf.float32)) * scale[:, :, None]
            if not self.gram_only:  # the method needs the K gradients themselves: [K, B·D]
                rows, units, width = tf.unstack(tf.shape(loss_gradients))
                flat = tf.reshape(tf.transpose(loss_gradients, [1, 0, 2]), [units, rows * width])
                multiplicity = tf.reduce_max(inputs.presence(), axis=1)  # ω_i [B]
                coordinate_weights = tf.repeat(multiplicity, width)  # [B·D], row-major like `flat`
                direction, weights, commit = self.propose_direction(flat, coordinate_weights)
                return RepresentationAggregation(
                    objective=objective,
                    representation_gradient=tf.math.divide_no_nan(tf.reshape(direction, [rows, width]), scale),
                    task_weights=weights,
                    commit=commit,
                )
            weights, commit = self.propose_weights(representation_gram(loss_gradients))
            weights = tf.cast(weights, tf.float32)
            return RepresentationAggregation(
                objective=objective,
                representation_gradient=tf.math.divide_no_nan(representation_direction(loss_gradients, weights), scale),
                task_weights=weights,
                commit=commit,
            )
        if inputs.parameter_gradients is None:
            raise ValueError(f"{type(self).__name__}(level='parameters') needs parameter_gradients.")
        parameter_gradients = tf.stop_gradient(tf.cast(inputs.parameter_gradients, tf.float32))
        direction, weights, commit = self.propose_direction(parameter_gradients)
        return ParameterAggregation(
            objective=objective, parameter_gradient=direction, task_weights=weights, commit=commit
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "level": self.level}


def tracked_width(owner: GradientCombination, layout: TaskLayout) -> int:
    """The width of per-coordinate state [K, width]: P at level="parameters", D (features of h, shared by the
    rows of a batch, whose meaning changes every step) at level="representation"."""
    if owner.level == "representation":
        return layout.representation_dim
    if layout.parameter_count <= 0:
        raise ValueError(
            f"{type(owner).__name__}(level='parameters') keeps state per trunk parameter and needs the layout's "
            "parameter_count (the model sets it; hand-made TaskLayouts must pass it)."
        )
    return layout.parameter_count
