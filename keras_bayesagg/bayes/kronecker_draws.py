"""The per-step work of the Kronecker posterior (`bayes/kronecker.py`) arranged as few large matrix products.

A draw of the head is W_s = mean + R⁻¹(E_s), E_s = ε_s/√λ with independent entries. It is formed here in the
*feature* eigenbasis only, W̃_s = W_s Q_G = mean·Q_G + Q_A E_s [C, n]: then the logits are u W̃_sᵀ (u = h̃Q_G)
and the gradient is Q_G,1:D W̃_sᵀ r_s. The class rotation Q_A E_s runs once per *rotated noise matrix* for all
samples of the batch, as one product [C, C] × [C, chunk·n] (O(C²n) per matrix, instead of two rotations of
[B, C] per draw, O(B·C²)); what remains per draw is the head's forward and backward pass, O(B·C·n + B·n·D).

`draws_per_rotation` K > 1 reuses each rotated noise matrix for K draws by flipping the signs of its columns:
E diag(σ) has the distribution of E for any σ ∈ {±1}ⁿ (the entries are independent and symmetric) and
Q_A E diag(σ) = (Q_A E) diag(σ), so every draw is still exactly N(mean, Λ⁻¹) and the moment estimates stay
unbiased; the K draws of one matrix are dependent (they share |E|), which costs some of the noise reduction
of K independent draws (measured in docs/benchmarks.md). σ is all ones for the first draw of a matrix, its
negation for the second (an antithetic pair: the part of the gradient linear in E cancels), and independent
random signs, again in antithetic pairs, for the others. K = 1 is the paper's estimator (independent draws).
"""

from __future__ import annotations

import tensorflow as tf

from keras_bayesagg.bayes.classification import with_bias_feature
from keras_bayesagg.bayes.regression import GradientMoments

DRAW_CHUNK_ELEMENTS = 2**22  # largest [chunk, C, n] or [B, chunk, C] tensor of one chunk of draws


