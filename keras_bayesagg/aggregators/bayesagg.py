"""BayesAgg-MTL (Achituve et al., ICML 2024): inverse-variance aggregation of Bayesian task gradients.

Each linear head gets a posterior; it induces a Gaussian over every task's per-sample gradient
w.r.t. h (paper Eq. 4 for regression, Monte Carlo for classification); the task gradients are
combined per sample and per dimension with weights ∝ 1/σ²^s (paper Eq. 9). The posterior's
prior is the full-data posterior of the previous epoch, refreshed in `end_epoch` (called by the
`AggregatorHooks` callback that `fit` adds).

Classification full-data prior and memory: the GGN of the full-data posterior depends on the
head weights at the end of the epoch, so it cannot be accumulated step by step at the weights of
each step. Every train step therefore copies its (h, classification labels) into a preallocated
Keras variable (`feature_buffer_rows` rows, an in-place scatter on the step's path); a callback
moves full buffers to host memory, and at the end of the epoch the exact posterior is computed
over all N rows (in chunks) and factored once. Memory: N·(D + label columns) float32 values on
the host plus `feature_buffer_rows`·(D + label columns) in the variable; e.g. UTKFace
(N ≈ 20,000, D = 512) about 41 MB, ChestX-ray14 (N ≈ 78,000, D = 512) about 160 MB. The
refresh costs O(N·C²·D²) per multiclass head and O(N·O·D²) per binary set once per epoch (a few
seconds at those sizes on 2 cores), in chunks of 4096 rows so no N×C(D+1) matrix is formed.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators.base import (
    Aggregation,
    Aggregator,
    AggregatorInputs,
    TaskLayout,
    sum_of_losses_gradient,
)
from keras_bayesagg.bayes import classification, regression
from keras_bayesagg.bayes.aggregation import inverse_variance_aggregate
from keras_bayesagg.tasks import BINARY, MULTICLASS, REGRESSION

LINALG_DTYPES = ("float32", "float64")
FULL_DATA_CHUNK_ROWS = 4096
BINARY_GROUP = "<binary>"  # key of all binary outputs together; no task name can contain "<"


def _batched_identity(scale: float):
    """Initializer of a stack of scaled identities [M, n, n] (prior precisions I/γ)."""

    def initializer(shape: Any, dtype: Any = None) -> tf.Tensor:
        return tf.eye(shape[-1], batch_shape=shape[:-2], dtype=dtype) * scale

    return initializer


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class BayesAgg(Aggregator):
    """BayesAgg-MTL for any mix of `Regression`, `Binary` and `Multiclass` tasks.

    Args:
        prior_variance: γ of the prior N(0, γI) of the full-data posterior.
        regression_power: s_reg ∈ (0, 1], the power of regression gradient variances.
        classification_power: s_cls ∈ (0, 1], the power of classification gradient variances.
        num_samples: S, Monte Carlo draws of classification head weights per step.
        warmup_epochs: epochs trained with linear scalarization before BayesAgg takes over.
        seed: seed of the Monte Carlo draws (same seed, same run; works under XLA).
        linalg_dtype: "float32" or "float64" for posteriors, factorizations and moments.
        feature_buffer_rows: rows of (h, labels) kept in the step-side staging buffer for the
            classification full-data prior (emptied to host memory by a callback); must hold at
            least the rows of one `steps_per_execution` call.

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
        feature_buffer_rows: int = 8192,
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
        if int(feature_buffer_rows) != feature_buffer_rows or feature_buffer_rows < 1:
            raise ValueError(f"BayesAgg: feature_buffer_rows must be a positive whole number; got {feature_buffer_rows!r}.")
        self.prior_variance = float(prior_variance)
        self.regression_power = float(regression_power)
        self.classification_power = float(classification_power)
        self.num_samples = int(num_samples)
        self.warmup_epochs = int(warmup_epochs)
        self.seed = seed
        self.linalg_dtype = linalg_dtype
        self.feature_buffer_rows = int(feature_buffer_rows)
        self.seed_generator = keras.random.SeedGenerator(seed, name="bayesagg_seed")
        self._host_rows: list[np.ndarray] = []  # this epoch's (h, labels) rows moved out of the buffer
        self._largest_write = 0  # most rows seen between two end_batch() calls
        self._rows_at_last_check = 0

    # ------------------------------------------------------------------ state
    def build_state(self, layout: TaskLayout) -> None:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            raise ValueError(
                f"BayesAgg does not support tf.distribute with more than one replica yet (got {replicas}): its "
                "full-data statistics and feature buffer are per-process state. Train on one device, or use "
                "another aggregator under this strategy."
            )
        dim = layout.representation_dim
        width = dim + 1
        by_kind = lambda kind: [name for name, task in layout.tasks.items() if task.kind == kind]  # noqa: E731
        self.regression_tasks = by_kind(REGRESSION)
        self.binary_tasks = by_kind(BINARY)
        self.multiclass_tasks = by_kind(MULTICLASS)
        num_regression = sum(layout.tasks[name].units for name in self.regression_tasks)
        num_binary = sum(layout.tasks[name].units for name in self.binary_tasks)
        self.completed_epochs = self.add_weight(
            name="completed_epochs", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        # 0 = fine; k > 0 = the posterior of the k-th task (layout order) failed in some step.
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
            self.regression_prior_covariance = self._state(
                "regression_prior_covariance", (dim, dim), keras.initializers.Identity(self.prior_variance)
            )
            self.regression_prior_mean = self._state("regression_prior_mean", (num_regression, dim))
        isotropic = _batched_identity(1.0 / self.prior_variance)
        if num_binary:
            self.binary_prior_precision = self._state("binary_prior_precision", (num_binary, width, width), isotropic)
            self.binary_prior_mean = self._state("binary_prior_mean", (num_binary, width))
        self.multiclass_prior_precisions: dict[str, keras.Variable] = {}
        self.multiclass_prior_means: dict[str, keras.Variable] = {}
        for name in self.multiclass_tasks:
            size = layout.tasks[name].units * width
            self.multiclass_prior_precisions[name] = self._state(f"{name}_prior_precision", (1, size, size), isotropic)
            self.multiclass_prior_means[name] = self._state(f"{name}_prior_mean", (1, size))
        if self.has_classification:
            label_columns = num_binary + sum(layout.tasks[name].units for name in self.multiclass_tasks)
            # A transient staging area, not state: kept out of `weights` so `.keras` files and
            # checkpoints do not carry feature_buffer_rows x D floats.
            self._untracked("feature_buffer", np.zeros((self.feature_buffer_rows, dim), np.float32))
            self._untracked("label_buffer", np.zeros((self.feature_buffer_rows, label_columns), np.float32))
            self._untracked("buffered_rows", np.zeros((), np.int32))

    def _untracked(self, name: str, initial: np.ndarray) -> None:
        object.__setattr__(self, name, keras.Variable(initial, dtype=initial.dtype.name, trainable=False, name=name))

    def _state(self, name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
        return self.add_weight(name=name, shape=shape, dtype=self.linalg_dtype, initializer=initializer, trainable=False)

    @property
    def has_regression(self) -> bool:
        return bool(self.regression_tasks)

    @property
    def has_classification(self) -> bool:
        return bool(self.binary_tasks or self.multiclass_tasks)

    # ------------------------------------------------------------------ per step
    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        features = tf.cast(inputs.representation, self.linalg_dtype)
        targets = self._regression_targets(inputs) if self.has_regression else None

        def collect() -> tf.Tensor:
            if self.has_regression:
                self.regression_gram_sum.assign_add(tf.matmul(features, features, transpose_a=True))
                self.regression_target_sum.assign_add(tf.matmul(features, targets, transpose_a=True))
            if self.has_classification:
                self._buffer_rows(inputs)
            return tf.constant(0)

        # Only the last warm-up epoch's data becomes a prior; earlier epochs need no statistics.
        tf.cond(self.completed_epochs + 1 >= self.warmup_epochs, collect, lambda: tf.constant(0))
        # Seeds are drawn every step (also in warm-up) so a run depends on the seed alone.
        seeds = {name: self.seed_generator.next() for name in self._sampled_groups()}

        def warmup() -> tuple[tf.Tensor, tf.Tensor]:
            return sum_of_losses_gradient(inputs), tf.ones_like(inputs.losses)

        # Head weights are read here, outside the cond and without gradient: the branch must not
        # touch variables the train step's tape watches, or (under XLA) TF differentiates it.
        head_weights = self._classification_weights(inputs.heads)

        def bayesian() -> tuple[tf.Tensor, tf.Tensor]:
            return self._bayesian_gradient(inputs, features, targets, seeds, head_weights)

        gradient, weights = tf.cond(self.completed_epochs < self.warmup_epochs, warmup, bayesian)
        return Aggregation(tf.reduce_sum(inputs.losses), gradient, weights)

    def _sampled_groups(self) -> list[str]:
        return ([BINARY_GROUP] if self.binary_tasks else []) + list(self.multiclass_tasks)

    def _regression_targets(self, inputs: AggregatorInputs) -> tf.Tensor:
        return tf.cast(tf.concat([inputs.labels[name] for name in self.regression_tasks], axis=1), self.linalg_dtype)

    def _classification_labels(self, inputs: AggregatorInputs) -> tf.Tensor:
        """Binary outputs then multiclass rows, in task order: [B, label columns]."""
        return tf.concat([inputs.labels[name] for name in self.binary_tasks + self.multiclass_tasks], axis=1)

    def _buffer_rows(self, inputs: AggregatorInputs) -> None:
        """Copy this step's (h, labels) into the staging buffer (dropped, and counted, when full)."""
        start = tf.convert_to_tensor(self.buffered_rows)
        rows = tf.shape(inputs.representation)[0]

        def write() -> tf.Tensor:
            indices = tf.minimum(start + tf.range(rows), self.feature_buffer_rows - 1)[:, None]
            self.feature_buffer.value.scatter_nd_update(indices, tf.cast(inputs.representation, tf.float32))
            self.label_buffer.value.scatter_nd_update(indices, self._classification_labels(inputs))
            return tf.constant(0)

        tf.cond(start + rows <= self.feature_buffer_rows, write, lambda: tf.constant(0))
        self.buffered_rows.assign_add(rows)

    def _classification_weights(self, heads: dict[str, Any]) -> dict[str, tf.Tensor]:
        """Current head weights W, without gradient: all binary outputs [O, D+1] under BINARY_GROUP,
        each multiclass head [1, C(D+1)] under its name."""
        weights = {name: self._multiclass_weights(heads[name]) for name in self.multiclass_tasks}
        if self.binary_tasks:
            weights[BINARY_GROUP] = self._binary_weights(heads)
        return weights

    def _binary_weights(self, heads: dict[str, Any]) -> tf.Tensor:
        return tf.concat([self._head_matrix(heads[name]) for name in self.binary_tasks], axis=0)

    def _multiclass_weights(self, head: Any) -> tf.Tensor:
        """The head flattened row-major in (class, feature): [1, C(D+1)]."""
        return tf.reshape(self._head_matrix(head), [1, -1])

    def _head_matrix(self, head: Any) -> tf.Tensor:
        """W [units, D+1] (bias last) of a head, without gradient."""
        kernel = tf.stop_gradient(tf.convert_to_tensor(head.kernel))
        bias = tf.stop_gradient(tf.convert_to_tensor(head.bias))
        return classification.head_weights(kernel, bias, self.linalg_dtype)

    def _bayesian_gradient(
        self,
        inputs: AggregatorInputs,
        features: tf.Tensor,
        targets: tf.Tensor | None,
        seeds: dict[str, tf.Tensor],
        head_weights: dict[str, tf.Tensor],
    ) -> tuple[tf.Tensor, tf.Tensor]:
        moments: dict[str, regression.GradientMoments] = {}  # per task: [B, units of the task, D]
        task_ok: dict[str, tf.Tensor] = {}

        if self.has_regression:
            marginals = self._regression_marginals(features, targets)
            self._split_by_task(
                regression.gradient_moments(marginals, features, targets), self.regression_tasks, marginals.ok, moments, task_ok
            )

        if self.binary_tasks:
            labels = tf.cast(tf.concat([inputs.labels[name] for name in self.binary_tasks], axis=1), self.linalg_dtype)
            weights = head_weights[BINARY_GROUP]
            posterior = classification.newton_posterior(
                classification.binary_curvature(features, labels, weights),
                weights,
                tf.convert_to_tensor(self.binary_prior_precision),
                tf.convert_to_tensor(self.binary_prior_mean),
            )
            binary_moments = classification.binary_gradient_moments(posterior, features, labels, self.num_samples, seeds[BINARY_GROUP])
            self._split_by_task(binary_moments, self.binary_tasks, posterior.ok, moments, task_ok)

        for name in self.multiclass_tasks:
            labels = tf.cast(inputs.labels[name], self.linalg_dtype)
            weights = head_weights[name]
            posterior = classification.newton_posterior(
                classification.multiclass_curvature(features, labels, tf.reshape(weights, [self.layout.tasks[name].units, -1])),
                weights,
                tf.convert_to_tensor(self.multiclass_prior_precisions[name]),
                tf.convert_to_tensor(self.multiclass_prior_means[name]),
            )
            moments[name] = classification.multiclass_gradient_moments(posterior, features, labels, self.num_samples, seeds[name])
            task_ok[name] = tf.reduce_all(posterior.ok)

        names = list(self.layout.tasks)
        code = tf.constant(0, tf.int32)
        for index in reversed(range(len(names))):
            task_moments = moments[names[index]]
            finite = tf.reduce_all(tf.math.is_finite(task_moments.mean)) & tf.reduce_all(tf.math.is_finite(task_moments.variance))
            code = tf.where(task_ok[names[index]] & finite, code, index + 1)
        combined = inverse_variance_aggregate(
            tf.cast(tf.concat([moments[name].mean for name in names], axis=1), tf.float32),
            tf.cast(tf.concat([moments[name].variance for name in names], axis=1), tf.float32),
            self.unit_powers,
        )
        gradient = combined.gradient / tf.cast(inputs.batch_size, tf.float32)
        usable = tf.equal(code, 0) & tf.reduce_all(tf.math.is_finite(gradient))
        code = tf.where(usable | (code > 0), code, len(names) + 1)
        self.failure_code.assign(tf.where(tf.equal(self.failure_code, 0), code, self.failure_code))
        # A failed posterior falls back to linear scalarization for this step: weights stay finite.
        gradient = tf.where(usable, gradient, sum_of_losses_gradient(inputs))
        weights = tf.where(usable, tf.reduce_mean(combined.weights, axis=[0, 2]), tf.ones_like(inputs.losses))
        return gradient, weights

    def _regression_marginals(self, features: tf.Tensor, targets: tf.Tensor) -> regression.PosteriorMarginals:
        """Batch posterior marginals: a rank-B update of the full-data prior when B < D, else a D×D factorization."""
        prior_mean = tf.convert_to_tensor(self.regression_prior_mean)

        def low_rank() -> regression.PosteriorMarginals:
            return regression.low_rank_marginals(tf.convert_to_tensor(self.regression_prior_covariance), prior_mean, features, targets)

        def full_rank() -> regression.PosteriorMarginals:
            precision = tf.convert_to_tensor(self.regression_prior_precision)
            shift = tf.matmul(precision, prior_mean, transpose_b=True)
            posterior = regression.batch_posterior(precision, shift, features, targets)
            return regression.marginals_from_posterior(posterior, features)

        return tf.cond(tf.shape(features)[0] < self.layout.representation_dim, low_rank, full_rank)

    def _split_by_task(
        self,
        group: regression.GradientMoments,
        task_names: list[str],
        ok: tf.Tensor,
        moments: dict[str, regression.GradientMoments],
        task_ok: dict[str, tf.Tensor],
    ) -> None:
        """Split moments [B, units of all tasks, D] (and per-output ok flags, if any) by task."""
        start = 0
        for name in task_names:
            units = self.layout.tasks[name].units
            moments[name] = regression.GradientMoments(group.mean[:, start : start + units], group.variance[:, start : start + units])
            task_ok[name] = tf.reduce_all(ok[start : start + units]) if ok.shape.rank else ok
            start += units

    # ------------------------------------------------------------------ per batch / per epoch
    def begin_epoch(self) -> None:
        """Start collecting this epoch's full-data statistics."""
        if not self.built:
            return
        if self.has_regression:
            self.regression_gram_sum.assign(tf.zeros_like(self.regression_gram_sum))
            self.regression_target_sum.assign(tf.zeros_like(self.regression_target_sum))
        if self.has_classification:
            self.buffered_rows.assign(0)
            self._host_rows = []
            self._rows_at_last_check = 0

    def end_batch(self) -> None:
        """Move the staging buffer to host memory when the next write might not fit.

        Called after every train step by `AggregatorHooks`; a scalar read or two when nothing moves.
        Also raises the error of a step whose posterior could not be factored.
        """
        if not self.built:
            return
        self.raise_for_failure()
        if not self.has_classification:
            return
        rows = int(self.buffered_rows.numpy())
        if rows > self.feature_buffer_rows:
            self._raise_buffer_overflow(rows)
        self._largest_write = max(self._largest_write, rows - self._rows_at_last_check)
        if rows + self._largest_write > self.feature_buffer_rows:
            self._flush_buffer(rows)
            rows = 0
        self._rows_at_last_check = rows

    def _flush_buffer(self, rows: int) -> None:
        if rows:
            stored = np.concatenate([self.feature_buffer.numpy()[:rows], self.label_buffer.numpy()[:rows]], axis=1)
            self._host_rows.append(stored)
        self.buffered_rows.assign(0)

    def _raise_buffer_overflow(self, rows: int) -> None:
        raise ValueError(
            f"BayesAgg: {rows} rows of (h, labels) arrived between two end_batch() calls but the staging buffer "
            f"holds feature_buffer_rows={self.feature_buffer_rows}; raise feature_buffer_rows to at least "
            "batch_size x steps_per_execution (in a custom loop, call aggregator.end_batch() after each step)."
        )

    def _epoch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        rows = int(self.buffered_rows.numpy())
        if rows > self.feature_buffer_rows:
            self._raise_buffer_overflow(rows)
        self._flush_buffer(rows)
        self._rows_at_last_check = 0
        dim = self.layout.representation_dim
        if not self._host_rows:
            return np.zeros((0, dim), np.float32), np.zeros((0, 0), np.float32)
        stored = np.concatenate(self._host_rows, axis=0)
        self._host_rows = []
        return stored[:, :dim], stored[:, dim:]

    def end_epoch(self, model: Any) -> None:
        """Turn this epoch's data into the prior of the next epoch (SPEC "full-data posterior").

        Once BayesAgg is active (from the last warm-up epoch on), regression heads switch to the
        full-data posterior mean m_F (no bias): the paper's prediction rule. Classification
        priors are the Newton posterior over all of the epoch's (h, y) at the heads' current weights.
        Earlier warm-up epochs skip the refresh: nothing uses their prior.
        """
        prior_needed = int(self.completed_epochs.numpy()) + 1 >= self.warmup_epochs
        if not prior_needed:
            if self.has_classification:
                self._epoch_rows()  # empty the buffer and the host rows
            self.completed_epochs.assign_add(1)
            return
        if self.has_regression:
            posterior = regression.full_data_posterior(
                tf.convert_to_tensor(self.regression_gram_sum),
                tf.convert_to_tensor(self.regression_target_sum),
                self.prior_variance,
            )
            mean = posterior.mean
            if not bool(posterior.ok):
                raise FloatingPointError(
                    f"BayesAgg: the full-data precision of regression tasks {self.regression_tasks} could not be "
                    "factored even with jitter; the trunk's representation has non-finite or huge values."
                )
            self.regression_prior_precision.assign(posterior.precision)
            self.regression_prior_covariance.assign(posterior.covariance)
            self.regression_prior_mean.assign(mean)
            start = 0
            for name in self.regression_tasks:
                units = self.layout.tasks[name].units
                model.heads[name].set_posterior_kernel(tf.transpose(mean[start : start + units]))
                start += units
        if self.has_classification:
            features, labels = self._epoch_rows()
            if len(features):
                self._refresh_classification_priors(model, features, labels)
        self.completed_epochs.assign_add(1)

    def _refresh_classification_priors(self, model: Any, features: np.ndarray, labels: np.ndarray) -> None:
        dtype = self.linalg_dtype
        heads = model.heads
        column = 0
        if self.binary_tasks:
            num_binary = sum(self.layout.tasks[name].units for name in self.binary_tasks)
            weights = self._binary_weights(heads)
            curvature = _chunked_curvature(
                classification.binary_curvature, features, labels[:, column : column + num_binary], weights, dtype
            )
            column += num_binary
            prior = classification.isotropic_prior(num_binary, self.layout.representation_dim + 1, self.prior_variance, dtype)
            posterior = classification.newton_posterior(curvature, weights, *prior)
            self._check_full_data(posterior.ok, self.binary_tasks, [self.layout.tasks[n].units for n in self.binary_tasks])
            self.binary_prior_precision.assign(posterior.precision)
            self.binary_prior_mean.assign(posterior.mean)
        for name in self.multiclass_tasks:
            classes = self.layout.tasks[name].units
            weights = self._multiclass_weights(heads[name])
            curvature = _chunked_curvature(
                classification.multiclass_curvature,
                features,
                labels[:, column : column + classes],
                tf.reshape(weights, [classes, -1]),
                dtype,
            )
            column += classes
            prior = classification.isotropic_prior(1, int(weights.shape[-1]), self.prior_variance, dtype)
            posterior = classification.newton_posterior(curvature, weights, *prior)
            self._check_full_data(posterior.ok, [name], [1])
            self.multiclass_prior_precisions[name].assign(posterior.precision)
            self.multiclass_prior_means[name].assign(posterior.mean)

    def _check_full_data(self, ok: tf.Tensor, task_names: list[str], blocks: list[int]) -> None:
        flags = ok.numpy()
        start = 0
        for name, count in zip(task_names, blocks):
            if not flags[start : start + count].all():
                raise FloatingPointError(
                    f"BayesAgg: the full-data posterior precision of task '{name}' could not be factored even "
                    "with jitter; the trunk's representation or the head's weights have non-finite or huge values."
                )
            start += count

    def raise_for_failure(self) -> None:
        code = int(self.failure_code.numpy())
        if not code:
            return
        self.failure_code.assign(0)
        names = list(self.layout.tasks)
        if code > len(names):
            what = "the aggregated gradient was not finite"
        else:
            task = self.layout.tasks[names[code - 1]]
            what = f"the batch posterior of task '{names[code - 1]}' ({task.describe()}) could not be factored even with jitter"
        raise FloatingPointError(
            f"BayesAgg: {what} (non-finite or huge representations or head weights); that step used linear "
            "scalarization. Check the trunk's outputs or lower the learning rate."
        )

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
            "feature_buffer_rows": self.feature_buffer_rows,
        }


def _chunked_curvature(
    curvature_fn: Any, features: np.ndarray, labels: np.ndarray, weights: tf.Tensor, dtype: str
) -> classification.Curvature:
    """Sum of `curvature_fn` over row chunks, so peak memory stays O(chunk·C(D+1)) for the full data."""
    total = None
    for start in range(0, len(features), FULL_DATA_CHUNK_ROWS):
        chunk = curvature_fn(
            tf.constant(features[start : start + FULL_DATA_CHUNK_ROWS], dtype),
            tf.constant(labels[start : start + FULL_DATA_CHUNK_ROWS], dtype),
            weights,
        )
        total = chunk if total is None else classification.add_curvatures(total, chunk)
    return total
