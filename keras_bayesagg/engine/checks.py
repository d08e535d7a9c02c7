"""The checks that make a step sound, in the order their failures are reported."""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

from keras_bayesagg.engine.faults import Fault, all_finite
from keras_bayesagg.labels import label_faults, loss_faults
from keras_bayesagg.tasks import Task

NON_FINITE_REPRESENTATION = (
    "Non-finite input/representation: the trunk's output h has NaN or infinite values (check the inputs x for NaN/inf)."
)
NON_FINITE_GRADIENT = (
    "Non-finite gradient: the update would make weights NaN or infinite (lower the learning rate or check the data)."
)


def step_faults(
    tasks: Mapping[str, Task],
    labels: Mapping[str, tf.Tensor],
    representation: tf.Tensor,
    per_sample_losses: tf.Tensor,
    aggregator_faults: Sequence[Fault] = (),
    gradients: Sequence[tf.Tensor | None] | None = None,
) -> list[Fault]:
    """Label values per task, a finite h, a finite loss per task, the aggregator's own checks and,
    when given, finite gradients."""
    faults = label_faults(tasks, labels)
    faults.append(Fault(~all_finite([representation]), NON_FINITE_REPRESENTATION))
    faults += loss_faults(tasks, per_sample_losses)
    faults += list(aggregator_faults)
    if gradients is not None:
        faults.append(Fault(~all_finite(gradients), NON_FINITE_GRADIENT))
    return faults
