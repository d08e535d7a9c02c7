"""Which label form a compiled metric gets (docs/contract.md, "Metrics").

Regression and binary tasks hand their float32 labels [B, units] to every metric. A Multiclass head
hands probability rows [B, C] (one-hot for integer labels) to every metric except the ones that take
class indices — Keras's sparse metrics (`"sparse_categorical_accuracy"`, `SparseTopKCategoricalAccuracy`,
`SparseCategoricalCrossentropy`, ...) and metrics built with `sparse_y_true=True` (`MeanIoU`, `IoU`) —
which get the class indices [B] (int32), the argmax of the row: exactly the integers the user gave.
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from keras_bayesagg.tasks import Multiclass, Task


def takes_class_indices(metric: keras.metrics.Metric) -> bool:
    """True for a metric that expects class indices as y_true (a sparse_* metric function, or sparse_y_true)."""
    function = getattr(metric, "_fn", None)
    if function is not None and getattr(function, "__name__", "").startswith("sparse_"):
        return True
    return bool(getattr(metric, "sparse_y_true", False))


def class_index_labels(tasks: Mapping[str, Task], labels: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Per task: class indices [B] (int32) for a Multiclass head, the labels unchanged for the other kinds."""
    return {
        name: tf.argmax(labels[name], axis=-1, output_type=tf.int32) if isinstance(task, Multiclass) else labels[name]
        for name, task in tasks.items()
    }
