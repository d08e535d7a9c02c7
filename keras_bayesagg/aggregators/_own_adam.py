"""Adam for an aggregator's own weighting variables (FAMO's logits, GradNorm's weights).

These variables follow their method's own update rule, not the model's optimizer, so the
aggregator keeps Adam's moments as its own Keras variables (saved with the model, XLA-safe).
"""

from __future__ import annotations

import keras
import tensorflow as tf


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
        self.second_moment = owner.add_weight(name=f"{prefix}_adam_v", shape=shape, initializer="zeros", trainable=False)
        self.iterations = owner.add_weight(name=f"{prefix}_adam_t", shape=(), initializer="zeros", trainable=False)

    def step(self, variable: keras.Variable, gradient: tf.Tensor) -> tf.Tensor:
        """Assign θ ← θ - lr·m̂/(√v̂ + ε) and return the new value."""
        value = tf.convert_to_tensor(variable)
        gradient = gradient + self.weight_decay * value
        t = tf.convert_to_tensor(self.iterations) + 1.0
        m = self.beta_1 * tf.convert_to_tensor(self.first_moment) + (1.0 - self.beta_1) * gradient
        v = self.beta_2 * tf.convert_to_tensor(self.second_moment) + (1.0 - self.beta_2) * tf.square(gradient)
        m_hat = m / (1.0 - tf.pow(self.beta_1, t))
        v_hat = v / (1.0 - tf.pow(self.beta_2, t))
        new_value = value - self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon)
        self.iterations.assign(t)
        self.first_moment.assign(m)
        self.second_moment.assign(v)
        variable.assign(new_value)
        return new_value
