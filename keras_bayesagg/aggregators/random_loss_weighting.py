"""Random loss weighting (RLW, Lin et al. 2022): fresh random task weights every step."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, ObjectiveAggregation, peek_seed
from keras_bayesagg.validation import optional_seed


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class RandomLossWeighting(Aggregator):
    """RLW (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022, Sec. 3).

    Each step draws λ̃ ~ N(0, I_K) and minimizes Σ_k λ_k L_k with λ = softmax(λ̃) (the paper's
    normal-distribution variant). The weights sum to 1, so on average the objective is the mean
    of the task losses. Draws are stateless random ops seeded from a `keras.random.SeedGenerator`
    (its state is a Keras variable), so the aggregator runs under XLA and a seed fixes the run.
    The generator's state is saved with the model, so a reloaded model continues the sequence.

    Args:
        seed: seed of the draws (None: a random seed).
    """

    def __init__(self, seed: int | None = None, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.seed = optional_seed("RandomLossWeighting", "seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed, name="rlw_seed")

    def aggregate(self, inputs: AggregatorInputs) -> ObjectiveAggregation:
        seed, advance = peek_seed(self.seed_generator)
        logits = tf.random.stateless_normal((self.layout.num_units,), seed=tf.cast(seed, tf.int32), dtype=tf.float32)
        weights = tf.nn.softmax(logits)
        return ObjectiveAggregation(
            objective=tf.reduce_sum(weights * inputs.losses), task_weights=weights, commit=advance
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}
