"""What a head serves beyond its point prediction: the posterior state behind `predict_with_uncertainty`.

Every head owns this state from the model's build, whatever aggregator is compiled, so the model's
weight list depends on its tasks alone and every Keras tool that saves, copies or restores weights
(`.keras`, `.weights.h5`, `get_weights`, `tf.train.Checkpoint`, EarlyStopping) carries it. BayesAgg
writes it at each epoch-end refresh; serving only reads it. Forms per task kind (a head's `ServedState`
subclass decides its variables and its predictive outputs):

- regression (u outputs): noise variance σ² [u] and posterior covariance [u, D, D] of the head's weights;
- binary set (u outputs): covariance [u, D+1, D+1] per output (bias last; no cross terms);
- multiclass (C classes), dense: the full covariance [1, C(D+1), C(D+1)] of the head (row-major (class, feature));
- multiclass, Kronecker-factored: Σ = (Q_C ⊗ Q_D) diag(vec v) (Q_C ⊗ Q_D)ᵀ as its class basis Q_C [C, C],
  feature basis Q_D [D+1, D+1] and eigenvalue grid v [C, D+1], O(C² + D²) values.

Each has a ready flag (1 once written). The form is chosen at build from the head's shape and the model's
`uncertainty_state_mb` alone (`choose_form`): the first form of the kind that fits (dense, then factored);
none when no form fits (its uncertainty is not served). Any multiclass posterior writes into either form:
a factored one into a dense state as its dense product, a dense one into a factored state as its projection
(`predictive.factored_from_dense`). Formulas: `keras_bayesagg.bayes.predictive` and docs/uncertainty.md.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.bayes import kronecker, predictive
from keras_bayesagg.bayes.classification import with_bias_feature

BYTES_PER_VALUE = 4  # float32


class ServedState:
    """Base: the covariance of the head's weights (variables per form), a ready flag, and the outputs they give."""

    kind = ""
    form = "dense"

    def __init__(self, head: keras.layers.Layer, units: int, dim: int) -> None:
        self.units, self.dim = units, dim
        self.parts: dict[str, keras.Variable] = {}
        for key, shape in self.shapes(units, dim).items():
            self.parts[key] = head.add_weight(name=f"served_{key}", shape=shape, initializer="zeros", trainable=False)
        self.noise_variance = self._extra_variables(head)
        self.ready = head.add_weight(name="served_ready", shape=(), initializer="zeros", trainable=False)
        # Attributes of the head too: TensorFlow checkpoints track a layer's variables through its attributes.
        for key, variable in self.parts.items():
            setattr(head, f"served_{key}", variable)
        head.served_ready = self.ready
        if self.noise_variance is not None:
            head.served_noise_variance = self.noise_variance

    @classmethod
    def shapes(cls, units: int, dim: int) -> dict[str, tuple[int, ...]]:
        """The covariance's variables {name: shape}, in creation order (dense forms: one, "covariance")."""
        return {"covariance": cls.covariance_shape(units, dim)}

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def size_in_bytes(cls, units: int, dim: int) -> int:
        return BYTES_PER_VALUE * sum(math.prod(shape) for shape in cls.shapes(units, dim).values())

    @property
    def covariance(self) -> keras.Variable:
        return self.parts["covariance"]

    def _extra_variables(self, head: keras.layers.Layer) -> Any:
        return None

    @property
    def variables(self) -> list[keras.Variable]:
        extra = [self.noise_variance] if self.noise_variance is not None else []
        return [*self.parts.values(), *extra, self.ready]

    def write(self, covariance: Any, noise_variance: tf.Tensor | None = None) -> None:
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


def _class_outputs(name: str, logits: tf.Tensor, covariance: tf.Tensor) -> dict[str, tf.Tensor]:
    """Probabilities and entropy of a softmax head from its logits [B, C] and their covariance [B, C, C]."""
    probabilities = predictive.mean_field_softmax(tf.cast(logits, tf.float32), covariance)
    entropy = predictive.categorical_entropy(probabilities)[:, None]
    return {f"{name}/probabilities": probabilities, f"{name}/entropy": entropy}


class MulticlassServedState(ServedState):
    """The dense covariance of a softmax head; a factored posterior is written as its dense product."""

    kind = "multiclass"

    @classmethod
    def covariance_shape(cls, units: int, dim: int) -> tuple[int, ...]:
        size = units * (dim + 1)
        return (1, size, size)

    def write(self, covariance: Any, noise_variance: tf.Tensor | None = None) -> None:
        if isinstance(covariance, predictive.FactoredCovariance):  # Q diag(v) Qᵀ, exact
            basis = kronecker.KroneckerBasis(covariance.classes, covariance.features)
            covariance = kronecker.dense_precision(basis, covariance.eigenvalues)[None]
        super().write(covariance)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        extended = with_bias_feature(tf.cast(features, tf.float32))
        covariance = predictive.logit_covariance(extended, tf.convert_to_tensor(self.covariance)[0], self.units)
        return _class_outputs(name, logits, covariance)


class KroneckerServedState(ServedState):
    """The Kronecker-factored covariance of a softmax head (for heads whose dense one exceeds the limit); a dense
    posterior (BayesAgg's full GGN) is written as its projection on this form."""

    kind = "multiclass"
    form = "kronecker"

    @classmethod
    def shapes(cls, units: int, dim: int) -> dict[str, tuple[int, ...]]:
        width = dim + 1
        return {
            "class_basis": (units, units),
            "feature_basis": (width, width),
            "covariance_eigenvalues": (units, width),
        }

    def factored(self) -> predictive.FactoredCovariance:
        return predictive.FactoredCovariance(*(tf.convert_to_tensor(variable) for variable in self.parts.values()))

    def write(self, covariance: Any, noise_variance: tf.Tensor | None = None) -> None:
        if not isinstance(covariance, predictive.FactoredCovariance):
            size = self.units * (self.dim + 1)
            covariance = predictive.factored_from_dense(tf.reshape(covariance, [size, size]), self.units)
        for variable, value in zip(self.parts.values(), covariance):
            variable.assign(tf.cast(value, variable.dtype))
        self.ready.assign(1.0)

    def outputs(self, name: str, features: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        extended = with_bias_feature(tf.cast(features, tf.float32))
        return _class_outputs(name, logits, predictive.factored_logit_covariance(extended, self.factored()))


FORMS: dict[str, tuple[type[ServedState], ...]] = {
    "regression": (RegressionServedState,),
    "binary": (BinaryServedState,),
    "multiclass": (MulticlassServedState, KroneckerServedState),
}


def choose_form(kind: str, units: int, dim: int, limit_mb: float | None) -> tuple[type[ServedState] | None, float]:
    """The first form of `kind` whose state fits `limit_mb` (None: any size), and its size in MB (1e6 bytes);
    (None, the smallest form's size) when none fits. It depends on the head's shape and the limit only."""
    sizes = [(form, form.size_in_bytes(units, dim) / 1e6) for form in FORMS[kind]]
    for form, size in sizes:
        if limit_mb is None or size <= limit_mb:
            return form, size
    return None, min(size for _, size in sizes)
