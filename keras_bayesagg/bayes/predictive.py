"""Predictive distributions of the linear heads under their full-data posteriors (serving-time uncertainty).

Pure TensorFlow, no state, XLA-compilable (static shapes only): the quadratic forms h̃ᵀΣh̃ are
matrix products with a stored covariance Σ, so no B×D×D tensor and no factorization is built.

- Regression (SPEC "Regression", conjugate reading): y_o = w_oᵀh + ε, ε ~ N(0, σ_o²), prior
  w_o ~ N(0, σ_o²γI). Then the posterior is N(m_F,o, σ_o²Λ_F⁻¹) with the paper's unit-noise
  Λ_F = I/γ + Σhhᵀ and m_F,o = Λ_F⁻¹Σh·y_o: the mean the heads predict with, for any σ_o². The
  predictive distribution of y at h is N(m_F,oᵀh, σ_o²(1 + hᵀΛ_F⁻¹h)).
- Binary outputs: logit f = wᵀh̃ with w ~ N(W, Σ) (Laplace at the head's weights W, Σ the inverse of
  the full-data precision block); E[σ(f)] ≈ σ(μ/√(1 + πs²/8)), μ = Wh̃, s² = h̃ᵀΣh̃ (probit approximation).
- Multiclass heads: logits f ~ N(μ, V) with V_cc' = h̃ᵀΣ_cc'h̃; E[softmax(f)] by the pairwise mean-field
  approximation p_c ≈ 1 / Σ_k exp(−(μ_c − μ_k)/√(1 + π/8·Var(f_c − f_k))), renormalized. It depends on
  differences of logits only (as the softmax does) and equals the binary probit rule for two classes.
  A head too large for its dense Σ (C·n square) serves a Kronecker-factored Σ = (Q_C ⊗ Q_D) diag(v) (Q_C ⊗ Q_D)ᵀ
  (`FactoredCovariance`): V is then Q_C diag(d) Q_Cᵀ per input, exact for that Σ and never densified.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

PROBIT_SCALE = math.pi / 8.0  # λ of σ(x) ≈ Φ(√λ·x)


def quadratic_forms(features: tf.Tensor, covariance: tf.Tensor) -> tf.Tensor:
    """xᵀΣ_m x per row x of `features` [B, n] and block Σ_m of `covariance` [M, n, n]: [B, M].

    Memory O(B·M·n): x·Σ_m is formed per row, never an outer product xxᵀ.
    """
    projected = tf.einsum("bp,mpq->bmq", features, covariance)
    return tf.reduce_sum(projected * features[:, None, :], axis=-1)


def regression_predictive_variance(features: tf.Tensor, covariance: tf.Tensor, noise_variance: tf.Tensor) -> tf.Tensor:
    """σ_o²(1 + hᵀΛ_F⁻¹h): `features` h [B, D], `covariance` Λ_F⁻¹ [D, D], `noise_variance` σ² [O] → [B, O]."""
    spread = quadratic_forms(features, covariance[None])  # [B, 1]
    return (1.0 + spread) * noise_variance[None, :]


def regression_noise_variance(
    feature_gram: tf.Tensor,
    feature_target: tf.Tensor,
    target_square_sum: tf.Tensor,
    rows: tf.Tensor,
    mean: tf.Tensor,
    covariance: tf.Tensor,
) -> tf.Tensor:
    """σ_o² = RSS_o / (N − n_eff) from sufficient statistics (no pass over the data) → [O].

    RSS_o = Σy_o² − 2m_oᵀΣh·y_o + m_oᵀ(Σhhᵀ)m_o is the residual sum of squares of the posterior mean,
    and n_eff = tr(Σhhᵀ Λ_F⁻¹) the effective number of parameters (MacKay's noise update; ridge
    regression's residual degrees of freedom). Args: Σhhᵀ [D, D], Σh·y [D, O], Σy² [O], N,
    the posterior mean m [O, D] and covariance Λ_F⁻¹ [D, D] made from the same statistics.
    """
    cross = tf.reduce_sum(mean * tf.transpose(feature_target), axis=1)
    fitted = tf.reduce_sum(tf.matmul(mean, feature_gram) * mean, axis=1)
    residual_sum = tf.maximum(target_square_sum - 2.0 * cross + fitted, 0.0)  # round-off can go below 0
    effective_parameters = tf.reduce_sum(feature_gram * covariance)
    return residual_sum / tf.maximum(rows - effective_parameters, 1.0)


def probit_probability(mean_logit: tf.Tensor, logit_variance: tf.Tensor) -> tf.Tensor:
    """E[σ(f)] for f ~ N(μ, s²), approximated by σ(μ / √(1 + πs²/8)) (MacKay 1992)."""
    return tf.sigmoid(mean_logit * tf.math.rsqrt(1.0 + PROBIT_SCALE * logit_variance))


def binary_entropy(probabilities: tf.Tensor) -> tf.Tensor:
    """−p log p − (1−p) log(1−p) in nats, elementwise (0 at p ∈ {0, 1})."""
    p = probabilities
    return -(tf.math.xlogy(p, p) + tf.math.xlogy(1.0 - p, 1.0 - p))


def categorical_entropy(probabilities: tf.Tensor) -> tf.Tensor:
    """−Σ_c p_c log p_c in nats over the last axis."""
    return -tf.reduce_sum(tf.math.xlogy(probabilities, probabilities), axis=-1)


def logit_covariance(features: tf.Tensor, covariance: tf.Tensor, classes: int) -> tf.Tensor:
    """V_cc' = h̃ᵀΣ_cc'h̃ [B, C, C] of logits f = Wh̃, W ~ N(·, Σ) with Σ [C·n, C·n] flattened (class, feature).

    One class row at a time, so the largest intermediate is [B, C, n] (cost O(B·C²·n²)).
    """
    width = features.shape[-1]
    blocks = tf.reshape(covariance, [classes, width, classes, width])
    rows = []
    for row in range(classes):
        projected = tf.einsum("bp,pkq->bkq", features, blocks[row])  # [B, C, n]
        rows.append(tf.reduce_sum(projected * features[:, None, :], axis=-1))
    return tf.stack(rows, axis=1)


def mean_field_softmax(mean_logits: tf.Tensor, covariance: tf.Tensor) -> tf.Tensor:
    """E[softmax(f)] for f ~ N(μ [B, C], V [B, C, C]) by the pairwise mean-field approximation.

    p_c ∝ 1 / Σ_k exp(−(μ_c − μ_k)/√(1 + λ·v_ck)), v_ck = V_cc + V_kk − 2V_ck, λ = π/8 (Lu, Ie & Sha
    2020). Exact softmax at V = 0; the binary probit rule for C = 2; normalized to sum to one.
    """
    variances = tf.linalg.diag_part(covariance)
    differences = mean_logits[:, :, None] - mean_logits[:, None, :]
    spread = variances[:, :, None] + variances[:, None, :] - 2.0 * covariance
    scaled = differences * tf.math.rsqrt(1.0 + PROBIT_SCALE * tf.maximum(spread, 0.0))
    log_probabilities = -tf.reduce_logsumexp(-scaled, axis=-1)
    return tf.nn.softmax(log_probabilities, axis=-1)  # exp and renormalize in one stable step


class FactoredCovariance(NamedTuple):
    """Σ = Q diag(vec v) Qᵀ, Q = Q_C ⊗ Q_D, of a head's weights flattened row-major (class, feature):
    `classes` Q_C [C, C] and `features` Q_D [n, n] orthogonal, `eigenvalues` v [C, n] ≥ 0 (the eigenvalue-
    corrected Kronecker form of `bayes.kronecker`, whose precision λ gives v = 1/λ; dense: `kronecker.dense_precision`
    of the same basis and v)."""

    classes: tf.Tensor
    features: tf.Tensor
    eigenvalues: tf.Tensor


def factored_logit_covariance(features: tf.Tensor, covariance: FactoredCovariance) -> tf.Tensor:
    """V_i = Q_C diag(d_i) Q_Cᵀ [B, C, C] of the logits f = Wh̃_i, d_ik = Σ_l v_kl (Q_Dᵀh̃_i)_l², from h̃ [B, n].

    Exact for the factored Σ: Cov(f) = (I ⊗ h̃ᵀ)(Q_C ⊗ Q_D) diag(v) (Q_C ⊗ Q_D)ᵀ(I ⊗ h̃) and (I ⊗ h̃ᵀ)(Q_C ⊗ Q_D)
    = Q_C ⊗ (Q_Dᵀh̃)ᵀ. Cost O(B·(n² + C·n + C³)), memory O(B·C²); the C·n-square Σ is never formed.
    """
    energy = tf.square(tf.matmul(features, covariance.features))  # (Q_Dᵀh̃)² [B, n]
    variances = tf.matmul(energy, covariance.eigenvalues, transpose_b=True)  # d [B, C]
    return tf.matmul(covariance.classes[None] * variances[:, None, :], covariance.classes, transpose_b=True)


def factored_from_dense(covariance: tf.Tensor, classes: int) -> FactoredCovariance:
    """The factored form of a dense head covariance Σ [C·n, C·n] (row-major (class, feature)).

    Basis: eigenvectors of the partial traces Σ_i Σ_(c,i),(d,i) [C, C] and Σ_c Σ_(c,i),(c,j) [n, n]; eigenvalues:
    the diagonal of QᵀΣQ, the variances of the weights along each basis direction (moment matching: the
    Gaussian with covariance diagonal in Q closest to N(·, Σ) in KL(N(·, Σ) ‖ ·), and the Frobenius-closest
    such covariance). Exact when Σ already has the factored form (with distinct partial-trace eigenvalues):
    then its partial traces are Q_C diag(Σ_l v_kl) Q_Cᵀ and Q_D diag(Σ_k v_kl) Q_Dᵀ.
    Cost O(C³n² + C·n³), memory O((C·n)²).
    """
    width = covariance.shape[-1] // classes
    blocks = tf.reshape(covariance, [classes, width, classes, width])
    class_trace = tf.einsum("cidi->cd", blocks)
    feature_trace = tf.einsum("cicj->ij", blocks)
    _, class_basis = tf.linalg.eigh(0.5 * (class_trace + tf.transpose(class_trace)))
    _, feature_basis = tf.linalg.eigh(0.5 * (feature_trace + tf.transpose(feature_trace)))
    rotated = tf.einsum("ck,cidj->kidj", class_basis, blocks)  # [C, n, C, n]
    diagonal_classes = tf.einsum("kidj,dk->kij", rotated, class_basis)  # (k, k) blocks only [C, n, n]
    eigenvalues = tf.reduce_sum(feature_basis[None] * tf.matmul(diagonal_classes, feature_basis), axis=1)
    return FactoredCovariance(class_basis, feature_basis, tf.maximum(eigenvalues, 0.0))
