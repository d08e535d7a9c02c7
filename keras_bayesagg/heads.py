"""The linear head of a task: its kernel and bias, an override of its kernel (regression), and its served state.

Everything a head's predictions and served uncertainty depend on is created here, at the model's build,
whatever aggregator is compiled, so the model's weight list depends on its tasks alone:
- regression heads have an override (a non-trainable kernel and an on/off switch): BayesAgg's paper rule
  predicts with the full-data posterior mean, which BayesAgg switches on after its warm-up; recompiling
  with an aggregator that does not override folds it back into kernel and bias (`fold_override`);
- every head has a `ServedState` (`served_state.py`) unless the model's `uncertainty_state_mb` is too small
  for it; a multiclass head whose dense covariance is over the limit gets the Kronecker-factored form.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.served_state import FORMS, ServedState, choose_form

LEGACY_COUNTS = (2, 4)  # version 0.1.0 / 0.2.0 files: kernel, bias (and the override pair)


class LinearHead(keras.layers.Layer):
    """A float32 linear layer z = h·K + b (the head of one task).

    Args:
        units: outputs (classes for a multiclass head).
        kind: the task kind ("regression", "binary", "multiclass"); None: a plain head without served state.
        uncertainty_state_mb: the largest served state to create, in MB (None: any size).
    """

    def __init__(
        self, units: int, kind: str | None = None, uncertainty_state_mb: float | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("dtype", "float32")
        kwargs.pop("with_posterior", None)  # configs of version 0.1.0
        super().__init__(**kwargs)
        self.units = int(units)
        self.kind = kind
        self.uncertainty_state_mb = uncertainty_state_mb
        self.override_kernel: keras.Variable | None = None
        self.override_active: keras.Variable | None = None
        self.served: ServedState | None = None
        self.served_state_skipped_mb: float | None = None  # the size it would have had, when over the limit

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dim = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(dim, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        if self.kind == "regression":
            self.override_kernel = self.add_weight(
                name="override_kernel", shape=(dim, self.units), initializer="zeros", trainable=False
            )
            self.override_active = self.add_weight(
                name="override_active", shape=(), initializer="zeros", trainable=False
            )
        if self.kind in FORMS:  # the form depends on the head's shape and the limit only, never on the aggregator
            form, size = choose_form(self.kind, self.units, dim, self.uncertainty_state_mb)
            if form is not None:
                self.served = form(self, self.units, dim)
            else:
                self.served_state_skipped_mb = size

    @property
    def has_override(self) -> bool:
        return self.override_kernel is not None

    def set_override(self, kernel: tf.Tensor) -> None:
        """Predict h·kernel (no bias) from now on; the trainable kernel and bias get no gradient."""
        self.override_kernel.assign(tf.cast(kernel, self.override_kernel.dtype))
        self.override_active.assign(1.0)

    def fold_override(self) -> None:
        """Make kernel and bias predict what the head predicts now and switch the override off, so an aggregator
        that does not override this head trains it from today's predictions on."""
        if not self.has_override or float(self.override_active.numpy()) == 0.0:
            return
        kernel, bias = self.kernel_and_bias()
        self.kernel.assign(kernel)
        self.bias.assign(bias)
        self.override_active.assign(0.0)

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
        # Files of versions 0.1.0 and 0.2.0 hold kernel and bias, and the override pair when the model was
        # compiled with BayesAgg (0.1.0: every regression head). The served state is not in them: it stays as
        # it is (the aggregator, loaded before the heads, hands over what those versions kept; see BayesAgg).
        saved = len(list(store.keys()))
        if saved == len(self.weights) or saved not in LEGACY_COUNTS:
            super().load_own_variables(store)
            return
        self.kernel.assign(store["0"])
        self.bias.assign(store["1"])
        if self.has_override:
            self.override_kernel.assign(store["2"] if saved == 4 else tf.zeros_like(self.override_kernel))
            self.override_active.assign(store["3"] if saved == 4 else 0.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "kind": self.kind,
            "uncertainty_state_mb": self.uncertainty_state_mb,
        }