def draw_chunk(num_samples: int, num_classes: int, width: int, batch: int = 256, multiple: int = 1) -> int:
    """Draws per chunk: the largest divisor of S that is a multiple of `multiple` (K) keeping [chunk, C, n]
    and [B, chunk, C] under the budget (at least `multiple`)."""
    limit = max(multiple, DRAW_CHUNK_ELEMENTS // (num_classes * max(width, batch)))
    fits = [d for d in range(multiple, min(num_samples, limit) + 1, multiple) if num_samples % d == 0]
    return max(fits) if fits else num_samples


def sign_patterns(bases: int, pairs: int, width: int, seed: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """σ [bases, pairs, n] of the first draw of each antithetic pair: all ones, then random ± patterns."""
    ones = tf.ones([bases, 1, width], dtype)
    if pairs == 1:
        return ones
    random = tf.random.stateless_uniform([bases, pairs - 1, width], seed, 0, 2, dtype=tf.int32, alg="philox")
    return tf.concat([ones, tf.cast(2 * random - 1, dtype)], axis=1)


def draw_moments(
    rotated_mean: tf.Tensor,
    scale: tf.Tensor,
    class_basis: tf.Tensor,
    feature_basis: tf.Tensor,
    features: tf.Tensor,
    labels: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
    draws_per_rotation: int = 1,
    batch_hint: int | None = None,
) -> GradientMoments:
    """Monte Carlo moments [B, 1, D] of g = Σ_c (softmax(W_s h̃)_c − y_c)·w_s,c,1:D over S draws W_s.

    `rotated_mean` mean·Q_G [C, n], `scale` 1/√λ [C, n], bases Q_A [C, C] and Q_G [n, n]; `seed` [2] stateless.
    Draws run in chunks (an XLA loop), memory O(chunk·(C·n + B·C + B·n)); no S×B×D tensor is kept.
    `batch_hint`: the rows the chunk size is chosen for (default: the static rows of `features`, else 256); the
    draws depend on the chunk, so rows computed apart (one replica's) pass the whole batch's.
    """
    num_classes, width = rotated_mean.shape
    if num_classes is None or width is None:
        raise ValueError("Kronecker moments need a head of static shape [C, D+1].")
    if draws_per_rotation != 1 and (draws_per_rotation % 2 or num_samples % draws_per_rotation):
        raise ValueError(
            f"draws_per_rotation must be 1 or an even divisor of num_samples ({num_samples}); got {draws_per_rotation}."
        )
    dtype = features.dtype
    batch_hint = batch_hint or features.shape[0] or 256
    chunk = draw_chunk(num_samples, num_classes, width, batch_hint, draws_per_rotation)
    bases = chunk // draws_per_rotation
    projected = tf.matmul(with_bias_feature(features), feature_basis)  # u = Q_Gᵀh̃ [B, n]
    gradient_basis = feature_basis[:-1, :]  # Q_G without the bias row [D, n]
    seed = tf.cast(seed, tf.int32)

    mean_logits = tf.matmul(projected, rotated_mean, transpose_b=True)  # [B, C]
    pairs = draws_per_rotation // 2

    def draws_and_logits(rotated: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """W̃_s [chunk, C, n] and logits [B, chunk, C] of the chunk's draws from Q_A E [bases, C, n]."""
        if draws_per_rotation == 1:
            draws = rotated_mean + rotated
            logits = tf.matmul(projected, tf.reshape(draws, [chunk * num_classes, width]), transpose_b=True)
            return draws, tf.reshape(logits, [-1, chunk, num_classes])
        signs = sign_patterns(bases, pairs, width, seed + tf.stack([1, index]), dtype)
        spread = tf.reshape(rotated[:, None] * signs[:, :, None, :], [chunk // 2, num_classes, width])
        logits = tf.matmul(projected, tf.reshape(rotated_mean + spread, [-1, width]), transpose_b=True)
        logits = tf.reshape(logits, [-1, chunk // 2, num_classes])  # the antithetic draw's: 2·mean − these
        draws = tf.concat([rotated_mean + spread, rotated_mean - spread], axis=0)
        return draws, tf.concat([logits, 2.0 * mean_logits[:, None, :] - logits], axis=1)

    def body(index: tf.Tensor, first: tf.Tensor, second: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        noise = (
            tf.random.stateless_normal(
                [num_classes, bases, width], seed=seed + tf.stack([0, index]), dtype=dtype, alg="philox"
            )
            * scale[:, None, :]
        )  # E [C, bases, n]
        rotated = tf.reshape(tf.matmul(class_basis, tf.reshape(noise, [num_classes, bases * width])), noise.shape)
        draws, logits = draws_and_logits(tf.transpose(rotated, [1, 0, 2]), index)  # Q_A E [bases, C, n]
        residuals = tf.nn.softmax(logits, axis=-1) - labels[:, None, :]  # [B, chunk, C]
        backward = tf.matmul(tf.transpose(residuals, [1, 0, 2]), draws)  # W̃_sᵀ r [chunk, B, n]
        gradients = tf.matmul(tf.reshape(backward, [-1, width]), gradient_basis, transpose_b=True)  # [chunk·B, D]
        gradients = tf.reshape(gradients, [chunk, -1, gradient_basis.shape[0]])
        return index + 1, first + tf.reduce_sum(gradients, 0), second + tf.reduce_sum(tf.square(gradients), 0)

    zeros = tf.zeros([tf.shape(features)[0], tf.shape(features)[1]], dtype)
    _, first, second = tf.while_loop(
        lambda index, *_: index < num_samples // chunk,
        body,
        (tf.constant(0), zeros, zeros),
        maximum_iterations=num_samples // chunk,
    )
    mean = first / num_samples
    variance = tf.maximum(second / num_samples - tf.square(mean), 0.0)
    return GradientMoments(mean[:, None, :], variance[:, None, :])


def rotate_labels(labels: tf.Tensor, class_basis: tf.Tensor) -> tf.Tensor:
    """Y·Q_A [B, C]: rows of Q_A when every label row has at most one nonzero (class indices, missing labels),
    the [B, C] × [C, C] product otherwise (probability rows). Exact either way."""

    def gathered() -> tf.Tensor:
        rows = tf.gather(class_basis, tf.argmax(tf.abs(labels), axis=1))
        return tf.reduce_sum(labels, axis=1, keepdims=True) * rows

    single = tf.reduce_all(tf.math.count_nonzero(labels, axis=1) <= 1)
    return tf.cond(single, gathered, lambda: tf.matmul(labels, class_basis))


def rotated_batch_posterior(
    features: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor,
    class_basis: tf.Tensor,
    feature_basis: tf.Tensor,
    prior_precision: tf.Tensor,
    prior_mean: tf.Tensor,
    present: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`kronecker.batch_posterior` without leaving the feature eigenbasis: (mean·Q_G [C, n], λ [C, n], ok).

    The same λ = λ_F + s_batch and mean = W − R⁻¹(step), computed as: u = h̃Q_G; the class rotations of the
    batch's probabilities and labels (P·[Q_A, Q_A∘Q_A], Y·Q_A: [B, C] × [C, ·]) give s_batch and
    R(∇) = ((P − Y)Q_A)ᵀu; only R(W − m_F) and Q_A·step are [C, C] × [C, n] products.
    """
    extended = with_bias_feature(features)
    weight = tf.ones_like(extended[:, 0]) if present is None else tf.cast(tf.reshape(present, [-1]), extended.dtype)
    projected = tf.matmul(extended, feature_basis)  # u [B, n]
    num_classes = weights.shape[0]
    rotated = tf.matmul(tf.concat([weights, weights - prior_mean], 0), feature_basis)
    rotated_weights, rotated_offset = rotated[:num_classes], rotated[num_classes:]  # W·Q_G, (W − m_F)·Q_G
    probabilities = tf.nn.softmax(tf.matmul(projected, rotated_weights, transpose_b=True), axis=-1)
    both = tf.matmul(probabilities, tf.concat([class_basis, tf.square(class_basis)], 1))
    rotated_probabilities, spread = both[:, :num_classes], both[:, num_classes:]
    class_curvature = tf.maximum(spread - tf.square(rotated_probabilities), 0.0) * weight[:, None]
    precision = prior_precision + tf.matmul(class_curvature, tf.square(projected), transpose_a=True)
    residual = weight[:, None] * (rotated_probabilities - rotate_labels(labels, class_basis))  # (P − Y)Q_A [B, C]
    pull = tf.matmul(residual, projected, transpose_a=True) + prior_precision * tf.matmul(
        class_basis, rotated_offset, transpose_a=True
    )  # R(∇) + λ_F ⊙ R(W − m_F)
    mean = rotated_weights - tf.matmul(class_basis, pull / precision)  # mean·Q_G
    ok = tf.reduce_all(tf.math.is_finite(mean)) & tf.reduce_all(tf.math.is_finite(precision) & (precision > 0))
    return mean, precision, ok
