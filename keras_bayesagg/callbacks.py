"""Callbacks that `MultiTaskModel.fit` adds by itself, usable alone in custom loops too."""

from __future__ import annotations

from typing import Any

import keras


class FullDataPrior(keras.callbacks.Callback):
    """Refreshes BayesAgg's full-data prior once per epoch and reports factorization failures.

    `fit` adds it when the aggregator is a `BayesAgg`. In a custom loop call
    `aggregator.begin_epoch()` before and `aggregator.end_epoch(model)` after each epoch.
    """

    def __init__(self, aggregator: Any) -> None:
        super().__init__()
        self.aggregator = aggregator

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.aggregator.begin_epoch()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.aggregator.raise_for_failure()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.aggregator.end_epoch(self.model)
