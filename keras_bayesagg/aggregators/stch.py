"""STCH, smooth Tchebycheff scalarization (Lin, Zhang, Yang, Zhang & Zhang, ICML 2024)."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._scalarization import LossScalarization, per_unit_vector
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import optional_vector, positive_float


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class STCH(LossScalarization):
    """Smooth Tchebycheff: μ log Σ_k exp(λ_k (L_k - z_k) / μ) (the paper's Eq. 8).

    A smooth approximation of the weighted worst case max_k λ_k (L_k - z_k), within μ log K of
    it, and tighter as μ → 0. The update is Σ_k w_k ∇L_k with w = λ ⊙ softmax(λ ⊙ (L - z) / μ):
    the units furthest above their ideal value z_k get most of the weight. These w are the
    task weights. The logsumexp is evaluated stably at any loss scale. Units without labels in
    the batch are left out of the sum.

    The paper's multi-task experiments (and LibMTL's `STCH`) apply the formula to log losses
    divided by a nadir point measured in warm-up epochs and multiply by K; this class is the
    scalarization itself, as in the paper's Eq. 8 and TorchJD's `STCH`. Pass `reference` to set
    the ideal point.

    Args:
        mu: μ > 0, the smoothing (paper: 0.01-1; smaller is closer to the maximum).
        preference: λ, one entry ≥ 0 per task unit (in layout order); None = uniform 1/K.
        reference: z, the ideal point, one entry per task unit; None = 0.
    """

    def __init__(
        self,
        mu: float = 1.0,
        preference: Sequence[float] | None = None,
        reference: Sequence[float] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.mu = positive_float("STCH", "mu", mu)
        self.preference = optional_vector("STCH", "preference", preference, nonnegative=True)
        self.reference = optional_vector("STCH", "reference", reference)

    def build_state(self, layout: TaskLayout) -> None:
        self.unit_preference = per_unit_vector("STCH", "preference", self.preference, layout, 1.0 / layout.num_units)
        self.unit_reference = per_unit_vector("STCH", "reference", self.reference, layout, 0.0)

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        preference = tf.constant(self.unit_preference, tf.float32)
        exponents = preference * (losses - tf.constant(self.unit_reference, tf.float32)) / self.mu
        # An unlabelled unit gets an exponent far below the others: exp(-1e30) = 0 in the sum.
        exponents = tf.where(labelled, exponents, tf.fill(tf.shape(exponents), -1e30))
        value = self.mu * tf.reduce_logsumexp(exponents)
        return tf.where(tf.reduce_any(labelled), value, 0.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mu": self.mu,
            "preference": None if self.preference is None else list(self.preference),
            "reference": None if self.reference is None else list(self.reference),
        }
