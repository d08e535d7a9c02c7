"""Prior variance γ chosen by the evidence (MacKay's fixed point), for regression and classification heads.

SPEC "Beyond the paper": for a group sharing the precision Λ = I/γ + G with posterior means m_o,
Σ = Λ⁻¹ and n_eff = n − tr(Σ)/γ, iterate γ ← Σ_o ‖m_o‖² / (O·n_eff) from the last value.

With G = U diag(e) Uᵀ factored once, every quantity is diagonal in the eigenbasis. Writing
m̂_o = Uᵀm_o = γ t_o / (1 + γe) (t_o = Uᵀ(Σh y_o) for regression, t = Uᵀ(G W − ∇) for the Laplace
posterior of a classification block), and n_eff = Σ_k γe_k/(1 + γe_k), the update is

    γ ← γ · [Σ_k Σ_o t_ok² / (1 + γe_k)²] / [O · Σ_k e_k / (1 + γe_k)],

O(n) per iteration after one O(n³) eigendecomposition, with no cancellation in n − tr(Σ)/γ and
no γ² underflow. A block without curvature (Σ e_k = 0) carries no information and keeps its γ.
"""

from __future__ import annotations

import tensorflow as tf

from keras_bayesagg.bayes.classification import Curvature

MIN_PRIOR_VARIANCE = 1e-8
MAX_PRIOR_VARIANCE = 1e8


def _fixed_point(
    eigenvalues: tf.Tensor,
    pull_energy: tf.Tensor,
    num_outputs: int | tf.Tensor,
    prior_variance: tf.Tensor,
    num_iterations: int,
) -> tf.Tensor:
    """Iterates the update above `num_iterations` times, batched over leading dimensions.

    `eigenvalues` e [..., n] of G, `pull_energy` Σ_o t_ok² [..., n], `prior_variance` γ [...] (the start).
    """
    dtype = eigenvalues.dtype
    curvature = tf.maximum(eigenvalues, 0.0)  # G is PSD; round-off can leave tiny negatives
    tiny = tf.constant(1e-30 if dtype == tf.float64 else 1e-20, dtype)
    outputs = tf.cast(num_outputs, dtype)

    def clip(variance: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(variance, MIN_PRIOR_VARIANCE, MAX_PRIOR_VARIANCE)

    def step(iteration: tf.Tensor, variance: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        shrink = 1.0 / (1.0 + variance[..., None] * curvature)  # 1/(1 + γe) = (eigenvalues of Σ)/γ
        energy = tf.reduce_sum(pull_energy * tf.square(shrink), axis=-1)  # Σ_o ‖m_o‖² / γ²
        count = tf.reduce_sum(curvature * shrink, axis=-1)  # n_eff / γ
        updated = variance * energy / (outputs * tf.maximum(count, tiny))
        return iteration + 1, clip(tf.where(count > tiny, updated, variance))

    start = tf.cast(tf.convert_to_tensor(prior_variance, dtype_hint=dtype), dtype)  # a Python float stays exact
    start = clip(start * tf.ones(tf.shape(eigenvalues)[:-1], dtype))
    _, variance = tf.while_loop(
        lambda iteration, _: iteration < num_iterations,
        step,
        (tf.constant(0), start),
        maximum_iterations=num_iterations,
    )
    return variance


def regression_evidence_variance(
    feature_gram: tf.Tensor, feature_target: tf.Tensor, prior_variance: tf.Tensor | float, num_iterations: int = 10
) -> tf.Tensor:
    """Evidence-chosen prior variance γ (scalar) of the regression heads, prior N(0, γI), noise τ = 1.

    `feature_gram` G = Σhhᵀ [D, D] and `feature_target` Σh·y [D, O] are the epoch's sufficient
    statistics (as for `regression.full_data_posterior`); `prior_variance` is the start (the last γ).
    All O outputs share one γ: Λ = I/γ + G, m_o = Λ⁻¹Σh y_o, γ ← Σ_o ‖m_o‖²/(O·n_eff).
    """
    eigenvalues, eigenvectors = tf.linalg.eigh(feature_gram)
    pulls = tf.matmul(eigenvectors, feature_target, transpose_a=True)  # Uᵀ Σh y  [D, O]
    return _fixed_point(
        eigenvalues,
        tf.reduce_sum(tf.square(pulls), axis=-1),
        tf.shape(feature_target)[-1],
        prior_variance,
        num_iterations,
    )


def per_output_regression_evidence_variance(
    feature_grams: tf.Tensor, feature_target: tf.Tensor, prior_variance: tf.Tensor | float, num_iterations: int = 10
) -> tf.Tensor:
    """`regression_evidence_variance` when each output o has its own gram G_o [O, D, D] (partly labelled
    data, see `regression.per_output_full_data_posterior`): one shared γ ← Σ_o ‖m_o‖² / Σ_o n_eff,o.

    Equal grams give the same γ as `regression_evidence_variance`. `feature_target` is [D, O].
    """
    eigenvalues, eigenvectors = tf.linalg.eigh(feature_grams)  # [O, D], [O, D, D]
    pulls = tf.einsum("ode,do->oe", eigenvectors, feature_target)  # U_oᵀ Σh y_o  [O, D]
    # Flattened over outputs with one "output": the sums of the update run over (o, k) together.
    return _fixed_point(
        tf.reshape(eigenvalues, [-1]), tf.reshape(tf.square(pulls), [-1]), 1, prior_variance, num_iterations
    )


def classification_evidence_variance(
    curvature: Curvature, weights: tf.Tensor, prior_variance: tf.Tensor | float, num_iterations: int = 10
) -> tf.Tensor:
    """Evidence-chosen prior variance γ per block [M] for the Laplace posterior at the head `weights` [M, n].

    `curvature` (from `classification.binary_curvature`: one block per binary output, or
    `multiclass_curvature`: the whole head as one block) is taken at `weights`. With prior N(0, γI),
    Λ(γ) = GGN + I/γ and m(γ) = W − Λ⁻¹(∇ + W/γ) (the Newton step of `newton_posterior`),
    n_eff = n − tr(Λ⁻¹)/γ, γ ← ‖m‖²/n_eff. `prior_variance` is the start: a scalar or [M].
    """
    eigenvalues, eigenvectors = tf.linalg.eigh(curvature.ggn)
    pull = tf.linalg.matvec(curvature.ggn, weights) - curvature.loss_gradient  # G W − ∇: m̂ = γUᵀ(GW − ∇)/(1 + γe)
    projected = tf.linalg.matvec(eigenvectors, pull, transpose_a=True)
    return _fixed_point(eigenvalues, tf.square(projected), 1, prior_variance, num_iterations)
