"""BayesAgg's full-data statistics over an epoch: the writes of each step, and the refresh at the epoch's end
that turns them into the next epoch's priors and the heads' served state (SPEC "full-data posterior")."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import tensorflow as tf


def step_writes(
    owner: Any, features: tf.Tensor, targets: Any, present: tf.Tensor, representation: tf.Tensor, staged: list
) -> Callable[[], tf.Tensor]:
    """The write of one step's statistics into `owner`'s parts (a BayesAgg), for its `commit`: only from the last
    warm-up epoch on (earlier epochs' data never becomes a prior). `staged`: per group, its labels and presence
    columns."""
    writes = [owner.regression.collect(features, targets, present)] if owner.regression else []
    writes += owner.predictive.collect(targets, present)
    if owner.staging:
        writes.append(owner.staging.write(representation, tf.concat(staged, axis=1)))
    needed = owner.completed_epochs + 1 >= owner.warmup_epochs

    def run() -> tf.Tensor:
        for write in writes:
            write()
        return tf.constant(0)

    return lambda: tf.cond(needed, run, lambda: tf.constant(0))


def refresh(owner: Any, head_weights: Mapping[str, tf.Tensor]) -> None:
    """New priors from the epoch's statistics (eagerly, once per epoch): the regression posterior from its sums,
    each classification group's Newton posterior over the epoch's staged rows at `head_weights` (the heads'
    current weights), then the served state the heads read."""
    if owner.regression:
        owner.regression.refresh()
    if owner.groups:
        features, labels = owner.staging.epoch_rows()
        column = 0
        for group in owner.groups:
            if len(features):
                group.refresh(features, labels[:, column : column + group.staged_columns], group.weights(head_weights))
            column += group.staged_columns
    owner.predictive.refresh()
