"""BayesAgg's in-graph fault per task: a batch posterior that could not be factored."""

from __future__ import annotations

import tensorflow as tf

from keras_bayesagg.aggregators.base import TaskLayout
from keras_bayesagg.engine.faults import Fault


def posterior_faults(layout: TaskLayout, failed: tf.Tensor) -> tuple[Fault, ...]:
    """One fault per task of `layout`, in its order; `failed` [tasks] bool."""
    return tuple(
        Fault(
            failed[index],
            f"BayesAgg: the batch posterior of task '{name}' ({task.describe()}) could not be factored even with "
            "jitter (non-finite or huge representations or head weights).",
        )
        for index, (name, task) in enumerate(layout.tasks.items())
    )
