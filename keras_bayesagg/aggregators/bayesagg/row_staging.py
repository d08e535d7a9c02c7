"""Staging of (h, classification labels) rows for BayesAgg's epoch-end classification prior.

Each applied step scatters its rows into a preallocated Keras variable (an in-place write on the
step's path, XLA-safe); after each step (`end_batch`) full buffers move to host memory. Memory:
N·(D + label columns) float32 values on the host plus `rows`·(D + label columns) in the buffer.
The buffer is transient, not model state: it is not a tracked weight and is not saved.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf


class RowStaging:
    """A fixed-size row buffer with a host-side overflow list (a plain object: its variables are untracked)."""

    def __init__(self, rows: int, dim: int, label_columns: int) -> None:
        self.rows = rows
        self.dim = dim
        self.features = keras.Variable(np.zeros((rows, dim), np.float32), trainable=False, name="staged_features")
        self.labels = keras.Variable(np.zeros((rows, label_columns), np.float32), trainable=False, name="staged_labels")
        self.count = keras.Variable(np.zeros((), np.int32), dtype="int32", trainable=False, name="staged_rows")
        self._host: list[np.ndarray] = []
        self._largest_write = 0  # most rows seen between two end_batch() calls
        self._count_at_last_check = 0

    def write(self, features: tf.Tensor, labels: tf.Tensor) -> Callable[[], Any]:
        """The write that appends this step's rows (dropped, but counted, when they do not fit)."""

        def append() -> None:
            start = tf.convert_to_tensor(self.count)
            rows = tf.shape(features)[0]

            def scatter() -> tf.Tensor:
                # Row updates (IndexedSlices): supported by mirrored variables too, where each replica writes its copy.
                indices = tf.minimum(start + tf.range(rows), self.rows - 1)
                self.features.value.scatter_update(tf.IndexedSlices(tf.cast(features, tf.float32), indices))
                self.labels.value.scatter_update(tf.IndexedSlices(tf.cast(labels, tf.float32), indices))
                return tf.constant(0)

            tf.cond(start + rows <= self.rows, scatter, lambda: tf.constant(0))
            self.count.assign_add(rows)

        return append

    def reset(self) -> None:
        self.count.assign(0)
        self._host = []
        self._count_at_last_check = 0

    def end_batch(self) -> None:
        """Move the buffer to host memory when the next write might not fit (a scalar read otherwise)."""
        count = self._checked_count()
        self._largest_write = max(self._largest_write, count - self._count_at_last_check)
        if count + self._largest_write > self.rows:
            self._flush(count)
            count = 0
        self._count_at_last_check = count

    def epoch_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows of the epoch, (features [N, D], labels [N, columns]); empties the staging."""
        self._flush(self._checked_count())
        self._count_at_last_check = 0
        if not self._host:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 0), np.float32)
        stored = np.concatenate(self._host, axis=0)
        self._host = []
        return stored[:, : self.dim], stored[:, self.dim :]

    def _checked_count(self) -> int:
        count = int(self.count.numpy())
        if count > self.rows:
            self.reset()
            raise ValueError(
                f"BayesAgg: {count} rows of (h, labels) arrived between two end_batch() calls but the staging buffer "
                f"holds feature_buffer_rows={self.rows}; raise feature_buffer_rows to at least "
                "batch_size x steps_per_execution (in a custom loop, call model.end_batch() after each step)."
            )
        return count

    def _flush(self, count: int) -> None:
        if count:
            self._host.append(np.concatenate([self.features.numpy()[:count], self.labels.numpy()[:count]], axis=1))
        self.count.assign(0)
