"""Inverse-variance aggregation of Gaussian task gradients (SPEC steps 3-4; paper Eq. 9)."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

VARIANCE_FLOOR = 1e-8


class InverseVarianceAggregate(NamedTuple):
    """`gradient` [B, D] = Σ_t α_t μ_t per sample and dimension; `weights` α [B, T, D]."""

    gradient: tf.Tensor
    weights: tf.Tensor


def tempered_variance(variance: tf.Tensor, power: tf.Tensor | float) -> tf.Tensor:
    """clamp(σ², 1e-8)^s: the tempered variance the paper uses to weigh tasks."""
    return tf.pow(tf.maximum(variance, VARIANCE_FLOOR), power)


def inverse_variance_aggregate(means: tf.Tensor, variances: tf.Tensor, powers: tf.Tensor) -> InverseVarianceAggregate:
    """Combine task gradients `means` [B, T, D] by tempered inverse variance.

    λ_t = clamp(σ²_t, 1e-8)^(-s_t) and α_t = λ_t / Σ_u λ_u, computed as a softmax over tasks of
    -s_t·log σ²_t so that extreme variances neither overflow nor underflow.
    `powers` holds one exponent s per task ([T]).
    """
    powers = tf.cast(powers, variances.dtype)
    log_precision = -powers[None, :, None] * tf.math.log(tf.maximum(variances, VARIANCE_FLOOR))
    weights = tf.nn.softmax(log_precision, axis=1)
    return InverseVarianceAggregate(tf.reduce_sum(weights * means, axis=1), weights)
