"""One multiclass head of BayesAgg with the Kronecker-factored posterior (`multiclass_posterior="kronecker"`).

The same interface as `ClassificationGroup` (labels, presence, weights, moments, refresh), with state
O(C² + D² + C·D) instead of C(D+1) square: the eigenbases Q_A [C, C] and Q_G [D+1, D+1] of the full-data
Kronecker factors, the full-data precision λ_F [C, D+1] in that basis and the full-data mean [C, D+1]
(math: `keras_bayesagg.bayes.kronecker`, derivation: docs/method.md). Served uncertainty: at each refresh the
head's served state (`served_state.py`) gets Q_A, Q_G and 1/λ, kept factored, or as the dense covariance
Q diag(1/λ) Qᵀ when that fits the model's `uncertainty_state_mb` (`predictive_part.py`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators.bayesagg.options import resolve_draws_per_rotation
from keras_bayesagg.bayes import kronecker, kronecker_draws
from keras_bayesagg.bayes.regression import GradientMoments

FULL_DATA_CHUNK_ROWS = 4096
EVIDENCE_ITERATIONS = 10


class KroneckerGroup:
    """Prior variables and per-step math of one multiclass head (variables owned by `owner`)."""

    multiclass = True
    kronecker = True
    exact = False
    blocks = 1

    def __init__(
        self,
        owner: keras.layers.Layer,
        prefix: str,
        task_units: Mapping[str, int],
        dim: int,
        prior_variance: float | None,
        dtype: str,
        initial_prior_variance: float,
        columns: Sequence[int] = (),
        draws_per_rotation: int | str = 1,
    ) -> None:
        self.task_units, self.columns, self.prefix = dict(task_units), tuple(columns), prefix
        self.draws_per_rotation = draws_per_rotation  # K, or "auto": resolved per batch size (`draws_at`)
        self.expected_batch: int | None = None  # fit's batch size, where the traced one is not static
        self.prior_variance, self.dtype = prior_variance, dtype
        (self.label_columns,) = self.task_units.values()
        self.staged_columns = self.label_columns + len(self.columns)
        classes, width = self.label_columns, dim + 1
        start = initial_prior_variance if prior_variance is None else prior_variance

        def state(name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False)

        self.class_basis = state(f"{prefix}_kronecker_class_basis", (classes, classes), "identity")
        self.feature_basis = state(f"{prefix}_kronecker_feature_basis", (width, width), "identity")
        self.prior_precision = state(
            f"{prefix}_kronecker_prior_precision", (classes, width), keras.initializers.Constant(1.0 / start)
        )
        self.prior_mean = state(f"{prefix}_kronecker_prior_mean", (classes, width))
        self.chosen_prior_variance = None
        if prior_variance is None:
            self.chosen_prior_variance = state(
                f"{prefix}_chosen_prior_variance", (1,), keras.initializers.Constant(initial_prior_variance)
            )

    def basis(self) -> kronecker.KroneckerBasis:
        return kronecker.KroneckerBasis(
            tf.convert_to_tensor(self.class_basis), tf.convert_to_tensor(self.feature_basis)
        )

    def labels(self, labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
        (name,) = self.task_units
        return tf.cast(labels[name], tf.float32)

    def presence(self, present: tf.Tensor) -> tf.Tensor:
        return tf.gather(tf.cast(present, tf.float32), tf.constant(self.columns, tf.int32), axis=1)

    def weights(self, head_weights: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The head as [C, D+1] (bias last)."""
        (name,) = self.task_units
        return tf.cast(head_weights[name], self.dtype)

    def moments(
        self,
        features: tf.Tensor,
        labels: tf.Tensor,
        present: tf.Tensor,
        weights: tf.Tensor,
        num_samples: int,
        seed: tf.Tensor,
        own_rows: Callable[[tf.Tensor], tf.Tensor] | None = None,
    ) -> tuple[dict[str, GradientMoments], dict[str, tf.Tensor]]:
        """Gradient moments [B, 1, D] under the batch posterior of the present rows, and whether it is finite.
        `own_rows` (several replicas): the posterior is of all rows, the moments of the rows it selects only (the
        draws are shared by all rows and chunked for the whole batch, so a row's moments do not depend on it).

        `kronecker.batch_posterior` and `kronecker.gradient_moments`, kept in the feature eigenbasis
        (`kronecker_draws`: the same posterior and estimator with fewer [C, C] products)."""
        basis = self.basis()
        labels = tf.cast(labels, self.dtype)
        rotated_mean, precision, ok = kronecker_draws.rotated_batch_posterior(
            features,
            labels,
            weights,
            basis.classes,
            basis.features,
            tf.convert_to_tensor(self.prior_precision),
            tf.convert_to_tensor(self.prior_mean),
            tf.cast(present[:, 0], self.dtype),
        )
        own = own_rows or (lambda tensor: tensor)
        moments = kronecker_draws.draw_moments(
            rotated_mean,
            tf.math.rsqrt(precision),
            basis.classes,
            basis.features,
            own(features),
            own(labels),
            num_samples,
            seed,
            self.draws_at(num_samples, features.shape[0] or self.expected_batch),
            batch_hint=features.shape[0],
        )
        (name,) = self.task_units
        return {name: moments}, {name: ok}

    def draws_at(self, num_samples: int, batch: int | None) -> int:
        """K for S = `num_samples` draws on (global) batches of `batch` rows."""
        return resolve_draws_per_rotation(self.draws_per_rotation, num_samples, "kronecker", self.label_columns, batch)

    def _chunks(self, features: np.ndarray, labels: np.ndarray, present: np.ndarray):
        for start in range(0, len(features), FULL_DATA_CHUNK_ROWS):
            rows = slice(start, start + FULL_DATA_CHUNK_ROWS)
            yield (tf.constant(array[rows], self.dtype) for array in (features, labels, present[:, 0]))

    def refresh(self, features: np.ndarray, staged: np.ndarray, weights: tf.Tensor) -> None:
        """Prior of the next epoch: factors and basis over all present rows (one pass), the eigenbasis
        curvature (a second pass), then the Newton posterior at `weights` with prior N(0, γI)."""
        labels, present = staged[:, : self.label_columns], staged[:, self.label_columns :]
        factors = None
        for chunk_features, chunk_labels, chunk_present in self._chunks(features, labels, present):
            chunk = kronecker.kronecker_factors(chunk_features, chunk_labels, weights, chunk_present)
            factors = chunk if factors is None else kronecker.add_factors(factors, chunk)
        basis = kronecker.kronecker_basis(factors)
        curvature = tf.add_n(
            [
                kronecker.eigenbasis_curvature(chunk_features, weights, basis, chunk_present)
                for chunk_features, _, chunk_present in self._chunks(features, labels, present)
            ]
        )
        if self.chosen_prior_variance is None:
            prior_variance = tf.constant(self.prior_variance, self.dtype)
        else:
            prior_variance = kronecker.evidence_prior_variance(
                factors, curvature, basis, weights, tf.convert_to_tensor(self.chosen_prior_variance)[0]
            )
        posterior = kronecker.full_data_posterior(factors, curvature, basis, weights, prior_variance)
        if not bool(posterior.ok.numpy()):
            (name,) = self.task_units
            raise FloatingPointError(
                f"BayesAgg: the Kronecker full-data posterior of task '{name}' is not finite; the trunk's "
                "representation or the head's weights have non-finite or huge values."
            )
        self.class_basis.assign(basis.classes)
        self.feature_basis.assign(basis.features)
        self.prior_precision.assign(posterior.precision)
        self.prior_mean.assign(posterior.mean)
        if self.chosen_prior_variance is not None:
            self.chosen_prior_variance.assign(tf.reshape(prior_variance, [1]))
