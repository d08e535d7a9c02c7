"""Laplace-style posteriors of linear classification heads and Monte Carlo moments of ∂ℓ/∂h.

SPEC "Classification": at the current head W (rows = outputs or classes, bias in the last
column, h̃ = [h, 1]) and a prior N(m_p, P⁻¹), a second-order Taylor expansion of the summed loss
with the generalized Gauss-Newton (GGN) matrix gives

    Λ = Σ_i H_i ⊗ h̃_i h̃_iᵀ + P,   a = ∇_W Σ_i ℓ_i(W) + P(vec W - m_p),   mean = vec W - Λ⁻¹a,

a Newton step from W with covariance Λ⁻¹. Two structures keep this cheap and exact:

- binary set: H_i = diag(p_i(1 - p_i)) has no cross terms, so Λ is block-diagonal with one
  (D+1)×(D+1) block per output; blocks are built and factored as a batch [O, D+1, D+1].
- multiclass: H_i = diag(p_i) - p_i p_iᵀ, so Σ_i H_i ⊗ h̃_i h̃_iᵀ = blockdiag_c(Σ_i p_ic h̃_i h̃_iᵀ)
  - UᵀU with U_i = p_i ⊗ h̃_i: two matrix products, no per-sample Jacobians.

Moments of g = ∂ℓ/∂h are Monte Carlo averages over w_s = mean + L⁻ᵀε_s (LLᵀ = Λ), written as
contractions of residuals r_s with w_s (and r_s² with w_s²) so that no S×B×O×D tensor exists.
Curvature and loss gradients are sums over samples, so a large set (the full-data prior) can be
processed in chunks and added up before the single factorization.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_bayesagg.bayes.linalg import adjoint_triangular_solve, safe_cholesky
from keras_bayesagg.bayes.regression import GradientMoments


class Curvature(NamedTuple):
    """Sums over samples at a fixed head W: the GGN and the gradient of the summed loss.

    Binary set: `ggn` [O, D+1, D+1] (diagonal blocks), `loss_gradient` [O, D+1].
    Multiclass: `ggn` [1, C(D+1), C(D+1)], `loss_gradient` [1, C(D+1)] (a batch of one matrix,
    so both kinds share `newton_posterior`).
    """

    ggn: tf.Tensor
    loss_gradient: tf.Tensor


class ClassificationPosterior(NamedTuple):
    """N(mean, Λ⁻¹) per block: `mean` [M, n], `precision` Λ [M, n, n], `precision_factor` L with
    LLᵀ = Λ, `ok` [M] (False where Λ could not be factored even with jitter).

    Binary sets have M = O blocks of n = D+1; a multiclass head has M = 1 block of n = C(D+1).
    """

    mean: tf.Tensor
    precision: tf.Tensor
    precision_factor: tf.Tensor
    ok: tf.Tensor


def with_bias_feature(features: tf.Tensor) -> tf.Tensor:
    """h̃ = [h, 1]: [B, D] → [B, D+1]."""
    return tf.concat([features, tf.ones_like(features[:, :1])], axis=1)


def head_weights(kernel: tf.Tensor, bias: tf.Tensor, dtype: tf.DType | str) -> tf.Tensor:
    """W [units, D+1] (bias last) from a Keras head's kernel [D, units] and bias [units]."""
    return tf.cast(tf.concat([tf.transpose(kernel), bias[:, None]], axis=1), dtype)


def binary_curvature(
    features: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor, present: tf.Tensor | None = None
) -> Curvature:
    """GGN blocks Σ_i p_io(1-p_io) h̃_i h̃_iᵀ and loss gradients Σ_i (p_io - y_io) h̃_i of a binary set.

    `features` h [B, D], `labels` y [B, O] in [0, 1], `weights` W [O, D+1]. Cost O(B·O·D²).
    `present` [B, O] (1: y_io is given) drops the terms of missing labels (their y must be finite); other
    non-negative values weigh the terms (a repetition count).
    """
    extended = with_bias_feature(features)
    probabilities = tf.sigmoid(tf.matmul(extended, weights, transpose_b=True))  # [B, O]
    curvature = probabilities * (1.0 - probabilities)
    if present is not None:
        curvature = curvature * tf.cast(present, features.dtype)
    weighted = tf.transpose(curvature)[:, :, None] * extended[None, :, :]  # [O, B, D+1]
    ggn = tf.matmul(weighted, extended[None, :, :], transpose_a=True)  # [O, D+1, D+1]
    return Curvature(ggn, binary_loss_gradient(extended, probabilities, labels, present))


