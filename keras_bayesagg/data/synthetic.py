"""Random inputs with labels of the right form for every task: for smoke tests and benchmarks."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from keras_bayesagg.tasks import Binary, Regression, Task


def random_task_batch(
    tasks: Mapping[str, Task], rows: int, input_shape: tuple[int, ...], seed: int = 0, positive_rate: float = 0.5
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gaussian inputs [rows, *input_shape] and labels: Gaussian regression targets, 0/1 binary
    labels (1 with probability `positive_rate`) and uniform class indices. No signal to learn."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, *input_shape)).astype("float32")
    labels: dict[str, np.ndarray] = {}
    for name, task in tasks.items():
        if isinstance(task, Regression):
            labels[name] = rng.normal(size=(rows, task.units)).astype("float32")
        elif isinstance(task, Binary):
            labels[name] = (rng.random((rows, task.units)) < positive_rate).astype("float32")
        else:
            labels[name] = rng.integers(0, task.units, size=rows).astype("int32")
    return x, labels
