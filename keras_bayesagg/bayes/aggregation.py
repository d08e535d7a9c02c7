"""Inverse-variance aggregation of Gaussian task gradients (SPEC steps 3-4; paper Eq. 9)."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

VARIANCE_FLOOR = 1e-8
MISSING_LOGIT = -1e30  # the softmax logit of a task whose label is missing


class InverseVarianceAggregate(NamedTuple):
    """`gradient` [B, D] = Σ_t α_t μ_t per sample and dimension; `weights` α [B, T, D]."""

    gradient: tf.Tensor
    weights: tf.Tensor


def tempered_variance(variance: tf.Tensor, power: tf.Tensor | float) -> tf.Tensor:
    """clamp(σ², 1e-8)^s: the tempered variance the paper uses to weigh tasks."""
    return tf.pow(tf.maximum(variance, VARIANCE_FLOOR), power)


def inverse_variance_aggregate(
    means: tf.Tensor, variances: tf.Tensor, powers: tf.Tensor, present: tf.Tensor | None = None
) -> InverseVarianceAggregate:
    """Combine task gradients `means` [B, T, D] by tempered inverse variance.

    λ_t = clamp(σ²_t, 1e-8)^(-s_t) and α_t = λ_t / Σ_u λ_u, computed as a softmax over tasks of
    -s_t·log σ²_t so that extreme variances neither overflow nor underflow.
    `powers` holds one exponent s per task ([T]). `present` [B, T] (1: the task's label of the sample
    is given) restricts each sample's sum to its present tasks: α_t = 0 where missing, the others are
    normalized among themselves, and a sample without any label gets all-zero weights.
    """
    powers = tf.cast(powers, variances.dtype)
    log_precision = -powers[None, :, None] * tf.math.log(tf.maximum(variances, VARIANCE_FLOOR))
    if present is None:
        weights = tf.nn.softmax(log_precision, axis=1)
        return InverseVarianceAggregate(tf.reduce_sum(weights * means, axis=1), weights)
    mask = tf.cast(present, variances.dtype)[:, :, None] > 0.0
    # A large finite logit, not -inf: a sample without any present task must not give NaN (it gets 0).
    excluded = tf.constant(MISSING_LOGIT, variances.dtype)
    weights = tf.nn.softmax(tf.where(mask, log_precision, excluded), axis=1)
    weights = tf.where(mask, weights, tf.zeros_like(weights))
    return InverseVarianceAggregate(tf.reduce_sum(weights * means, axis=1), weights)
