"""A binary group's prior, whitened once per epoch, and the step's exact moments through it.

The refresh stores M = L_P⁻¹ of the new prior P (from the factor it computed anyway) and P's diagonal as a
fingerprint. A step takes the preconditioned path (`bayes/preconditioned.py`: one provably safe, native
factorization of I + VᵀV) only when the fingerprint still equals the prior's diagonal — so a prior restored
or loaded without its cache (a file of an earlier version, a checkpoint, a jittered refresh) falls back to
the general path — and only outside XLA. Both paths compute the same posterior (tests/test_prior_whitening.py).
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.bayes import classification, exact_moments, linalg, preconditioned
from keras_bayesagg.bayes.regression import GradientMoments


class PriorWhitening:
    """The cached inverse factor [M, n, n] and fingerprint [M, n] of one binary group's prior (owned by `owner`).

    Created after every older variable of the aggregator: files without them load and take the general path.
    """

    enabled = True  # False: always the general path (for comparisons)

    def __init__(self, owner: keras.layers.Layer, prefix: str, blocks: int, size: int, dtype: str) -> None:
        def state(name: str, shape: tuple[int, ...]) -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer="zeros", trainable=False)

        self.inverse_factor = state(f"{prefix}_prior_inverse_factor", (blocks, size, size))
        self.fingerprint = state(f"{prefix}_prior_fingerprint", (blocks, size))  # zeros: no cache yet

    @property
    def variables(self) -> list[keras.Variable]:
        return [self.inverse_factor, self.fingerprint]

    def refresh(self, posterior: classification.ClassificationPosterior) -> None:
        """Cache M = L⁻¹ of the new prior `posterior.precision` (L its factor); a block whose factor is of a
        jittered matrix gets no fingerprint, so the steps of that epoch take the general path."""
        factor, precision = posterior.precision_factor, posterior.precision
        diagonal = tf.linalg.diag_part(precision)
        size = int(precision.shape[-1])
        tolerance = 10.0 * size * float(np.finfo(precision.dtype.as_numpy_dtype).eps)
        reproduced = tf.reduce_sum(tf.square(factor), axis=-1)  # diag(LLᵀ)
        exact = tf.reduce_all(tf.abs(reproduced - diagonal) <= tolerance * tf.abs(diagonal), axis=-1)
        self.inverse_factor.assign(linalg.triangular_inverse(factor))
        self.fingerprint.assign(tf.where(exact[:, None], diagonal, tf.zeros_like(diagonal)))

    def covariance(self, prior_precision: tf.Tensor) -> tf.Tensor | None:
        """P⁻¹ = MᵀM [M, n, n] from the cache (eagerly, at the refresh: the served state's covariance without a
        second factorization of P), or None where the cache is not of `prior_precision`."""
        if not self._caches(prior_precision):
            return None
        inverse_factor = tf.convert_to_tensor(self.inverse_factor)
        covariance = tf.matmul(inverse_factor, inverse_factor, transpose_a=True)
        return 0.5 * (covariance + tf.linalg.matrix_transpose(covariance))

    def _caches(self, prior_precision: tf.Tensor) -> tf.Tensor:
        """Scalar bool: the cache was computed from this prior (its fingerprint is the prior's diagonal)."""
        return tf.reduce_all(tf.equal(tf.linalg.diag_part(prior_precision), self.fingerprint))

    def moments(
        self,
        features: tf.Tensor,
        labels: tf.Tensor,
        present: tf.Tensor,
        weights: tf.Tensor,
        prior_precision: tf.Tensor,
        prior_mean: tf.Tensor,
        general: Callable[[], tuple[GradientMoments, tf.Tensor]],
        own_rows: Callable[[tf.Tensor], tf.Tensor],
        num_nodes: int,
    ) -> tuple[GradientMoments, tf.Tensor]:
        """Exact moments [B_own, M, D] and `ok` [M]: the preconditioned path where it applies, else `general()`."""
        if not (self.enabled and preconditioned.native_kernels_apply()):
            return general()
        inverse_factor = tf.convert_to_tensor(self.inverse_factor)
        present = tf.cast(present, features.dtype)
        curvature = preconditioned.whitened_curvature(features, weights, inverse_factor, present)
        usable = self._caches(prior_precision) & preconditioned.factorization_is_safe(curvature.rows)

        def whitened() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            posterior = preconditioned.binary_posterior(
                curvature, features, labels, weights, prior_precision, prior_mean, inverse_factor, present
            )
            moments = exact_moments.binary_gradient_moments_from_inverse_factor(
                posterior.mean, posterior.inverse_factor, own_rows(features), own_rows(labels), num_nodes
            )
            return moments.mean, moments.variance, posterior.ok

        def fallback() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            moments, ok = general()
            return moments.mean, moments.variance, ok

        mean, variance, ok = tf.cond(usable, whitened, fallback)
        return GradientMoments(mean, variance), ok
