"""BayesAgg's regression tasks: full-data statistics, the prior they make, and per-step moments.

All regression outputs share one precision (it depends on the features only). During an epoch
the applied steps add Σhhᵀ [D, D] and Σhy [D, O] (O(D²) memory, no stored features); at the end
of the epoch they become the next epoch's prior N(m_F, Λ_F⁻¹) (SPEC "Regression").

Weights and missing labels: output o's posteriors weigh row i by w_io (the label's presence times its
sample weight, a repetition count; 0 where missing): Σ w h hᵀ and Σ w h y. When every row has one weight
for all outputs (one output; or fully labelled, uniformly weighted rows) that is one shared precision.
Otherwise (O > 1 outputs) a batch adds per-output grams Σ_i w_io h_i h_iᵀ [O, D, D] beside Σ w h hᵀ of the
uniform batches, and an epoch that had any makes per-output priors (precision and covariance [O, D, D]);
steps then take one posterior per output. Fully labelled data keeps the shared path (the same
switch as before, over more branches) and pays only memory: 3·O·D² more values of state when O > 1.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import tensorflow as tf

from keras_bayesagg.bayes import evidence, regression

EVIDENCE_ITERATIONS = 10


def uniform_weights(present: tf.Tensor) -> tf.Tensor:
    """True when every row of `present` [B, O] has one weight for all outputs: the outputs share a precision."""
    return tf.reduce_all(tf.equal(present, present[:, :1]))


def _identities(scale: float) -> Any:
    """Initializer of a stack of scaled identities [O, D, D]."""

    def initializer(shape: Any, dtype: Any = None) -> tf.Tensor:
        return tf.eye(shape[-1], batch_shape=shape[:-2], dtype=dtype) * scale

    return initializer


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

        self.outputs = outputs
        self.owner = owner

        # Creation order is the saved order (files of version 0.1.0 load unchanged).
        self.gram_sum = self._state("regression_gram_sum", (dim, dim))
        self.target_sum = self._state("regression_target_sum", (dim, outputs))
        self.start = initial_prior_variance if prior_variance is None else prior_variance
        self.prior_precision = self._state(
            "regression_prior_precision", (dim, dim), keras.initializers.Identity(1.0 / self.start)
        )
        self.prior_covariance = self._state(
            "regression_prior_covariance", (dim, dim), keras.initializers.Identity(self.start)
        )
        self.prior_mean = self._state("regression_prior_mean", (outputs, dim))
        self.chosen_prior_variance = None
        if prior_variance is None:
            self.chosen_prior_variance = self._state(
                "regression_chosen_prior_variance", (), keras.initializers.Constant(self.start)
            )
        self.output_state: tuple[keras.Variable, ...] = ()

    def _state(self, name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
        return self.owner.add_weight(name=name, shape=shape, dtype=self.dtype, initializer=initializer, trainable=False)

    def add_output_state(self) -> None:
        """The per-output statistics and priors of partly labelled data (O > 1 only). Called after the owner's
        other variables: appended, so files saved before they existed still load (without them)."""
        if self.outputs < 2:
            return
        shape = (self.outputs, self.dim, self.dim)
        self.partial_gram_sum = self._state("regression_partial_gram_sum", shape)
        self.output_prior_precision = self._state(
            "regression_output_prior_precision", shape, _identities(1 / self.start)
        )
        self.output_prior_covariance = self._state("regression_output_prior_covariance", shape, _identities(self.start))
        self.output_priors = self._state("regression_output_priors", ())  # 1: the priors above are in use
        self.output_rows = self._state("regression_output_rows", (self.outputs,))  # present rows of partial batches
        self.output_state = (
            self.partial_gram_sum,
            self.output_prior_precision,
            self.output_prior_covariance,
            self.output_priors,
            self.output_rows,
        )

    def targets(self, labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """All regression labels side by side: [B, O]."""
        return tf.cast(tf.concat([labels[name] for name in self.task_units], axis=1), self.dtype)

    def collect(self, features: tf.Tensor, targets: tf.Tensor, present: tf.Tensor) -> Callable[[], Any]:
        """The write that adds this step's rows to the epoch's sufficient statistics Σ w h hᵀ and Σ w h y
        (`present` [B, O]: the weights w, 0 where the label is missing; `targets` are 0 there)."""
        present = tf.cast(present, features.dtype)
        cross = tf.matmul(features, targets * present, transpose_a=True)
        rows = features * tf.sqrt(present[:, :1])  # Σ w h hᵀ = (√w h)ᵀ(√w h)
        gram = tf.matmul(rows, rows, transpose_a=True)
        complete = uniform_weights(present)

        def add_complete() -> tf.Tensor:
            self.gram_sum.assign_add(gram)
            return tf.constant(0)

        def add_partial() -> tf.Tensor:
            self.partial_gram_sum.assign_add(regression.per_output_feature_grams(features, present))
            self.output_rows.assign_add(tf.reduce_sum(tf.cast(present, self.dtype), axis=0))
            return tf.constant(0)

        def write() -> None:
            if self.outputs == 1:
                add_complete()
            else:
                tf.cond(complete, add_complete, add_partial)
            self.target_sum.assign_add(cross)

        return write

    def reset(self) -> None:
        for variable in (self.gram_sum, self.target_sum, *self.output_state[:1], *self.output_state[4:]):
            variable.assign(tf.zeros_like(variable))

    def moments(
        self,
        features: tf.Tensor,
        targets: tf.Tensor,
        present: tf.Tensor,
        own_rows: Callable[[tf.Tensor], tf.Tensor] | None = None,
    ) -> tuple[dict[str, regression.GradientMoments], tf.Tensor]:
        """Per task: exact gradient moments [B, units, D] under the batch posterior; and whether it factored.
        Rows of missing labels (`present` [B, O] is 0) are not in the posterior of their output.
        `own_rows` (several replicas): the posterior is of all B rows, the moments of the rows it selects only.

        One switch over (shared or per-output posterior) × (rank-B update when B < D, or D×D factorization):
        one level of control flow, as deeper nesting around the Cholesky loops defeats TF's graph optimizer.
        """
        full_rank = tf.cast(tf.shape(features)[0] >= self.dim, tf.int32)
        present = tf.cast(present, features.dtype)
        row_weights = present[:, :1]
        own = own_rows or (lambda tensor: tensor)
        if self.outputs == 1:
            moments, ok = tf.cond(
                full_rank > 0,
                lambda: self._shared_moments(features, targets, row_weights, True, own),
                lambda: self._shared_moments(features, targets, row_weights, False, own),
            )
        else:
            per_output = ~uniform_weights(present) | (tf.convert_to_tensor(self.output_priors) > 0.0)
            branches = [
                lambda rank=rank: self._shared_moments(features, targets, row_weights, rank, own)
                for rank in (False, True)
            ]
            branches += [
                lambda rank=rank: self._per_output_moments(features, targets, present, rank, own)
                for rank in (False, True)
            ]
            moments, ok = tf.switch_case(full_rank + 2 * tf.cast(per_output, tf.int32), branches)
        split: dict[str, regression.GradientMoments] = {}
        start = 0
        for name, units in self.task_units.items():
            split[name] = regression.GradientMoments(
                moments.mean[:, start : start + units], moments.variance[:, start : start + units]
            )
            start += units
        return split, ok

    def _shared_moments(
        self, features: tf.Tensor, targets: tf.Tensor, row_weights: tf.Tensor, full_rank: bool, own: Callable
    ) -> tuple[regression.GradientMoments, tf.Tensor]:
        """The shared posterior of rows weighted by `row_weights` [B, 1] (the same for every output)."""
        prior = (self.prior_precision, self.prior_covariance, self.prior_mean)
        scale = tf.sqrt(row_weights)
        prior = tuple(tf.convert_to_tensor(v) for v in prior)
        marginals = self._marginals(features, targets, scale, *prior, full_rank, own)
        return regression.gradient_moments(marginals, own(features), own(targets)), marginals.ok

    def _per_output_moments(
        self, features: tf.Tensor, targets: tf.Tensor, present: tf.Tensor, full_rank: bool, own: Callable
    ) -> tuple[regression.GradientMoments, tf.Tensor]:
        """One batch posterior per output over its present rows (O factorizations)."""
        per_output = tf.convert_to_tensor(self.output_priors) > 0.0
        shared = [tf.convert_to_tensor(v)[None] for v in (self.prior_precision, self.prior_covariance)]
        precision = tf.where(per_output, tf.convert_to_tensor(self.output_prior_precision), shared[0])
        covariance = tf.where(per_output, tf.convert_to_tensor(self.output_prior_covariance), shared[1])
        prior_mean = tf.convert_to_tensor(self.prior_mean)
        means, variances, oks = [], [], []
        for output in range(self.outputs):
            scale = tf.sqrt(present[:, output : output + 1])
            target = targets[:, output : output + 1]
            marginals = self._marginals(
                features,
                target,
                scale,
                precision[output],
                covariance[output],
                prior_mean[output : output + 1],
                full_rank,
                own,
            )
            moments = regression.gradient_moments(marginals, own(features), own(target))
            means.append(moments.mean)
            variances.append(moments.variance)
            oks.append(marginals.ok)
        return regression.GradientMoments(tf.concat(means, 1), tf.concat(variances, 1)), tf.reduce_all(oks)

    @staticmethod
    def _marginals(
        features: tf.Tensor,
        targets: tf.Tensor,
        scale: tf.Tensor,
        prior_precision: tf.Tensor,
        prior_covariance: tf.Tensor,
        prior_mean: tf.Tensor,
        full_rank: bool,
        own: Callable[[tf.Tensor], tf.Tensor],
    ) -> regression.PosteriorMarginals:
        """The batch posterior of rows √w h with targets √w y (`scale` √w [B, 1]: a row of weight w counts w
        times, Σ w h hᵀ and Σ w h y), by a D×D factorization (`full_rank`, for B >= D) or a rank-B update of
        the full-data prior; its marginals at the unscaled `features` of the rows `own` selects (rows of weight
        0 get finite placeholders). The rank-B update yields every row's marginals on the way: they are sliced."""
        rows, scaled_targets = features * scale, targets * scale
        if not full_rank:
            marginals = regression.low_rank_marginals(prior_covariance, prior_mean, rows, scaled_targets)
            # S(√w h) / √w = S h and (√w h)ᵀS(√w h) / w = hᵀ S h.
            return marginals._replace(
                covariance_features=own(tf.math.divide_no_nan(marginals.covariance_features, scale)),
                feature_variance=own(tf.math.divide_no_nan(marginals.feature_variance, tf.square(scale[:, 0]))),
            )
        shift = tf.matmul(prior_precision, prior_mean, transpose_b=True)
        posterior = regression.batch_posterior(prior_precision, shift, rows, scaled_targets)
        return regression.marginals_from_posterior(posterior, own(features))

    def refresh(self) -> None:
        """Make this epoch's statistics the prior of the next epoch (per output after partly labelled batches)."""
        gram, cross = tf.convert_to_tensor(self.gram_sum), tf.convert_to_tensor(self.target_sum)
        per_output = bool(self.output_state) and bool(tf.reduce_any(self.partial_gram_sum != 0.0))
        if per_output:
            gram = gram[None] + self.partial_gram_sum
        prior_variance = self.prior_variance
        if self.chosen_prior_variance is not None:
            choose = (
                evidence.per_output_regression_evidence_variance
                if per_output
                else evidence.regression_evidence_variance
            )
            prior_variance = choose(gram, cross, tf.convert_to_tensor(self.chosen_prior_variance), EVIDENCE_ITERATIONS)
        fit = regression.per_output_full_data_posterior if per_output else regression.full_data_posterior
        posterior = fit(gram, cross, prior_variance)
        if not bool(tf.reduce_all(posterior.ok)):
            raise FloatingPointError(
                f"BayesAgg: the full-data precision of regression tasks {list(self.task_units)} could not be factored "
                "even with jitter; the trunk's representation has non-finite or huge values."
            )
        if per_output:
            self.output_prior_precision.assign(posterior.precision)
            self.output_prior_covariance.assign(posterior.covariance)
        else:
            self.prior_precision.assign(posterior.precision)
            self.prior_covariance.assign(posterior.covariance)
        if self.output_state:
            self.output_priors.assign(1.0 if per_output else 0.0)
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

    def output_statistics(self, output: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(Σ_i m_io h_i h_iᵀ, its present-row count beyond the complete batches', prior covariance) of one output
        when the priors are per output."""
        gram = tf.convert_to_tensor(self.gram_sum) + self.partial_gram_sum[output]
        return gram, self.output_rows[output], self.output_prior_covariance[output]
