"""Callbacks: the model's own (fault reports and aggregator hooks) and `TaskWeightHistory`."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_bayesagg.bayes import linalg


class FaultGuard(keras.callbacks.Callback):
    """Raises the error of a step that was skipped (bad labels, non-finite values) right after it."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.raise_for_faults()

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.raise_for_faults()


class AggregatorHooks(keras.callbacks.Callback):
    """Runs the model's hooks around training: `begin_epoch`, `end_batch`, `end_epoch`.

    `MultiTaskModel.fit` adds it by itself. For BayesAgg this is what refreshes the full-data
    prior once per epoch (and switches the regression heads to its posterior mean), before
    validation when there is one (`MultiTaskModel.evaluate` finishes the epoch first); for
    DynamicWeightAverage it rolls the epoch loss averages over.
    """

    def __init__(self, aggregator: Any = None) -> None:
        super().__init__()
        self.aggregator = aggregator  # kept for version 0.1.0 callers; the model's aggregator is used

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.model.begin_epoch()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.aggregator.end_batch()
        if not self.model.jit_compile:  # under XLA the step compiles them with itself
            linalg.compile_traced_factors()  # a no-op once done: compiled now, not when BayesAgg's branch first runs

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.model.finish_epoch()  # already done when fit validated this epoch (MultiTaskModel.evaluate)


class TaskWeightHistory(keras.callbacks.Callback):
    """Records each task unit's weight per epoch, to compare methods as in BayesAgg-MTL's Figure 3.

    Scale: *relative* weights. Each step's weights (`aggregator.last_task_weights`) are divided by
    their mean, so they sum to K (the number of task units): 1 means an equal share, linear
    scalarization is all ones, and methods whose weights sum to 1 (RLW, FAMO, MGDA) or to K
    (DWA, BayesAgg) are on one scale, warm-up included. At the end of each epoch the mean over
    the epoch's batches goes into `history[unit name]` (e.g. "age", "attributes[3]") and, with
    `log_weights`, into the epoch logs as `weight/<unit>` (History, CSVLogger, TensorBoard see it
    wherever this callback stands in the list: `fit` runs it before the user's other callbacks).
    With `steps_per_execution > 1` the mean is over the last step of each execution.

    Args:
        aggregator: the aggregator to watch; None watches the model's (`model.aggregator`).
        log_weights: also write `weight/<unit>` into the epoch logs.
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
        mean = weights.mean()
        relative = weights / mean if np.isfinite(mean) and abs(mean) > 1e-12 else weights
        self._weight_sum = relative if self._weight_sum is None else self._weight_sum + relative
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


def with_builtin_callbacks(model: keras.Model, callbacks: Any, training: bool) -> Any:
    """The model's own callbacks first (a bad step raises before user callbacks see it; the epoch-end
    prior refresh happens before checkpoints), then `TaskWeightHistory` (so loggers see its keys),
    then the user's. A CallbackList that already has them (fit's, passed on to evaluate) is kept."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(isinstance(c, FaultGuard) for c in callbacks.callbacks):
            guard = FaultGuard()
            guard.set_model(model)
            callbacks.callbacks.insert(0, guard)
        return callbacks
    builtin: list[keras.callbacks.Callback] = [FaultGuard()]
    if training and model.aggregator is not None:
        builtin += [AggregatorHooks()] + model.aggregator.callbacks()
    user = list(callbacks or [])
    weights_first = [c for c in user if isinstance(c, TaskWeightHistory)]
    return builtin + weights_first + [c for c in user if not isinstance(c, TaskWeightHistory)]
