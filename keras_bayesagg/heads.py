"""The linear head of a task, with an optional override of its kernel.

An aggregator may ask that some heads predict with a kernel it computes (BayesAgg: the
regression heads predict with the full-data posterior mean, the paper's prediction rule). The
model then gives those heads an override: a non-trainable kernel and an on/off switch, saved
with the model, so evaluate, predict and export use it. Heads without an override have only
their kernel and bias.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class LinearHead(keras.layers.Layer):
    """A float32 linear layer z = h·K + b (the head of one task)."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("with_posterior", None)  # configs of version 0.1.0
        super().__init__(**kwargs)
        self.units = int(units)
        self.override_kernel: keras.Variable | None = None
        self.override_active: keras.Variable | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    @property
    def has_override(self) -> bool:
        return self.override_kernel is not None

    def add_override(self) -> None:
        """Create the override variables (off until `set_override`); idempotent."""
        if self.has_override:
            return
        shape = tuple(self.kernel.shape)
        # Keras locks a layer's state after `build`; the override is requested later (at compile),
        # so open the lock for these two variables, as Keras itself does to untrack a variable.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.override_kernel = self.add_weight(
                name="override_kernel", shape=shape, initializer="zeros", trainable=False
            )
            self.override_active = self.add_weight(
                name="override_active", shape=(), initializer="zeros", trainable=False
            )
        finally:
            if locked:
                self._tracker.lock()

    def set_override(self, kernel: tf.Tensor) -> None:
        """Predict h·kernel (no bias) from now on; the trainable kernel and bias get no gradient."""
        self.override_kernel.assign(tf.cast(kernel, self.override_kernel.dtype))
        self.override_active.assign(1.0)

    def kernel_and_bias(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The kernel [D, units] and bias [units] the head predicts with now."""
        kernel, bias = tf.convert_to_tensor(self.kernel), tf.convert_to_tensor(self.bias)
        if not self.has_override:
            return kernel, bias
        active = tf.convert_to_tensor(self.override_active)
        return active * tf.convert_to_tensor(self.override_kernel) + (1.0 - active) * kernel, (1.0 - active) * bias

    def weight_matrix(self) -> tf.Tensor:
        """W [units, D+1] (bias last), without gradient: the head as aggregators see it."""
        kernel, bias = self.kernel_and_bias()
        return tf.stop_gradient(tf.concat([tf.transpose(kernel), bias[:, None]], axis=1))

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        kernel, bias = self.kernel_and_bias()
        return tf.matmul(tf.cast(inputs, kernel.dtype), kernel) + bias

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """(batch, units): lets `model.summary()` show each head's output shape."""
        return (*tuple(input_shape)[:-1], self.units)

    def load_own_variables(self, store: Any) -> None:
        # A head saved with an override (kernel, switch) gets one, whatever aggregator this model is
        # compiled with now: the override is part of what the head predicts. Version 0.1.0 saved
        # such a pair for every regression head (switched off unless BayesAgg had set it).
        saved = len(list(store.keys()))
        if saved == 4 and not self.has_override:
            self.add_override()
        if saved == 2 and self.has_override:  # saved without an override: it stays off
            self.kernel.assign(store["0"])
            self.bias.assign(store["1"])
            self.override_active.assign(0.0)
            return
        super().load_own_variables(store)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}