def binary_loss_gradient(
    extended: tf.Tensor, probabilities: tf.Tensor, labels: tf.Tensor, present: tf.Tensor | None = None
) -> tf.Tensor:
    """Σ_i π_io (p_io − y_io) h̃_i [O, D+1] from h̃ [B, D+1] and the probabilities p [B, O] at the head."""
    residuals = probabilities - labels
    if present is not None:
        residuals = residuals * tf.cast(present, extended.dtype)
    return tf.matmul(residuals, extended, transpose_a=True)


def multiclass_curvature(
    features: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor, present: tf.Tensor | None = None
) -> Curvature:
    """GGN Σ_i (diag(p_i) - p_i p_iᵀ) ⊗ h̃_i h̃_iᵀ and loss gradient Σ_i (p_i - y_i) ⊗ h̃_i of a softmax head.

    `features` h [B, D], `labels` y [B, C] (one-hot or probability rows), `weights` W [C, D+1].
    Flattening is row-major in (class, feature), as in SPEC. Cost O(B·C²·D²).
    `present` [B] (1: the sample's label is given) drops the rows of missing labels; other non-negative
    values weigh the rows (a repetition count: Σ_i w_i of each term).
    """
    extended = with_bias_feature(features)
    num_classes = tf.shape(weights)[0]
    width = tf.shape(extended)[1]
    size = num_classes * width
    probabilities = tf.nn.softmax(tf.matmul(extended, weights, transpose_b=True), axis=-1)  # [B, C]
    residuals = probabilities - labels
    rows = extended
    if present is not None:  # rows √w h̃ make both quadratic terms Σ w (...); a zero row adds nothing
        row_weights = tf.cast(tf.reshape(present, [-1, 1]), features.dtype)
        rows, residuals = extended * tf.sqrt(row_weights), residuals * row_weights
    weighted = tf.transpose(probabilities)[:, :, None] * rows[None, :, :]  # [C, B, D+1]
    class_grams = tf.matmul(weighted, rows[None, :, :], transpose_a=True)  # [C, D+1, D+1]
    eye = tf.eye(num_classes, dtype=features.dtype)
    diagonal_part = tf.reshape(tf.einsum("cpq,cd->cpdq", class_grams, eye), [size, size])
    outer = tf.reshape(tf.transpose(weighted, [1, 0, 2]), [-1, size])  # U [B, C(D+1)]
    ggn = diagonal_part - tf.matmul(outer, outer, transpose_a=True)
    loss_gradient = tf.reshape(tf.matmul(residuals, extended, transpose_a=True), [size])
    return Curvature(ggn[None], loss_gradient[None])


def add_curvatures(first: Curvature, second: Curvature) -> Curvature:
    """Sum of two curvature statistics at the same W (chunks of one data set)."""
    return Curvature(first.ggn + second.ggn, first.loss_gradient + second.loss_gradient)


def newton_posterior(
    curvature: Curvature, weights: tf.Tensor, prior_precision: tf.Tensor, prior_mean: tf.Tensor
) -> ClassificationPosterior:
    """Λ = GGN + P,  mean = w - Λ⁻¹(∇ + P(w - m_p)): SPEC "Classification", batched over blocks.

    `weights` w [M, n] (the current head, flattened per block), `prior_precision` P [M, n, n],
    `prior_mean` m_p [M, n]. The factorization uses `safe_cholesky` (jitter on failure).
    """
    precision = curvature.ggn + prior_precision
    shift = tf.linalg.matvec(prior_precision, weights - prior_mean)
    step_direction = curvature.loss_gradient + shift
    factor, ok = safe_cholesky(precision)
    step = tf.linalg.cholesky_solve(factor, step_direction[..., None])[..., 0]
    return ClassificationPosterior(weights - step, precision, factor, ok)


def isotropic_prior(
    num_blocks: int, size: int, prior_variance: float, dtype: tf.DType | str
) -> tuple[tf.Tensor, tf.Tensor]:
    """(P = I/γ as [M, n, n], m_p = 0 as [M, n]): the prior of the full-data posterior."""
    precision = tf.eye(size, batch_shape=[num_blocks], dtype=dtype) / prior_variance
    return precision, tf.zeros([num_blocks, size], dtype)


