"""Coordinate-wise trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018)."""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._gradient_methods import GradientCombination
from keras_bayesagg.aggregators.base import TaskLayout, _no_commit
from keras_bayesagg.validation import whole_number


def trimmed_mean(
    gradients: tf.Tensor, trim_number: int, coordinate_weights: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """(direction [N], task shares [K]) of the coordinate-wise mean of `gradients` [K, N] without the
    `trim_number` largest and smallest values of each coordinate.

    The share of task k is the mean over coordinates of its coefficient (1/(K - 2b) where it is kept,
    0 where it is trimmed): the shares sum to 1, and they are 1/K each when nothing is trimmed. With
    `coordinate_weights` [N] (repetition counts of the coordinates' rows) it is the weighted mean, so a row of
    weight 2 counts as its two copies and a row of weight 0 not at all.
    """
    size = gradients.shape[0]
    kept = size - 2 * trim_number
    by_coordinate = tf.transpose(gradients)  # [N, K]
    order = tf.argsort(by_coordinate, axis=1, stable=True)[:, trim_number : size - trim_number]
    kept_values = tf.gather(by_coordinate, order, batch_dims=1)
    direction = tf.reduce_mean(kept_values, axis=1)
    if coordinate_weights is None:
        coordinate_weights = tf.ones_like(direction)
    coordinate_weights = tf.cast(coordinate_weights, tf.float32)
    flat_order = tf.reshape(order, [-1])
    kept_weights = tf.reshape(tf.repeat(coordinate_weights[:, None], kept, axis=1), [-1])
    counts = tf.math.unsorted_segment_sum(kept_weights, flat_order, size)
    return direction, tf.math.divide_no_nan(counts, tf.reduce_sum(coordinate_weights) * float(kept))


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class TrimmedMean(GradientCombination):
    """Each coordinate of d is the mean of the K task gradients' values there, without the b largest and the
    b smallest (b = `trim_number`; paper Definition 2 with β = b/K). Robust to b arbitrary gradients per
    coordinate; b = 0 is the average. Not a weighting of whole gradients, so it needs the [K, N] gradients
    themselves (a sort per coordinate, O(N·K log K)). K identical gradients give g. `task_weights` are
    each task's share of the kept values (mean coefficient over the coordinates; they sum to 1).

    Args:
        trim_number: b ≥ 0, values dropped at each end of every coordinate; needs K ≥ 2b + 1.
        level: "representation" (default) or "parameters" (see `_gradient_methods`).
    """

    gram_only = False

    def __init__(
        self, trim_number: int = 1, level: str = "representation", name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(level=level, name=name, **kwargs)
        self.trim_number = whole_number("TrimmedMean", "trim_number", trim_number, minimum=0)

    def build_state(self, layout: TaskLayout) -> None:
        if layout.num_units < 2 * self.trim_number + 1:
            raise ValueError(
                f"TrimmedMean: trim_number={self.trim_number} needs at least {2 * self.trim_number + 1} task units "
                f"(2·trim_number + 1); this model has {layout.num_units}."
            )
        self.num_units = layout.num_units

    def propose_direction(
        self, gradients: tf.Tensor, coordinate_weights: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor | None, Callable[[], Any]]:
        gradients = tf.ensure_shape(gradients, [self.num_units, None])
        direction, shares = trimmed_mean(gradients, self.trim_number, coordinate_weights)
        return direction, shares, _no_commit

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "trim_number": self.trim_number}
