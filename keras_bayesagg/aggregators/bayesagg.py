"""BayesAgg-MTL (Achituve et al., ICML 2024): inverse-variance aggregation of Bayesian task gradients.

Each linear head gets a posterior; it induces a Gaussian over every task's per-sample gradient
w.r.t. h (paper Eq. 4 for regression, Monte Carlo for classification); the task gradients are
combined per sample and per dimension with weights ∝ 1/σ²^s (paper Eq. 9). The posterior's
prior is the full-data posterior of the previous epoch, refreshed by `FullDataPrior`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.aggregators.base import (
    Aggregation,
    Aggregator,
    AggregatorInputs,
    TaskLayout,
    sum_of_losses_gradient,
)
from keras_bayesagg.bayes import regression
from keras_bayesagg.bayes.aggregation import inverse_variance_aggregate
from keras_bayesagg.tasks import REGRESSION

LINALG_DTYPES = ("float32", "float64")


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class BayesAgg(Aggregator):
    """BayesAgg-MTL.

    Args:
        prior_variance: γ of the prior N(0, γI) of the full-data posterior.
        regression_power: s_reg ∈ (0, 1], the power of regression gradient variances.
        classification_power: s_cls ∈ (0, 1], the power of classification gradient variances.
        num_samples: S, Monte Carlo draws of classification head weights per step.
        warmup_epochs: epochs trained with linear scalarization before BayesAgg takes over.
        seed: seed of the Monte Carlo draws (same seed, same run; works under XLA).
        linalg_dtype: "float32" or "float64" for posteriors and factorizations.

    Defaults follow the authors' UTKFace setting (γ = 0.005, s_reg = 0.3, s_cls = 0.1, S = 1024).
    """

    needs_task_gradients = True

    def __init__(
        self,
        prior_variance: float = 0.005,
        regression_power: float = 0.3,
        classification_power: float = 0.1,
        num_samples: int = 1024,
        warmup_epochs: int = 1,
        seed: int | None = None,
        linalg_dtype: str = "float32",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if not prior_variance > 0:
            raise ValueError(f"BayesAgg: prior_variance must be > 0; got {prior_variance!r}.")
        for label, power in (("regression_power", regression_power), ("classification_power", classification_power)):
            if not 0 < power <= 1:
                raise ValueError(f"BayesAgg: {label} must be in (0, 1]; got {power!r}.")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"BayesAgg: num_samples must be a positive whole number; got {num_samples!r}.")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"BayesAgg: warmup_epochs must be a whole number >= 0; got {warmup_epochs!r}.")
        if linalg_dtype not in LINALG_DTYPES:
            raise ValueError(f"BayesAgg: linalg_dtype must be one of {LINALG_DTYPES}; got {linalg_dtype!r}.")
        self.prior_variance = float(prior_variance)
        self.regression_power = float(regression_power)
        self.classification_power = float(classification_power)
        self.num_samples = int(num_samples)
        self.warmup_epochs = int(warmup_epochs)
        self.seed = seed
        self.linalg_dtype = linalg_dtype
        self.seed_generator = keras.random.SeedGenerator(seed, name="bayesagg_seed")

    # ------------------------------------------------------------------ state
    def build_state(self, layout: TaskLayout) -> None:
        dim = layout.representation_dim
        self.regression_tasks = [name for name, task in layout.tasks.items() if task.kind == REGRESSION]
        num_regression = sum(layout.tasks[name].units for name in self.regression_tasks)
        unsupported = [name for name, task in layout.tasks.items() if task.kind != REGRESSION]
        if unsupported:
            raise NotImplementedError(
                f"BayesAgg: classification tasks {unsupported} are not supported yet; use LinearScalarization."
            )
        self.completed_epochs = self.add_weight(
            name="completed_epochs", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.failure_code = self.add_weight(name="failure_code", shape=(), dtype="int32", initializer="zeros", trainable=False)
        self.unit_powers = tf.constant(
            [self.regression_power if unit.kind == REGRESSION else self.classification_power for unit in layout.units],
            tf.float32,
        )
        if num_regression:
            self.regression_gram_sum = self._state("regression_gram_sum", (dim, dim))
            self.regression_target_sum = self._state("regression_target_sum", (dim, num_regression))
            self.regression_prior_precision = self._state(
                "regression_prior_precision", (dim, dim), keras.initializers.Identity(1.0 / self.prior_variance)
            )
            self.regression_prior_shift = self._state("regression_prior_shift", (dim, num_regression))

    def _state(self, name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
        return self.add_weight(name=name, shape=shape, dtype=self.linalg_dtype, initializer=initializer, trainable=False)

    @property
    def has_regression(self) -> bool:
        return bool(self.regression_tasks)

    # ------------------------------------------------------------------ per step
    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        features = tf.cast(inputs.representation, self.linalg_dtype)
        if self.has_regression:
            targets = self._regression_targets(inputs)
            self.regression_gram_sum.assign_add(tf.matmul(features, features, transpose_a=True))
            self.regression_target_sum.assign_add(tf.matmul(features, targets, transpose_a=True))

        def warmup() -> tuple[tf.Tensor, tf.Tensor]:
            return sum_of_losses_gradient(inputs), tf.ones_like(inputs.losses)

        def bayesian() -> tuple[tf.Tensor, tf.Tensor]:
            return self._bayesian_gradient(inputs)

        gradient, weights = tf.cond(self.completed_epochs < self.warmup_epochs, warmup, bayesian)
        return Aggregation(tf.reduce_sum(inputs.losses), gradient, weights)

    def _regression_targets(self, inputs: AggregatorInputs) -> tf.Tensor:
        return tf.cast(tf.concat([inputs.labels[name] for name in self.regression_tasks], axis=1), self.linalg_dtype)

    def _bayesian_gradient(self, inputs: AggregatorInputs) -> tuple[tf.Tensor, tf.Tensor]:
        features = tf.cast(inputs.representation, self.linalg_dtype)
        means, variances = [], []
        posterior = regression.batch_posterior(
            self.regression_prior_precision, self.regression_prior_shift, features, self._regression_targets(inputs)
        )
        moments = regression.gradient_moments(posterior, features, self._regression_targets(inputs))
        means.append(moments.mean)
        variances.append(moments.variance)
        ok = posterior.ok
        combined = inverse_variance_aggregate(
            tf.cast(tf.concat(means, axis=1), tf.float32),
            tf.cast(tf.concat(variances, axis=1), tf.float32),
            self.unit_powers,
        )
        batch = tf.cast(inputs.batch_size, tf.float32)
        gradient = combined.gradient / batch
        finite = ok & tf.reduce_all(tf.math.is_finite(gradient))
        self.failure_code.assign(tf.where(finite, self.failure_code, 1))
        fallback = sum_of_losses_gradient(inputs)
        gradient = tf.where(finite, gradient, fallback)
        weights = tf.reduce_mean(combined.weights, axis=[0, 2])
        return gradient, weights

    # ------------------------------------------------------------------ per epoch
    def begin_epoch(self) -> None:
        """Start collecting this epoch's full-data statistics."""
        if self.built and self.has_regression:
            self.regression_gram_sum.assign(tf.zeros_like(self.regression_gram_sum))
            self.regression_target_sum.assign(tf.zeros_like(self.regression_target_sum))

    def end_epoch(self, model: Any) -> None:
        """Turn this epoch's statistics into the prior of the next epoch (SPEC "full-data posterior").

        Once BayesAgg is active (from the last warm-up epoch on), regression heads switch to the
        full-data posterior mean m_F (no bias): the paper's prediction rule.
        """
        if self.has_regression:
            precision, mean, ok = regression.full_data_posterior(
                tf.convert_to_tensor(self.regression_gram_sum),
                tf.convert_to_tensor(self.regression_target_sum),
                self.prior_variance,
            )
            if not bool(ok):
                raise FloatingPointError(
                    f"BayesAgg: the full-data precision of regression tasks {self.regression_tasks} could not be "
                    "factored even with jitter; the trunk's representation has non-finite or huge values."
                )
            self.regression_prior_precision.assign(precision)
            self.regression_prior_shift.assign(tf.convert_to_tensor(self.regression_target_sum))
            if int(self.completed_epochs.numpy()) + 1 >= self.warmup_epochs:
                start = 0
                for name in self.regression_tasks:
                    units = self.layout.tasks[name].units
                    model.heads[name].set_posterior_kernel(tf.transpose(mean[start : start + units]))
                    start += units
        self.completed_epochs.assign_add(1)

    def raise_for_failure(self) -> None:
        code = int(self.failure_code.numpy())
        if code:
            self.failure_code.assign(0)
            raise FloatingPointError(
                f"BayesAgg: the batch posterior of regression tasks {self.regression_tasks} could not be factored "
                "even with jitter (non-finite or huge representations); that step used linear scalarization. "
                "Check the trunk's outputs or lower the learning rate."
            )

    def callbacks(self) -> list[keras.callbacks.Callback]:
        from keras_bayesagg.callbacks import FullDataPrior

        return [FullDataPrior(self)]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "prior_variance": self.prior_variance,
            "regression_power": self.regression_power,
            "classification_power": self.classification_power,
            "num_samples": self.num_samples,
            "warmup_epochs": self.warmup_epochs,
            "seed": self.seed,
            "linalg_dtype": self.linalg_dtype,
        }
