"""Adam for an aggregator's own weighting variables (FAMO's logits, GradNorm's weights).

These variables follow their method's own update rule, not the model's optimizer, so the
aggregator keeps Adam's moments as its own Keras variables (saved with the model, XLA-safe).
A step is *proposed* (new values as tensors) and written only by `commit`, so a skipped train
step leaves them untouched.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf


class AdamProposal(NamedTuple):
    """The values after one Adam step: the variable, both moments and the step count."""

    value: tf.Tensor
    first_moment: tf.Tensor
    second_moment: tf.Tensor
    iterations: tf.Tensor


class OwnAdam:
    """Adam (Kingma & Ba 2015) with coupled L2 decay (g + γ·θ, as torch.optim.Adam's weight_decay)."""

    def __init__(
        self,
        owner: keras.layers.Layer,
        prefix: str,
        shape: tuple[int, ...],
        learning_rate: float,
        weight_decay: float = 0.0,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.first_moment = owner.add_weight(name=f"{prefix}_adam_m", shape=shape, initializer="zeros", trainable=False)
        self.second_moment = owner.add_weight(
            name=f"{prefix}_adam_v", shape=shape, initializer="zeros", trainable=False
        )
        self.iterations = owner.add_weight(name=f"{prefix}_adam_t", shape=(), initializer="zeros", trainable=False)

    def unchanged(self, variable: keras.Variable) -> AdamProposal:
        """The current values (a step that does not move the variable)."""
        return AdamProposal(
            *(tf.convert_to_tensor(v) for v in (variable, self.first_moment, self.second_moment, self.iterations))
        )

    def propose(self, variable: keras.Variable, gradient: tf.Tensor) -> AdamProposal:
        """θ - lr·m̂/(√v̂ + ε) and the new moments, without writing anything."""
        value = tf.convert_to_tensor(variable)
        gradient = gradient + self.weight_decay * value
        t = tf.convert_to_tensor(self.iterations) + 1.0
        m = self.beta_1 * tf.convert_to_tensor(self.first_moment) + (1.0 - self.beta_1) * gradient
        v = self.beta_2 * tf.convert_to_tensor(self.second_moment) + (1.0 - self.beta_2) * tf.square(gradient)
        m_hat = m / (1.0 - tf.pow(self.beta_1, t))
        v_hat = v / (1.0 - tf.pow(self.beta_2, t))
        return AdamProposal(value - self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon), m, v, t)

    def commit(self, variable: keras.Variable, proposal: AdamProposal, value: tf.Tensor | None = None) -> None:
        """Write a proposal (with `value` instead of `proposal.value` when the method post-processes it)."""
        self.iterations.assign(proposal.iterations)
        self.first_moment.assign(proposal.first_moment)
        self.second_moment.assign(proposal.second_moment)
        variable.assign(proposal.value if value is None else value)
