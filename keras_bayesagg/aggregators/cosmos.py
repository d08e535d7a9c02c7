"""COSMOS (Ruchte & Grabocka, ICDM 2021): a linear scalarization pulled towards a preference direction."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators._scalarization import LossScalarization, masked_preference, per_unit_vector
from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.validation import nonnegative_float, optional_vector

TINY = 1e-12


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class COSMOS(LossScalarization):
    """COSMOS's objective (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
    Multi-Objective Learning", ICDM 2021, Eq. 4): Σ_k r_k L_k - λ cos(r, L).

    The cosine term rewards a vector of losses L that points along the preference r, so the
    model trades the tasks off in the proportions r asks for, rather than only minimizing the
    weighted sum. Its gradient: w_k = r_k - λ (r_k/(‖r‖‖L‖) - cos(r, L) L_k/‖L‖²), the task
    weights (they can be negative: a unit already ahead of its share is pushed back). Units
    without labels in the batch are left out of both terms.

    The paper also samples r from a Dirichlet distribution each step and feeds it to the network
    as an input, to learn the whole Pareto front in one model; that conditioning is the user's
    model, so here r is fixed (as in TorchJD's `COSMOS`).

    Args:
        preference: r, one entry ≥ 0 per task unit (in layout order); None = uniform 1/K.
        cosine_penalty: λ ≥ 0 (the paper uses 0.01-8 by dataset; 0 is linear scalarization).
    """

    def __init__(
        self,
        preference: Sequence[float] | None = None,
        cosine_penalty: float = 1.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.preference = optional_vector("COSMOS", "preference", preference, nonnegative=True)
        self.cosine_penalty = nonnegative_float("COSMOS", "cosine_penalty", cosine_penalty)

    def build_state(self, layout: TaskLayout) -> None:
        self.unit_preference = per_unit_vector("COSMOS", "preference", self.preference, layout, 1.0 / layout.num_units)

    def scalarize(self, losses: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
        preference = masked_preference(tf.constant(self.unit_preference, tf.float32), labelled)
        losses = tf.where(labelled, losses, tf.zeros_like(losses))
        weighted_sum = tf.reduce_sum(preference * losses)
        norms = tf.norm(preference) * tf.sqrt(tf.reduce_sum(tf.square(losses)) + TINY)
        return weighted_sum - self.cosine_penalty * weighted_sum / tf.maximum(norms, TINY)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "preference": None if self.preference is None else list(self.preference),
            "cosine_penalty": self.cosine_penalty,
        }