def sample_weights(posterior: ClassificationPosterior, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """Draws w_s = mean + L⁻ᵀε_s, ε_s ~ N(0, I): [M, n, S]. Covariance (LLᵀ)⁻¹ without inverting.

    `seed` is a stateless seed of shape [2] (e.g. from `keras.random.SeedGenerator.next()`).
    """
    factor = posterior.precision_factor
    shape = tf.concat([tf.shape(factor)[:-1], [num_samples]], axis=0)
    noise = standard_normal(shape, seed, factor.dtype)
    return posterior.mean[..., None] + adjoint_triangular_solve(factor, noise)


def standard_normal(shape: tf.Tensor, seed: tf.Tensor, dtype: tf.DType | str) -> tf.Tensor:
    """N(0, 1) draws by the inverse CDF, √2·erfinv(u), from Philox uniforms u on a symmetric grid in (-1, 1).

    The same distribution as `tf.random.stateless_normal` (up to the float grid of u: |ε| ≤ 5.3 in float32),
    at a quarter of its cost under XLA on CPU (its Box-Muller draws took as long as the triangular solve that
    colours them). Philox explicitly: "auto_select" means ThreeFry under XLA, ~30x slower on CPU.
    """
    dtype = tf.as_dtype(dtype)
    uniform = tf.random.stateless_uniform(shape, seed=tf.cast(seed, tf.int32), dtype=dtype, alg="philox")
    half_step = tf.constant(2.0 ** -(np.finfo(dtype.as_numpy_dtype).nmant + 1), dtype)  # u's grid is 2^-nmant
    symmetric = tf.clip_by_value(2.0 * uniform - 1.0 + half_step, half_step - 1.0, 1.0 - half_step)
    return tf.constant(np.sqrt(2.0), dtype) * tf.math.erfinv(symmetric)


def binary_gradient_moments(
    posterior: ClassificationPosterior, features: tf.Tensor, labels: tf.Tensor, num_samples: int, seed: tf.Tensor
) -> GradientMoments:
    """Monte Carlo moments of g_o = (σ(w_oᵀh̃) - y_o)·w_o,1:D for every sample and output: [B, O, D].

    r_s,i,o is [O, B, S]; E[g] = r·wᵀ/S and E[g²] = r²·(w²)ᵀ/S are batched matmuls over outputs.
    """
    samples = sample_weights(posterior, num_samples, seed)  # [O, D+1, S]
    extended = with_bias_feature(features)
    logits = tf.einsum("bp,ops->obs", extended, samples)
    residuals = tf.sigmoid(logits) - tf.transpose(labels)[:, :, None]  # [O, B, S]
    head = samples[:, :-1, :]  # [O, D, S]
    scale = tf.cast(num_samples, features.dtype)
    mean = tf.matmul(residuals, head, transpose_b=True) / scale  # [O, B, D]
    second = tf.matmul(tf.square(residuals), tf.square(head), transpose_b=True) / scale
    variance = tf.maximum(second - tf.square(mean), 0.0)
    return GradientMoments(tf.transpose(mean, [1, 0, 2]), tf.transpose(variance, [1, 0, 2]))


def multiclass_gradient_moments(
    posterior: ClassificationPosterior,
    features: tf.Tensor,
    labels: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
) -> GradientMoments:
    """Monte Carlo moments of g = Σ_c (softmax(W h̃)_c - y_c)·w_c,1:D for a softmax head: [B, 1, D].

    E[g] = Σ_{s,c} r_s,c w_s,c / S and E[g²] = Σ_s Σ_{c,c'} r_s,c r_s,c' w_s,c ⊙ w_s,c' / S, the latter over
    the C(C+1)/2 unordered class pairs (off-diagonal pairs counted twice). Everything is class-major
    ([C, B, S] residuals, [C, D, S] draws): one [B, S]×[S, D] matmul per class and per pair, no gathers or
    transposes of the draws, memory O(C·S·D + C·B·S); no S×B×D tensor is built.
    """
    num_classes = labels.shape[-1]
    if num_classes is None:
        raise ValueError("multiclass_gradient_moments needs a static number of classes (labels [B, C]).")
    extended = with_bias_feature(features)
    samples = tf.reshape(sample_weights(posterior, num_samples, seed)[0], [num_classes, -1, num_samples])  # [C, D+1, S]
    logits = tf.matmul(tf.broadcast_to(extended[None], tf.concat([[num_classes], tf.shape(extended)], 0)), samples)
    residuals = tf.nn.softmax(logits, axis=0) - tf.transpose(labels)[:, :, None]  # [C, B, S]
    head = samples[:, :-1, :]  # [C, D, S]
    scale = tf.cast(num_samples, features.dtype)
    mean = tf.reduce_sum(tf.matmul(residuals, head, transpose_b=True), axis=0) / scale  # [B, D]
    second_moment = (
        tf.add_n(
            [
                tf.matmul(residuals[c] * residuals[d] * (1.0 if c == d else 2.0), head[c] * head[d], transpose_b=True)
                for c in range(num_classes)
                for d in range(c, num_classes)
            ]
        )
        / scale
    )
    variance = tf.maximum(second_moment - tf.square(mean), 0.0)
    return GradientMoments(mean[:, None, :], variance[:, None, :])
