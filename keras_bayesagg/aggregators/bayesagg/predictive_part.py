"""BayesAgg's serving-time uncertainty: the state it needs beside the priors, and the predictive outputs.

At each refresh of the full-data posterior (epoch end after warm-up) this part also stores
- per regression output, the noise variance σ² from the epoch's residuals (Σy² and the row count
  are summed during the epoch beside Σhhᵀ and Σh·y: no extra pass over the data);
- per classification group, the covariance Σ = Λ⁻¹ of its full-data precision, so serving is matrix
  products (XLA-compilable, no factorization per request).
The variables are created after all of BayesAgg's older ones (creation order is the save order) and
are listed by `later_version_variables`, so files of version 0.1.0, which lack them, still load.
Formulas: `keras_bayesagg.bayes.predictive`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.bayesagg.kronecker_group import KroneckerServedState
from keras_bayesagg.bayes import predictive
from keras_bayesagg.bayes.classification import with_bias_feature
from keras_bayesagg.bayes.linalg import inverse_from_cholesky, safe_cholesky


class PredictivePart:
    """Noise variances, classification covariances and a ready flag (variables owned by `owner`)."""

    def __init__(self, owner: keras.layers.Layer, regression: Any, groups: Sequence[Any], dtype: str) -> None:
        self.regression, self.groups, self.dtype = regression, list(groups), dtype

        def state(name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False)

        self.variables: list[keras.Variable] = []
        if regression is not None:
            outputs = sum(regression.task_units.values())
            self.target_square_sum = state("regression_target_square_sum", (outputs,))
            self.rows = state("regression_rows", ())
            self.noise_variance = state("regression_noise_variance", (outputs,), "ones")
            self.variables += [self.target_square_sum, self.rows, self.noise_variance]
        self.covariances = []  # per group: a covariance variable, or a Kronecker head's served state
        for group in self.groups:
            if getattr(group, "kronecker", False):
                served = KroneckerServedState(owner, group)
                self.covariances.append(served)
                self.variables += served.variables
                continue
            shape = tuple(group.prior_precision.shape)
            self.covariances.append(state(f"{group.prefix}_posterior_covariance", shape))
            self.variables.append(self.covariances[-1])
        # 1 once this part was refreshed with the posterior (0 in files of version 0.1.0).
        self.ready = state("uncertainty_ready", ())
        self.variables.append(self.ready)

    def collect(self, targets: tf.Tensor | None, present: tf.Tensor) -> list[Callable[[], Any]]:
        """The write that adds this step's Σy² and row count (regression targets [B, O], 0 where `present`
        [B, O] is 0; none without). With O > 1 outputs, a partly labelled batch counts its rows per output
        (`RegressionPart.output_rows`) instead."""
        if self.regression is None:
            return []
        squares = tf.reduce_sum(tf.square(targets), axis=0)
        present = tf.cast(present, self.dtype)
        if self.regression.outputs == 1:
            rows = tf.reduce_sum(present)
        else:
            rows = tf.where(tf.reduce_all(present > 0.0), tf.cast(tf.shape(targets)[0], self.dtype), 0.0)

        def write() -> None:
            self.target_square_sum.assign_add(squares)
            self.rows.assign_add(rows)

        return [write]

    def reset(self) -> None:
        if self.regression is not None:
            self.target_square_sum.assign(tf.zeros_like(self.target_square_sum))
            self.rows.assign(tf.zeros_like(self.rows))

    def refresh(self) -> None:
        """After the parts refreshed their posteriors from this epoch (before its sums are reset)."""
        if self.regression is not None:
            self.noise_variance.assign(self._noise_variance())
        for group, covariance in zip(self.groups, self.covariances):
            if isinstance(covariance, KroneckerServedState):
                covariance.refresh()
                continue
            factor, _ = safe_cholesky(tf.convert_to_tensor(group.prior_precision))  # the refresh checked it
            inverse = inverse_from_cholesky(factor)
            covariance.assign(0.5 * (inverse + tf.linalg.matrix_transpose(inverse)))
        self.ready.assign(tf.ones_like(self.ready))

    def _noise_variance(self) -> tf.Tensor:
        """σ² per regression output from the epoch's statistics; per output after partly labelled batches."""
        part = self.regression
        cross, squares = tf.convert_to_tensor(part.target_sum), tf.convert_to_tensor(self.target_square_sum)
        mean, rows = tf.convert_to_tensor(part.prior_mean), tf.convert_to_tensor(self.rows)
        if not (part.output_state and float(part.output_priors.numpy()) > 0):
            gram, covariance = tf.convert_to_tensor(part.gram_sum), tf.convert_to_tensor(part.prior_covariance)
            return predictive.regression_noise_variance(gram, cross, squares, rows, mean, covariance)
        variances = []
        for o in range(part.outputs):
            gram, output_rows, covariance = part.output_statistics(o)
            variances.append(
                predictive.regression_noise_variance(
                    gram, cross[:, o : o + 1], squares[o : o + 1], rows + output_rows, mean[o : o + 1], covariance
                )
            )
        return tf.concat(variances, axis=0)

    def _regression_variance(self, h: tf.Tensor) -> tf.Tensor:
        """σ_o²(1 + hᵀΣ_o h) [B, O], Σ_o the shared covariance or, after partly labelled data, output o's own."""
        part, noise = self.regression, tf.convert_to_tensor(self.noise_variance)

        def shared() -> tf.Tensor:
            return predictive.regression_predictive_variance(h, tf.convert_to_tensor(part.prior_covariance), noise)

        def per_output() -> tf.Tensor:
            covariances = tf.convert_to_tensor(part.output_prior_covariance)
            return (1.0 + predictive.quadratic_forms(h, covariances)) * noise[None, :]

        if not part.output_state:
            return shared()
        return tf.cond(tf.convert_to_tensor(part.output_priors) > 0.0, per_output, shared)

    def outputs(self, features: tf.Tensor, logits: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Flat {"<task>/mean", "<task>/variance"} for regression and {"<task>/probabilities",
        "<task>/entropy"} for binary and multiclass tasks, float32, from h [B, D] and the heads' logits."""
        h = tf.cast(features, self.dtype)
        out: dict[str, tf.Tensor] = {}
        if self.regression is not None:
            variance = self._regression_variance(h)
            start = 0
            for name, units in self.regression.task_units.items():
                out[f"{name}/mean"] = tf.cast(logits[name], tf.float32)  # the head: what `predict` returns
                out[f"{name}/variance"] = tf.cast(variance[:, start : start + units], tf.float32)
                start += units
        extended = with_bias_feature(h)
        for group, covariance in zip(self.groups, self.covariances):
            if isinstance(covariance, KroneckerServedState):
                (name,) = group.task_units
                probabilities = covariance.probabilities(h, tf.cast(logits[name], self.dtype))
                out[f"{name}/probabilities"] = tf.cast(probabilities, tf.float32)
                out[f"{name}/entropy"] = tf.cast(predictive.categorical_entropy(probabilities)[:, None], tf.float32)
                continue
            covariance = tf.convert_to_tensor(covariance)
            if group.multiclass:
                (name,) = group.task_units
                mean = tf.cast(logits[name], self.dtype)
                probabilities = predictive.mean_field_softmax(
                    mean, predictive.logit_covariance(extended, covariance[0], group.label_columns)
                )
                entropy = predictive.categorical_entropy(probabilities)[:, None]
                out[f"{name}/probabilities"] = tf.cast(probabilities, tf.float32)
                out[f"{name}/entropy"] = tf.cast(entropy, tf.float32)
                continue
            spread = predictive.quadratic_forms(extended, covariance)  # [B, outputs of the set]
            start = 0
            for name, units in group.task_units.items():
                mean = tf.cast(logits[name], self.dtype)
                probabilities = predictive.probit_probability(mean, spread[:, start : start + units])
                out[f"{name}/probabilities"] = tf.cast(probabilities, tf.float32)
                out[f"{name}/entropy"] = tf.cast(predictive.binary_entropy(probabilities), tf.float32)
                start += units
        return out


class PredictiveServing:
    """The serving side of BayesAgg (a mixin of the aggregator, which owns `predictive`)."""

    predictive: PredictivePart

    def later_version_variables(self) -> list[keras.Variable]:
        return list(self.predictive.variables) if self.built else []

    def uncertainty_missing(self) -> str | None:
        """Why predictive uncertainty is not available yet, or None when it is."""
        if not self.built:
            return "BayesAgg is not built yet: fit the model (past its warm-up) first."
        if float(self.predictive.ready.numpy()) > 0:
            return None
        if int(self.completed_epochs.numpy()) >= max(self.warmup_epochs, 1):
            return (
                "BayesAgg's full-data posterior was refreshed by an older version (0.1.0) that kept no noise "
                "variance or posterior covariance; train one more epoch to compute them."
            )
        return (
            "BayesAgg has not refreshed a full-data posterior yet: it does at the end of the first epoch after "
            f"its warm-up (warmup_epochs={self.warmup_epochs}; completed epochs: {int(self.completed_epochs.numpy())})."
        )

    def predictive_uncertainty(self, features: tf.Tensor, logits: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.predictive.outputs(features, logits)
