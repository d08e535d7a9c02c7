"""What a head serves beyond its point prediction: the posterior state behind `predict_with_uncertainty`.

Every head owns this state from the model's build, whatever aggregator is compiled, so the model's
weight list depends on its tasks alone and every Keras tool that saves, copies or restores weights
(`.keras`, `.weights.h5`, `get_weights`, `tf.train.Checkpoint`, EarlyStopping) carries it. BayesAgg
writes it at each epoch-end refresh; serving only reads it. One form per task kind (pluggable: a head's
`ServedState` subclass decides its variables and its predictive outputs):

- regression (u outputs): noise variance σ² [u] and posterior covariance [u, D, D] of the head's weights;
- binary set (u outputs): covariance [u, D+1, D+1] per output (bias last; no cross terms);
- multiclass (C classes): the full covariance [1, C(D+1), C(D+1)] of the head (row-major (class, feature)).

Each has a ready flag (1 once written). A full multiclass covariance grows as (C(D+1))²: heads whose
state would exceed the model's `uncertainty_state_mb` get none (their uncertainty is not served).
Formulas: `keras_bayesagg.bayes.predictive` and docs/uncertainty.md.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.bayes import predictive
from keras_bayesagg.bayes.classification import with_bias_feature

BYTES_PER_VALUE = 4  # float32


class ServedState:
    """Base: a covariance of the head's weights (shape per form), a ready flag, and the outputs they give."""

    kind = ""

    def __init__(self, head: keras.layers.Layer, units: int, dim: int) -> None:
        self.units, self.dim = units, dim
        self.covariance = head.add_weight(
            name="served_covariance", shape=self.covariance_shape(units, dim), initializer="zeros", trainable=False
        )
        self.noise_variance = self._extra_variables(head)
        self.ready = head.add_weight(name="served_ready", shape=(), initializer="zeros", trainable=False)
        # Attributes of the head too: TensorFlow checkpoints track a layer's variables through its attributes.
        head.served_covariance, head.served_ready = self.covariance, self.ready
        if self.noise_variance is not None:
            head.served_noise_variance = self.noise_variance

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def size_in_bytes(cls, units: int, dim: int) -> int:
        return BYTES_PER_VALUE * math.prod(cls.covariance_shape(units, dim))

    def _extra_variables(self, head: keras.layers.Layer) -> Any:
        return None

    @property
    def variables(self) -> list[keras.Variable]:
        extra = [self.noise_variance] if self.noise_variance is not None else []
        return [self.covariance, *extra, self.ready]

    def write(self, covariance: tf.Tensor, noise_variance: tf.Tensor | None = None) -> None:
        """Store a refreshed posterior (its shape: `covariance_shape`) and mark the state ready."""
        self.covariance.assign(tf.cast(covariance, self.covariance.dtype))
        if self.noise_variance is not None and noise_variance is not None:
            self.noise_variance.assign(tf.cast(noise_variance, self.noise_variance.dtype))
        self.ready.assign(1.0)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        """{"<name>/<quantity>": [B, ...]} float32 from h [B, D] and this head's logits [B, units]."""
        raise NotImplementedError


class RegressionServedState(ServedState):
    kind = "regression"

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        return (units, dim, dim)

    def _extra_variables(self, head: keras.layers.Layer) -> Any:
        return head.add_weight(name="served_noise_variance", shape=(self.units,), initializer="ones", trainable=False)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        spread = predictive.quadratic_forms(tf.cast(features, tf.float32), tf.convert_to_tensor(self.covariance))
        variance = (1.0 + spread) * tf.convert_to_tensor(self.noise_variance)[None, :]
        return {f"{name}/mean": tf.cast(logits, tf.float32), f"{name}/variance": variance}


class BinaryServedState(ServedState):
    kind = "binary"

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        return (units, dim + 1, dim + 1)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        extended = with_bias_feature(tf.cast(features, tf.float32))
        spread = predictive.quadratic_forms(extended, tf.convert_to_tensor(self.covariance))
        probabilities = predictive.probit_probability(tf.cast(logits, tf.float32), spread)
        return {f"{name}/probabilities": probabilities, f"{name}/entropy": predictive.binary_entropy(probabilities)}


class MulticlassServedState(ServedState):
    kind = "multiclass"

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        size = units * (dim + 1)
        return (1, size, size)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        extended = with_bias_feature(tf.cast(features, tf.float32))
        covariance = predictive.logit_covariance(extended, tf.convert_to_tensor(self.covariance)[0], self.units)
        probabilities = predictive.mean_field_softmax(tf.cast(logits, tf.float32), covariance)
        entropy = predictive.categorical_entropy(probabilities)[:, None]
        return {f"{name}/probabilities": probabilities, f"{name}/entropy": entropy}


FORMS: dict[str, type[ServedState]] = {
    form.kind: form for form in (RegressionServedState, BinaryServedState, MulticlassServedState)
}


def megabytes(kind: str, units: int, dim: int) -> float:
    """The served state's covariance size of one head, in MB (1e6 bytes)."""
    return FORMS[kind].size_in_bytes(units, dim) / 1e6
