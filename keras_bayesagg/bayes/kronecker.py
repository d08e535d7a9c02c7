"""A Kronecker-factored Laplace/GGN posterior of a softmax head, for heads too large for the full one.

The full GGN of a C-class head over n = D+1 inputs is Σ_i π_i H_i ⊗ h̃_i h̃_iᵀ (H_i = diag(p_i) − p_i p_iᵀ,
π_i ≥ 0 the sample's weight), C·n square. KFAC approximates it by A ⊗ G / N with A = Σ π_i H_i [C, C],
G = Σ π_i h̃_i h̃_iᵀ [n, n], N = Σ π_i. Here only the *eigenvectors* of that product are kept,
Q = Q_A ⊗ Q_G (A = Q_A diag Q_Aᵀ, G = Q_G diag Q_Gᵀ), and the precision is taken diagonal in that basis
with the exact diagonal of the full GGN there (eigenvalue-corrected KFAC, George et al. 2018):

    s_kl = Σ_i π_i (Q_Aᵀ H_i Q_A)_kk · (Q_Gᵀ h̃_i)_l²,     Λ ≈ Q diag(vec λ) Qᵀ,  λ = s + 1/γ.

An isotropic prior I/γ is diagonal in every basis, and a batch's GGN is projected on the same basis, so
prior + batch stay exactly diagonal (no factorization per step): λ_batch = λ_F + s_batch. With R(X) = Q_Aᵀ X Q_G
(X [C, n]; R is orthogonal on row-major vec X), the Newton posterior mean of `newton_posterior` is

    mean = W − R⁻¹[(R(∇) + λ_F ⊙ R(W − m_F)) / λ],

and w_s = mean + R⁻¹(ε_s / √λ) draws from N(mean, Λ⁻¹). Memory O(C² + n² + C·n); per step O(B·C² + B·n²
+ B·C·n) for the posterior and O(S·B·C·(C + n)) for S Monte Carlo draws (docs/method.md).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from keras_bayesagg.bayes import kronecker_draws, predictive
from keras_bayesagg.bayes.classification import with_bias_feature
from keras_bayesagg.bayes.evidence import _fixed_point
from keras_bayesagg.bayes.kronecker_draws import DRAW_CHUNK_ELEMENTS, draw_chunk  # noqa: F401 (re-exported)
from keras_bayesagg.bayes.regression import GradientMoments


class KroneckerFactors(NamedTuple):
    """Sums over samples at a head W [C, n]: A = Σπ H [C, C], G = Σπ h̃h̃ᵀ [n, n], N = Σπ, ∇ = Σπ(p − y)h̃ᵀ [C, n]."""

    class_factor: tf.Tensor
    feature_factor: tf.Tensor
    weight: tf.Tensor
    loss_gradient: tf.Tensor


class KroneckerBasis(NamedTuple):
    """Orthogonal eigenvectors of the two factors: `classes` Q_A [C, C], `features` Q_G [n, n]."""

    classes: tf.Tensor
    features: tf.Tensor


class KroneckerPosterior(NamedTuple):
    """N(mean, Λ⁻¹) with Λ = Q diag(vec precision) Qᵀ: `mean` [C, n], `precision` λ [C, n] (> 0), `ok` scalar."""

    mean: tf.Tensor
    precision: tf.Tensor
    ok: tf.Tensor


def _probabilities(extended: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax(tf.matmul(extended, weights, transpose_b=True), axis=-1)


def _sample_weights(extended: tf.Tensor, present: tf.Tensor | None) -> tf.Tensor:
    if present is None:
        return tf.ones_like(extended[:, 0])
    return tf.cast(tf.reshape(present, [-1]), extended.dtype)


def rotate(basis: KroneckerBasis, matrix: tf.Tensor) -> tf.Tensor:
    """R(X) = Q_Aᵀ X Q_G: head-shaped X [C, n] into the eigenbasis."""
    return tf.matmul(tf.matmul(basis.classes, matrix, transpose_a=True), basis.features)


def unrotate(basis: KroneckerBasis, matrix: tf.Tensor) -> tf.Tensor:
    """R⁻¹(Y) = Q_A Y Q_Gᵀ."""
    return tf.matmul(tf.matmul(basis.classes, matrix), basis.features, transpose_b=True)


def kronecker_factors(
    features: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor, present: tf.Tensor | None = None
) -> KroneckerFactors:
    """A, G, N and ∇ of a softmax head at `weights` W [C, n] over h [B, D], labels y [B, C], weights π [B].

    Cost O(B·C² + B·n² + B·C·n). Sums over samples: chunks of a data set add up (`add_factors`).
    """
    extended = with_bias_feature(features)
    weight = _sample_weights(extended, present)
    probabilities = _probabilities(extended, weights)
    weighted = weight[:, None] * probabilities
    class_factor = tf.linalg.diag(tf.reduce_sum(weighted, axis=0)) - tf.matmul(
        weighted, probabilities, transpose_a=True
    )
    feature_factor = tf.matmul(weight[:, None] * extended, extended, transpose_a=True)
    loss_gradient = tf.matmul(weight[:, None] * (probabilities - labels), extended, transpose_a=True)
    return KroneckerFactors(class_factor, feature_factor, tf.reduce_sum(weight), loss_gradient)


def add_factors(first: KroneckerFactors, second: KroneckerFactors) -> KroneckerFactors:
    """Sum of two factor statistics at the same W (chunks of one data set)."""
    return KroneckerFactors(*(a + b for a, b in zip(first, second)))


def kronecker_basis(factors: KroneckerFactors) -> KroneckerBasis:
    """Eigenvectors of A and G: O(C³ + n³), once per full-data refresh."""
    _, classes = tf.linalg.eigh(0.5 * (factors.class_factor + tf.transpose(factors.class_factor)))
    _, feature_vectors = tf.linalg.eigh(0.5 * (factors.feature_factor + tf.transpose(factors.feature_factor)))
    return KroneckerBasis(classes, feature_vectors)


def identity_basis(num_classes: int, width: int, dtype: tf.DType | str) -> KroneckerBasis:
    """The basis before any data (any basis diagonalizes the isotropic prior)."""
    return KroneckerBasis(tf.eye(num_classes, dtype=dtype), tf.eye(width, dtype=dtype))


def eigenbasis_curvature(
    features: tf.Tensor, weights: tf.Tensor, basis: KroneckerBasis, present: tf.Tensor | None = None
) -> tf.Tensor:
    """s [C, n]: the exact diagonal of Qᵀ(Σ_i π_i H_i ⊗ h̃_i h̃_iᵀ)Q, O(B·C² + B·n² + B·C·n), no C·n-square matrix.

    (Q_AᵀH_iQ_A)_kk = Σ_c Q_A[c,k]² p_ic − (Q_Aᵀp_i)_k², and the feature part is (Q_Gᵀh̃_i)².
    """
    extended = with_bias_feature(features)
    probabilities = _probabilities(extended, weights)
    class_curvature = tf.matmul(probabilities, tf.square(basis.classes)) - tf.square(
        tf.matmul(probabilities, basis.classes)
    )  # [B, C]
    class_curvature = tf.maximum(class_curvature, 0.0) * _sample_weights(extended, present)[:, None]
    feature_energy = tf.square(tf.matmul(extended, basis.features))  # [B, n]
    return tf.matmul(class_curvature, feature_energy, transpose_a=True)


def full_data_posterior(
    factors: KroneckerFactors,
    curvature: tf.Tensor,
    basis: KroneckerBasis,
    weights: tf.Tensor,
    prior_variance: tf.Tensor,
) -> KroneckerPosterior:
    """Newton posterior at W with prior N(0, γI): λ = s + 1/γ, mean = W − R⁻¹[R(∇ + W/γ)/λ]. γ is a scalar."""
    prior_precision = 1.0 / tf.cast(prior_variance, curvature.dtype)
    precision = curvature + prior_precision
    step = rotate(basis, factors.loss_gradient + prior_precision * weights) / precision
    mean = weights - unrotate(basis, step)
    return KroneckerPosterior(mean, precision, _finite(mean, precision))


def batch_posterior(
    features: tf.Tensor,
    labels: tf.Tensor,
    weights: tf.Tensor,
    basis: KroneckerBasis,
    prior_precision: tf.Tensor,
    prior_mean: tf.Tensor,
    present: tf.Tensor | None = None,
) -> KroneckerPosterior:
    """The batch's Newton posterior under the prior N(m_F, R⁻¹ diag(λ_F) R): λ = λ_F + s_batch (exactly diagonal).

    `prior_precision` λ_F [C, n] in the eigenbasis, `prior_mean` m_F [C, n]; as `newton_posterior` with the
    full-data curvature replaced by its eigenbasis diagonal. Cost O(B·C² + B·n² + B·C·n + C²·n + C·n²).
    """
    extended = with_bias_feature(features)
    weight = _sample_weights(extended, present)
    probabilities = _probabilities(extended, weights)
    loss_gradient = tf.matmul(weight[:, None] * (probabilities - labels), extended, transpose_a=True)
    precision = prior_precision + eigenbasis_curvature(features, weights, basis, present)
    step = (rotate(basis, loss_gradient) + prior_precision * rotate(basis, weights - prior_mean)) / precision
    mean = weights - unrotate(basis, step)
    return KroneckerPosterior(mean, precision, _finite(mean, precision))


def _finite(mean: tf.Tensor, precision: tf.Tensor) -> tf.Tensor:
    return tf.reduce_all(tf.math.is_finite(mean)) & tf.reduce_all(tf.math.is_finite(precision) & (precision > 0))


def evidence_prior_variance(
    factors: KroneckerFactors,
    curvature: tf.Tensor,
    basis: KroneckerBasis,
    weights: tf.Tensor,
    prior_variance: tf.Tensor | float,
    num_iterations: int = 10,
) -> tf.Tensor:
    """MacKay's γ for the Kronecker posterior (as `evidence.classification_evidence_variance`): the GGN's
    eigenvalues are s and Qᵀ(GGN·W − ∇) = s ⊙ R(W) − R(∇), both already in the eigenbasis. Scalar γ."""
    pull = curvature * rotate(basis, weights) - rotate(basis, factors.loss_gradient)
    return _fixed_point(
        tf.reshape(curvature, [-1]), tf.reshape(tf.square(pull), [-1]), 1, prior_variance, num_iterations
    )


def dense_precision(basis: KroneckerBasis, precision: tf.Tensor) -> tf.Tensor:
    """Q diag(vec λ) Qᵀ as a C·n-square matrix, row-major (class, feature): for tests and small heads only."""
    rotation = tf.reshape(
        basis.classes[:, None, :, None] * basis.features[None, :, None, :],
        [tf.size(precision), tf.size(precision)],
    )  # Q_A ⊗ Q_G
    return tf.matmul(rotation * tf.reshape(precision, [1, -1]), rotation, transpose_b=True)


def logit_variances(features: tf.Tensor, basis: KroneckerBasis, precision: tf.Tensor) -> tf.Tensor:
    """d [B, C]: the logits f = Wh̃ have covariance Q_A diag(d_i) Q_Aᵀ with d_ik = Σ_l (Q_Gᵀh̃_i)_l² / λ_kl."""
    feature_energy = tf.square(tf.matmul(with_bias_feature(features), basis.features))
    return tf.matmul(feature_energy, 1.0 / precision, transpose_b=True)


def logit_covariance(features: tf.Tensor, basis: KroneckerBasis, precision: tf.Tensor) -> tf.Tensor:
    """V_i = Q_A diag(d_i) Q_Aᵀ [B, C, C], the logit covariance `predictive.mean_field_softmax` takes (the served
    form's computation, `predictive.factored_logit_covariance`, with v = 1/λ)."""
    factored = predictive.FactoredCovariance(basis.classes, basis.features, 1.0 / precision)
    return predictive.factored_logit_covariance(with_bias_feature(features), factored)


def gradient_moments(
    posterior: KroneckerPosterior,
    basis: KroneckerBasis,
    features: tf.Tensor,
    labels: tf.Tensor,
    num_samples: int,
    seed: tf.Tensor,
    draws_per_rotation: int = 1,
) -> GradientMoments:
    """Monte Carlo moments of g = Σ_c (softmax(W h̃)_c − y_c)·w_c,1:D under the Kronecker posterior: [B, 1, D].

    The paper's estimator (`draws_per_rotation` 1; more reuses each rotated noise matrix with sign flips,
    `kronecker_draws`), w_s = mean + R⁻¹(ε_s/√λ) formed in the feature eigenbasis, W̃_s = mean·Q_G + Q_A(ε_s/√λ):
    logits u W̃_sᵀ (u = Q_Gᵀh̃), gradients Q_G,1:D W̃_sᵀ r_s. Draws run in chunks (a loop XLA compiles once), so
    memory is O(chunk·(C·n + B·C + B·n)) and no S×B×D tensor exists. `seed` [2] is a stateless seed.
    """
    return kronecker_draws.draw_moments(
        tf.matmul(posterior.mean, basis.features),
        tf.math.rsqrt(posterior.precision),
        basis.classes,
        basis.features,
        features,
        labels,
        num_samples,
        seed,
        draws_per_rotation,
    )
