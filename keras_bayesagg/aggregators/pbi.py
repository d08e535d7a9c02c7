"""PBI, penalty-based boundary intersection (Zhang & Li, MOEA/D, IEEE TEVC 2007)."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._scalarization import LossScalarization, masked_preference, per_unit_vector
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import nonnegative_float, optional_vector

TINY = 1e-12


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class PBI(LossScalarization):
    """PBI (Zhang & Li, "MOEA/D", 2007, Sec. II-C): d_1 + θ d_2 for the losses relative to an ideal point.

    With f = L - z and the unit preference direction ŵ = w/‖w‖, d_1 = fᵀŵ is how far the losses
    are along ŵ and d_2 = ‖f - d_1 ŵ‖ how far they stray from that line; minimizing d_1 + θ d_2
    moves the losses down along the preference ray. The update is Σ_k c_k ∇L_k with
    c = ŵ + θ (f - d_1 ŵ)/d_2, the task weights (negative for a unit ahead of the ray).
    d_2 = √(‖·‖² + 1e-12), finite on the ray itself (as TorchJD's `PBI`). Units without labels
    in the batch are left out (their entries of f and w are 0).

    Args:
        preference: w, one entry ≥ 0 per task unit (in layout order); None = uniform.
        perpendicular_penalty: θ ≥ 0, the weight of d_2 (MOEA/D: 5).
        reference: z, the ideal point, one entry per task unit; None = 0 (losses are ≥ 0).
    """

    def __init__(
        self,
        preference: Sequence[float] | None = None,
        perpendicular_penalty: float = 5.0,
        reference: Sequence[float] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.preference = optional_vector("PBI", "preference", preference, nonnegative=True)
        self.perpendicular_penalty = nonnegative_float("PBI", "perpendicular_penalty", perpendicular_penalty)
        self.reference = optional_vector("PBI", "reference", reference)

    def build_state(self, layout: TaskLayout) -> None:
        self.unit_preference = per_unit_vector("PBI", "preference", self.preference, layout, 1.0)
        self.unit_reference = per_unit_vector("PBI", "reference", self.reference, layout, 0.0)

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        preference = masked_preference(tf.constant(self.unit_preference, tf.float32), labelled)
        direction = preference / tf.maximum(tf.norm(preference), TINY)
        shifted = tf.where(labelled, losses - tf.constant(self.unit_reference, tf.float32), 0.0)
        along = tf.reduce_sum(shifted * direction)
        perpendicular = shifted - along * direction
        distance = tf.sqrt(tf.reduce_sum(tf.square(perpendicular)) + TINY)
        return along + self.perpendicular_penalty * distance

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "preference": None if self.preference is None else list(self.preference),
            "perpendicular_penalty": self.perpendicular_penalty,
            "reference": None if self.reference is None else list(self.reference),
        }
