"""Task kinds: each knows its linear head, its loss, its label format and its gradient w.r.t. h.

A *task* is one entry of the `tasks` dict given to `MultiTaskModel`. For aggregation a task is
split into *task units* the way the paper counts tasks: every regression output and every
binary output is one unit, a multiclass head is one unit.

Missing labels are marked in the label tensor: NaN for a regression or binary output, class index
−1 (or an all-zero one-hot row) for a multiclass head. `present` finds them, `fill_missing` puts a
finite placeholder in their place; the engine masks their losses and gradients (docs/missing-labels.md).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import tensorflow as tf

from keras_bayesagg import label_tensors
from keras_bayesagg.heads import LinearHead
from keras_bayesagg.validation import whole_number

REGRESSION = "regression"
BINARY = "binary"
MULTICLASS = "multiclass"


class Task:
    """Base class of the task kinds. Subclasses are small value objects (serializable)."""

    kind: str = ""

    def __init__(self, units: int) -> None:
        self.units = whole_number(type(self).__name__, "units", units)

    # -- structure --------------------------------------------------------------------------
    @property
    def num_task_units(self) -> int:
        """How many tasks this entry counts as for aggregation."""
        return self.units

    def make_head(self, name: str) -> LinearHead:
        return LinearHead(self.units, name=name)

    def unit_outputs(self, name: str) -> list[tuple[str, int | None]]:
        """(unit name, output index) of each task unit: one unit per output by default."""
        if self.units == 1:
            return [(name, 0)]
        return [(f"{name}[{o}]", o) for o in range(self.units)]

    # -- labels -----------------------------------------------------------------------------
    def describe(self) -> str:
        raise NotImplementedError

    def prepare_labels(self, name: str, labels: Any) -> tf.Tensor:
        """Static checks (shape, dtype) with a clear error; returns the labels in canonical form."""
        raise NotImplementedError

    def labels_valid(self, labels: tf.Tensor) -> tf.Tensor:
        """A scalar bool: the label *values* fit the task (checked inside the compiled step)."""
        return tf.constant(True)

    def value_expectation(self) -> str:
        """What `labels_valid` checks, in words, for error messages."""
        return "valid values"

    def present(self, labels: tf.Tensor) -> tf.Tensor:
        """[B, num_task_units] float32: 1 where the canonical label is given, 0 where it is marked missing (NaN)."""
        return tf.cast(~tf.math.is_nan(labels), tf.float32)

    def fill_missing(self, labels: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        """The canonical labels with each missing entry replaced by a finite placeholder (0): no NaN flows on."""
        return tf.where(present > 0.0, labels, tf.zeros_like(labels))

    # -- losses and gradients ---------------------------------------------------------------
    def per_sample_losses(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """ℓ_ik for every sample i and task unit k of this task: [B, num_task_units]."""
        raise NotImplementedError

    def logit_gradients(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """∂ℓ_i/∂z_i, the residual of each sample w.r.t. its own logits: [B, units]."""
        raise NotImplementedError

    def representation_gradients(self, residuals: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """Per-sample ∂ℓ_ik/∂h_i for each unit k: [B, num_task_units, D].

        For outputs that are tasks of their own (regression, binary) unit o gets r_o·K[:, o];
        a multiclass head is one unit and gets Σ_c r_c·K[:, c].
        """
        return residuals[:, :, None] * tf.transpose(kernel)[None, :, :]

    def predictions(self, logits: tf.Tensor) -> tf.Tensor:
        return logits

    # -- config -----------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"units": self.units}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Task":
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.units})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.units))


class Regression(Task):
    """`units` regression outputs with squared error (y - z)²; each output is one task."""

    kind = REGRESSION

    def __init__(self, units: int = 1) -> None:
        super().__init__(units)

    def describe(self) -> str:
        return f"Regression with {self.units} output{'s' if self.units > 1 else ''}"

    def prepare_labels(self, name: str, labels: Any) -> tf.Tensor:
        return label_tensors.dense_labels(name, self, labels)

    def labels_valid(self, labels: tf.Tensor) -> tf.Tensor:
        return tf.reduce_all(tf.math.is_finite(labels) | tf.math.is_nan(labels))

    def value_expectation(self) -> str:
        return "expected finite numbers (NaN marks a missing label)"

    def per_sample_losses(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return tf.square(logits - labels)

    def logit_gradients(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return 2.0 * (logits - labels)


class Binary(Task):
    """A set of `units` independent binary tasks (sigmoid cross-entropy); labels in [0, 1]."""

    kind = BINARY

    def describe(self) -> str:
        return f"Binary with {self.units} output{'s' if self.units > 1 else ''}"

    def prepare_labels(self, name: str, labels: Any) -> tf.Tensor:
        return label_tensors.dense_labels(name, self, labels)

    def labels_valid(self, labels: tf.Tensor) -> tf.Tensor:
        return tf.reduce_all(((labels >= 0.0) & (labels <= 1.0)) | tf.math.is_nan(labels))

    def value_expectation(self) -> str:
        return "expected values in [0, 1] (0/1 labels or probabilities; NaN marks a missing label)"

    def per_sample_losses(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)

    def logit_gradients(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(logits) - labels

    def predictions(self, logits: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(logits)


class Multiclass(Task):
    """One softmax head over `num_classes` classes; the whole head is one task.

    Labels are class indices (shape (batch,) or (batch, 1), integer) or one-hot / probability
    rows (shape (batch, num_classes), float). Internally they are kept as probability rows; a
    missing label (index −1, or an all-zero row) is an all-zero row.
    """

    kind = MULTICLASS

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        if self.units < 2:
            raise ValueError(
                f"Multiclass needs at least 2 classes; got {num_classes!r}. Use Binary(1) for one yes/no task."
            )

    @property
    def num_classes(self) -> int:
        return self.units

    @property
    def num_task_units(self) -> int:
        return 1

    def unit_outputs(self, name: str) -> list[tuple[str, int | None]]:
        return [(name, None)]

    def describe(self) -> str:
        return f"Multiclass with {self.units} classes"

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.units}

    def prepare_labels(self, name: str, labels: Any) -> tf.Tensor:
        tensor = label_tensors.as_tensor(name, self, labels)
        shape = label_tensors.static_shape(tensor)
        if tensor.dtype.is_integer and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            indices = tf.reshape(tf.cast(tensor, tf.int32), [-1])
            # -1 (missing) becomes a row of zeros; other out-of-range indices a row of NaN for `labels_valid`.
            in_range = (indices >= 0) & (indices < self.units)
            one_hot = tf.one_hot(tf.where(in_range, indices, 0), self.units, dtype=tf.float32)
            invalid = tf.fill(tf.shape(one_hot), float("nan"))
            return tf.where(in_range[:, None], one_hot, tf.where((indices == -1)[:, None], 0.0 * one_hot, invalid))
        if tensor.dtype.is_floating and len(shape) == 2 and shape[1] == self.units:
            return tf.cast(tensor, tf.float32)
        raise ValueError(
            f"Task '{name}' ({self.describe()}) expects integer class indices of shape (batch,) or "
            f"(batch, 1), or float one-hot rows of shape (batch, {self.units}); "
            f"got dtype {tensor.dtype.name} and shape {tuple(shape)}."
        )

    def labels_valid(self, labels: tf.Tensor) -> tf.Tensor:
        in_unit_interval = tf.reduce_all((labels >= 0.0) & (labels <= 1.0), axis=-1)
        sums_to_one = tf.abs(tf.reduce_sum(labels, axis=-1) - 1.0) < 1e-3
        return tf.reduce_all((in_unit_interval & sums_to_one) | (self.present(labels)[:, 0] == 0.0))

    def value_expectation(self) -> str:
        return (
            f"expected class indices in [0, {self.units}) or probability rows that sum to 1 (-1 marks a missing label)"
        )

    def present(self, labels: tf.Tensor) -> tf.Tensor:
        """[B, 1]: 0 for an all-zero row (a missing label), 1 otherwise."""
        return tf.cast(tf.reduce_any(tf.not_equal(labels, 0.0), axis=-1, keepdims=True), tf.float32)

    def fill_missing(self, labels: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
        return labels  # a missing label already is a row of zeros

    def per_sample_losses(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)[:, None]

    def logit_gradients(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(logits) - labels

    def representation_gradients(self, residuals: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return tf.matmul(residuals, kernel, transpose_b=True)[:, None, :]

    def predictions(self, logits: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(logits)


TASK_KINDS: dict[str, type[Task]] = {"Regression": Regression, "Binary": Binary, "Multiclass": Multiclass}


def serialize_task(task: Task) -> dict[str, Any]:
    return {"class_name": type(task).__name__, "config": task.get_config()}


def deserialize_task(config: dict[str, Any] | Task) -> Task:
    if isinstance(config, Task):
        return config
    try:
        kind = TASK_KINDS[config["class_name"]]
    except KeyError:
        raise ValueError(f"Unknown task kind {config.get('class_name')!r}; known: {sorted(TASK_KINDS)}.") from None
    return kind.from_config(config["config"])


_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def check_task_dict(tasks: Any) -> None:
    """A non-empty dict of well-named Task instances, or a clear error."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("tasks must be a non-empty dict {name: kb.tasks.Regression() | Binary(n) | Multiclass(n)}.")
    for name, task in tasks.items():
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(
                f"Task name {name!r} must be a string of letters, digits, '_', '.', '-' (not starting with a digit)."
            )
        if not isinstance(task, Task):
            raise TypeError(
                f"Task '{name}' must be a kb.tasks.Regression, Binary or Multiclass instance; got {task!r}."
            )
