"""Callbacks that `MultiTaskModel.fit` adds by itself, usable alone in custom loops too."""

from __future__ import annotations

from typing import Any

import keras


class AggregatorHooks(keras.callbacks.Callback):
    """Runs the aggregator's hooks around training: `begin_epoch`, `end_batch`, `end_epoch(model)`.

    `MultiTaskModel.fit` adds it by itself. For BayesAgg this is what refreshes the full-data
    prior once per epoch and reports a failed factorization right after the step; for
    DynamicWeightAverage it rolls the epoch loss averages over.
    """

    def __init__(self, aggregator: Any) -> None:
        super().__init__()
        self.aggregator = aggregator

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.aggregator.begin_epoch()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.aggregator.end_batch()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.aggregator.end_epoch(self.model)


class TaskWeightHistory(keras.callbacks.Callback):
    """Records each task unit's weight per epoch, to compare methods as in BayesAgg-MTL's Figure 3.

    After every training batch it reads `aggregator.last_task_weights` (the [K] weights the
    aggregator reported for that step) and at the end of the epoch stores their mean over the
    epoch's batches in `history[unit name]` (unit names from `aggregator.layout.units`, e.g.
    "age", "attributes[3]"). With `steps_per_execution > 1` Keras reports one batch end per
    execution, so the mean is over the last step of each execution. For BayesAgg the weights
    are its per-sample, per-dimension weights averaged over samples and dimensions.

    Args:
        aggregator: the aggregator to watch; None watches the model's (`model.aggregator`).
        log_weights: also write `weight/<unit>` into the epoch logs (History, TensorBoard, CSV).
    """

    def __init__(self, aggregator: Any = None, log_weights: bool = True) -> None:
        super().__init__()
        self.watched = aggregator
        self.log_weights = log_weights
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self._weight_sum: Any = None
        self._batches = 0

    def _aggregator(self) -> Any:
        aggregator = self.watched if self.watched is not None else getattr(self.model, "aggregator", None)
        if aggregator is None or getattr(aggregator, "layout", None) is None:
            raise ValueError(
                "TaskWeightHistory needs a built aggregator: use it with a compiled kb.MultiTaskModel "
                "or pass aggregator= explicitly."
            )
        return aggregator

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._weight_sum = None
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        weights = self._aggregator().last_task_weights.numpy().astype("float64")
        self._weight_sum = weights if self._weight_sum is None else self._weight_sum + weights
        self._batches += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._batches == 0:
            return
        mean = self._weight_sum / self._batches
        self.epochs.append(epoch)
        for unit, weight in zip(self._aggregator().layout.units, mean):
            self.history.setdefault(unit.name, []).append(float(weight))
            if self.log_weights and logs is not None:
                logs[f"weight/{unit.name}"] = float(weight)
