"""BayesAgg's classification tasks: Laplace/GGN priors and Monte Carlo gradient moments per group.

A *group* shares one block structure: all binary outputs together (O blocks of D+1, SPEC
"binary set: no cross terms") or one multiclass head (one block of C(D+1)). The prior of a group
is the Newton posterior over all of the epoch's (h, y) rows at the heads' weights at the end of
the epoch; it cannot be accumulated step by step, hence the staged rows (`row_staging`). Missing
labels (`present` 0) add no term to a batch posterior or to the full-data curvature; the staged rows
carry the group's presence columns after its label columns.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.aggregators.bayesagg.kronecker_group import KroneckerGroup
from keras_bayesagg.aggregators.bayesagg.prior_whitening import PriorWhitening
from keras_bayesagg.bayes import classification, evidence, exact_moments
from keras_bayesagg.bayes.regression import GradientMoments
from keras_bayesagg.tasks import Binary, Multiclass

FULL_DATA_CHUNK_ROWS = 4096
QUADRATURE_NODES = 64  # exact to ~1e-7 up to logit variances of 10 (32 nodes: 1e-4), at the same cost
EVIDENCE_ITERATIONS = 10


def _batched_identity(scale: float) -> Any:
    """Initializer of a stack of scaled identities [M, n, n] (prior precisions I/γ)."""

    def initializer(shape: Any, dtype: Any = None) -> tf.Tensor:
        return tf.eye(shape[-1], batch_shape=shape[:-2], dtype=dtype) * scale

    return initializer


class ClassificationGroup:
    """Prior variables and per-step math of one group (variables owned by `owner`).

    Args:
        prefix: variable name prefix ("binary" or the multiclass task's name).
        task_units: the group's tasks and their outputs (classes for a multiclass head).
        multiclass: one softmax head (True) or a set of independent binary outputs (False).
        prior_variance: γ of the full-data prior, or None to choose it per block by the evidence
            (starting from `initial_prior_variance`, then from the last epoch's choice).
        exact: exact (quadrature) moments where they exist (binary outputs, 2-class heads).
        columns: the group's task units among the K units of the layout (for the presence mask).
    """

    def __init__(
        self,
        owner: keras.layers.Layer,
        prefix: str,
        task_units: Mapping[str, int],
        dim: int,
        prior_variance: float | None,
        dtype: str,
        multiclass: bool,
        exact: bool,
        initial_prior_variance: float,
        columns: Sequence[int] = (),
    ) -> None:
        self.task_units = dict(task_units)
        self.columns = tuple(columns)
        self.prefix = prefix
        self.multiclass = multiclass
        self.prior_variance = prior_variance
        self.dtype = dtype
        self.exact = exact and (not multiclass or self.task_units[next(iter(self.task_units))] == 2)
        self.label_columns = sum(self.task_units.values())
        self.staged_columns = self.label_columns + len(self.columns)  # labels, then presence
        width = dim + 1
        self.blocks, self.block_size = (1, self.label_columns * width) if multiclass else (self.label_columns, width)

        def state(name: str, shape: tuple[int, ...], initializer: Any = "zeros") -> keras.Variable:
            return owner.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False)

        size, start = self.block_size, initial_prior_variance if prior_variance is None else prior_variance
        self.prior_precision = state(
            f"{prefix}_prior_precision", (self.blocks, size, size), _batched_identity(1.0 / start)
        )
        self.prior_mean = state(f"{prefix}_prior_mean", (self.blocks, size))
        self.chosen_prior_variance = None  # per block, only when chosen by the evidence (saved with the model)
        if prior_variance is None:
            self.chosen_prior_variance = state(
                f"{prefix}_chosen_prior_variance", (self.blocks,), keras.initializers.Constant(initial_prior_variance)
            )
        self.whitening: PriorWhitening | None = None  # `add_whitening_state`, after the aggregator's older variables

    def add_whitening_state(self, owner: keras.layers.Layer) -> list[keras.Variable]:
        """The cached whitened prior of a binary set with exact moments (`prior_whitening`); its variables."""
        if self.multiclass or not self.exact:
            return []
        self.whitening = PriorWhitening(owner, self.prefix, self.blocks, self.block_size, self.dtype)
        return self.whitening.variables

    def labels(self, labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The group's label columns side by side: [B, label_columns]."""
        return tf.concat([tf.cast(labels[name], tf.float32) for name in self.task_units], axis=1)

    def presence(self, present: tf.Tensor) -> tf.Tensor:
        """The group's columns of `present` [B, K]: [B, outputs] for a binary set, [B, 1] for a multiclass head."""
        return tf.gather(tf.cast(present, tf.float32), tf.constant(self.columns, tf.int32), axis=1)

    def weights(self, head_weights: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Current head weights as blocks [M, n] (multiclass: flattened row-major in (class, feature))."""
        stacked = tf.concat([tf.cast(head_weights[name], self.dtype) for name in self.task_units], axis=0)
        return tf.reshape(stacked, [1, -1]) if self.multiclass else stacked

    def curvature(
        self, features: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor, present: tf.Tensor
    ) -> classification.Curvature:
        present = tf.cast(present, self.dtype)
        if self.multiclass:
            kernel = tf.reshape(weights, [self.label_columns, -1])
            return classification.multiclass_curvature(features, labels, kernel, present[:, 0])
        return classification.binary_curvature(features, labels, weights, present)

    def moments(
        self,
        features: tf.Tensor,
        labels: tf.Tensor,
        present: tf.Tensor,
        weights: tf.Tensor,
        num_samples: int,
        seed: tf.Tensor,
        own_rows: Callable[[tf.Tensor], tf.Tensor] | None = None,
    ) -> tuple[dict[str, GradientMoments], dict[str, tf.Tensor]]:
        """Per task: gradient moments [B, units or 1, D] under the batch posterior of the present rows, and
        whether it factored (rows of missing labels get placeholder moments: their weight is 0).
        `own_rows` (several replicas): the posterior is of all B rows, the moments of the rows it selects only
        (head draws are shared by all rows, so a row's moments do not depend on which replica computes them)."""
        labels = tf.cast(labels, self.dtype)
        own_rows = own_rows or (lambda rows: rows)
        prior_precision, prior_mean = tf.convert_to_tensor(self.prior_precision), tf.convert_to_tensor(self.prior_mean)

        def general() -> tuple[GradientMoments, tf.Tensor]:
            posterior = classification.newton_posterior(
                self.curvature(features, labels, weights, present), weights, prior_precision, prior_mean
            )
            rows, row_labels = own_rows(features), own_rows(labels)
            if self.multiclass and self.exact:
                moments = exact_moments.two_class_gradient_moments_exact(posterior, rows, row_labels, QUADRATURE_NODES)
            elif self.multiclass:
                moments = classification.multiclass_gradient_moments(posterior, rows, row_labels, num_samples, seed)
            elif self.exact:
                moments = exact_moments.binary_gradient_moments_exact(posterior, rows, row_labels, QUADRATURE_NODES)
            else:
                moments = classification.binary_gradient_moments(posterior, rows, row_labels, num_samples, seed)
            return moments, posterior.ok

        if self.whitening is not None:
            args = (features, labels, present, weights, prior_precision, prior_mean)
            moments, block_ok = self.whitening.moments(*args, general, own_rows, QUADRATURE_NODES)
        else:
            moments, block_ok = general()
        if self.multiclass:
            (name,) = self.task_units
            return {name: moments}, {name: tf.reduce_all(block_ok)}
        split, ok, start = {}, {}, 0
        for name, units in self.task_units.items():
            split[name] = GradientMoments(
                moments.mean[:, start : start + units], moments.variance[:, start : start + units]
            )
            ok[name] = tf.reduce_all(block_ok[start : start + units])
            start += units
        return split, ok

    def refresh(self, features: np.ndarray, staged: np.ndarray, weights: tf.Tensor) -> None:
        """Prior of the next epoch: the Newton posterior over all present rows at `weights`, prior N(0, γI).
        `staged` holds the group's label columns, then its presence columns."""
        labels, present = staged[:, : self.label_columns], staged[:, self.label_columns :]
        total = None
        for start in range(0, len(features), FULL_DATA_CHUNK_ROWS):
            rows = slice(start, start + FULL_DATA_CHUNK_ROWS)
            chunk = self.curvature(
                tf.constant(features[rows], self.dtype),
                tf.constant(labels[rows], self.dtype),
                weights,
                tf.constant(present[rows], self.dtype),
            )
            total = chunk if total is None else classification.add_curvatures(total, chunk)
        if self.chosen_prior_variance is None:
            prior_variance = tf.fill([self.blocks], tf.constant(self.prior_variance, self.dtype))
        else:
            prior_variance = evidence.classification_evidence_variance(
                total, weights, tf.convert_to_tensor(self.chosen_prior_variance), EVIDENCE_ITERATIONS
            )
        precision = tf.eye(self.block_size, batch_shape=[self.blocks], dtype=self.dtype) / prior_variance[:, None, None]
        posterior = classification.newton_posterior(total, weights, precision, tf.zeros_like(weights))
        self._check(posterior.ok.numpy())
        self.prior_precision.assign(posterior.precision)
        self.prior_mean.assign(posterior.mean)
        if self.whitening is not None:
            self.whitening.refresh(posterior)
        if self.chosen_prior_variance is not None:
            self.chosen_prior_variance.assign(prior_variance)

    def _check(self, block_ok: np.ndarray) -> None:
        start = 0
        for name, units in self.task_units.items():
            blocks = 1 if self.multiclass else units
            if not block_ok[start : start + blocks].all():
                raise FloatingPointError(
                    f"BayesAgg: the full-data posterior precision of task '{name}' could not be factored even with "
                    "jitter; the trunk's representation or the head's weights have non-finite or huge values."
                )
            start += blocks


def classification_groups(
    owner: keras.layers.Layer,
    layout: TaskLayout,
    exact: bool,
    multiclass_posterior: str = "full",
    draws_per_rotation: int = 1,
    **common: Any,
) -> list[ClassificationGroup | KroneckerGroup]:
    """The groups of a layout, in layout order: all binary outputs together, then each multiclass head
    (a `KroneckerGroup` for heads of more than two classes when `multiclass_posterior` is "kronecker", drawing
    `draws_per_rotation` head weights per class rotation of its noise)."""
    groups = []
    binary = {name: layout.tasks[name].units for name in layout.names_of(Binary)}
    if binary:
        columns = layout.unit_columns(list(binary))
        groups.append(
            ClassificationGroup(owner, "binary", binary, multiclass=False, exact=exact, columns=columns, **common)
        )
    for name in layout.names_of(Multiclass):
        units = {name: layout.tasks[name].units}
        columns = layout.unit_columns([name])
        if multiclass_posterior == "kronecker" and layout.tasks[name].units > 2:
            groups.append(
                KroneckerGroup(owner, name, units, columns=columns, draws_per_rotation=draws_per_rotation, **common)
            )
            continue
        groups.append(ClassificationGroup(owner, name, units, multiclass=True, exact=exact, columns=columns, **common))
    return groups


def group_holding(groups: list[Any], task_name: str) -> Any:
    """The group (all binary outputs, or one multiclass head) that holds `task_name`'s prior."""
    for group in groups:
        if task_name in group.task_units:
            return group
    raise KeyError(f"BayesAgg has no classification task '{task_name}'.")
