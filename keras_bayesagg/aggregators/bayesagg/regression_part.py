"""BayesAgg's regression tasks: full-data statistics, the prior they make, and per-step moments.

All regression outputs share one precision (it depends on the features only). During an epoch
the applied steps add Σhhᵀ [D, D] and Σhy [D, O] (O(D²) memory, no stored features); at the end
of the epoch they become the next epoch's prior N(m_F, Λ_F⁻¹) (SPEC "Regression").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import tensorflow as tf

from keras_bayesagg.bayes import evidence, regression

EVIDENCE_ITERATIONS = 10


class RegressionPart:
    """State and math of all regression tasks of a BayesAgg instance (variables owned by `owner`)."""

    def __init__(
        self,
        owner: keras.layers.Layer,
        task_units: Mapping[str, int],
        dim: int,
        prior_variance: float | None,
        dtype: str,
        initial_prior_variance: float,
    ) -> None:
        """`prior_variance` None: chosen by the evidence at each refresh (from the last choice)."""
        self.task_units = dict(task_units)
        self.dim = dim
        self.prior_variance = prior_variance
        self.dtype = dtype
        outputs = sum(self.task_units.values())

        def state(name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False)

        # Creation order is the saved order (files of version 0.1.0 load unchanged).
        self.gram_sum = state("regression_gram_sum", (dim, dim))
        self.target_sum = state("regression_target_sum", (dim, outputs))
        start = initial_prior_variance if prior_variance is None else prior_variance
        self.prior_precision = state("regression_prior_precision", (dim, dim), keras.initializers.Identity(1.0 / start))
        self.prior_covariance = state("regression_prior_covariance", (dim, dim), keras.initializers.Identity(start))
        self.prior_mean = state("regression_prior_mean", (outputs, dim))
        self.chosen_prior_variance = None
        if prior_variance is None:
            self.chosen_prior_variance = state(
                "regression_chosen_prior_variance", (), keras.initializers.Constant(start)
            )

    def targets(self, labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """All regression labels side by side: [B, O]."""
        return tf.cast(tf.concat([labels[name] for name in self.task_units], axis=1), self.dtype)

    def collect(self, features: tf.Tensor, targets: tf.Tensor) -> Callable[[], Any]:
        """The write that adds this step's rows to the epoch's sufficient statistics."""
        gram = tf.matmul(features, features, transpose_a=True)
        cross = tf.matmul(features, targets, transpose_a=True)

        def write() -> None:
            self.gram_sum.assign_add(gram)
            self.target_sum.assign_add(cross)

        return write

    def reset(self) -> None:
        self.gram_sum.assign(tf.zeros_like(self.gram_sum))
        self.target_sum.assign(tf.zeros_like(self.target_sum))

    def moments(
        self, features: tf.Tensor, targets: tf.Tensor
    ) -> tuple[dict[str, regression.GradientMoments], tf.Tensor]:
        """Per task: exact gradient moments [B, units, D] under the batch posterior; and whether it factored."""
        marginals = self._marginals(features, targets)
        moments = regression.gradient_moments(marginals, features, targets)
        split: dict[str, regression.GradientMoments] = {}
        start = 0
        for name, units in self.task_units.items():
            split[name] = regression.GradientMoments(
                moments.mean[:, start : start + units], moments.variance[:, start : start + units]
            )
            start += units
        return split, marginals.ok

    def _marginals(self, features: tf.Tensor, targets: tf.Tensor) -> regression.PosteriorMarginals:
        """A rank-B update of the full-data prior when B < D, else a D×D factorization."""
        prior_mean = tf.convert_to_tensor(self.prior_mean)

        def low_rank() -> regression.PosteriorMarginals:
            return regression.low_rank_marginals(
                tf.convert_to_tensor(self.prior_covariance), prior_mean, features, targets
            )

        def full_rank() -> regression.PosteriorMarginals:
            precision = tf.convert_to_tensor(self.prior_precision)
            shift = tf.matmul(precision, prior_mean, transpose_b=True)
            posterior = regression.batch_posterior(precision, shift, features, targets)
            return regression.marginals_from_posterior(posterior, features)

        return tf.cond(tf.shape(features)[0] < self.dim, low_rank, full_rank)

    def refresh(self) -> None:
        """Make this epoch's statistics the prior of the next epoch."""
        gram, cross = tf.convert_to_tensor(self.gram_sum), tf.convert_to_tensor(self.target_sum)
        prior_variance = self.prior_variance
        if self.chosen_prior_variance is not None:
            prior_variance = evidence.regression_evidence_variance(
                gram, cross, tf.convert_to_tensor(self.chosen_prior_variance), EVIDENCE_ITERATIONS
            )
        posterior = regression.full_data_posterior(gram, cross, prior_variance)
        if not bool(posterior.ok):
            raise FloatingPointError(
                f"BayesAgg: the full-data precision of regression tasks {list(self.task_units)} could not be factored "
                "even with jitter; the trunk's representation has non-finite or huge values."
            )
        self.prior_precision.assign(posterior.precision)
        self.prior_covariance.assign(posterior.covariance)
        self.prior_mean.assign(posterior.mean)
        if self.chosen_prior_variance is not None:
            self.chosen_prior_variance.assign(prior_variance)

    def posterior_kernels(self) -> dict[str, tf.Tensor]:
        """Per task, the full-data posterior mean as a head kernel [D, units] (the paper's prediction rule)."""
        kernels, start = {}, 0
        mean = tf.convert_to_tensor(self.prior_mean)
        for name, units in self.task_units.items():
            kernels[name] = tf.transpose(tf.cast(mean[start : start + units], tf.float32))
            start += units
        return kernels
