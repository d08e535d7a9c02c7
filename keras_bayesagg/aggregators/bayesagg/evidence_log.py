"""Reporting the prior variances the evidence chose (BayesAgg with prior_variance="auto")."""

from __future__ import annotations

from typing import Any, Sequence

import keras

from keras_bayesagg.aggregators.base import TaskLayout


def chosen_prior_variances(regression: Any, groups: Sequence[Any], layout: TaskLayout) -> dict[str, float]:
    """γ per group: "regression" for all regression tasks, then each binary output and multiclass head by unit name."""
    chosen = {"regression": float(regression.chosen_prior_variance.numpy())} if regression else {}
    for group in groups:
        names = [unit.name for unit in layout.units if unit.task in group.task_units]
        chosen.update({name: float(value) for name, value in zip(names, group.chosen_prior_variance.numpy())})
    return chosen


class PriorVarianceLog(keras.callbacks.Callback):
    """Writes the chosen γ per group into the epoch logs as `prior_variance/<group>` (History, CSV, TensorBoard)."""

    def __init__(self, aggregator: Any) -> None:
        super().__init__()
        self.aggregator = aggregator

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is not None:
            logs.update(
                {f"prior_variance/{name}": value for name, value in self.aggregator.chosen_prior_variances().items()}
            )
