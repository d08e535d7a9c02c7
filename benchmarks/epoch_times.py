"""Seconds per epoch around the end of BayesAgg's warm-up, on the README example's shapes (issue 16, item 8).

A stall shows as the last warm-up epoch (the first with statistics and the first refresh) or the first
BayesAgg epoch taking much longer than later ones. Prints each epoch's time and the ratios to the median of
the last epochs, all from one run, with each epoch's first and median step (the first epoch's first step
holds the tracing and the one-time XLA compilation of BayesAgg's factorizations). `python benchmarks/epoch_times.py [rows] [epochs] [warmup]`.
"""

from __future__ import annotations

import sys
import time

import keras
import numpy as np
import tensorflow as tf

import keras_bayesagg as kb


class EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

        self.first_steps: list[float] = []
        self.median_steps: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = self.last = time.perf_counter()
        self.steps: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.steps.append(now - self.last)
        self.last = now

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        self.first_steps.append(self.steps[0])
        self.median_steps.append(float(np.median(self.steps)))


def main(rows: int = 2048, epochs: int = 8, warmup: int = 3) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 64)).astype("float32")
    labels = {
        "age": rng.normal(size=rows).astype("float32"),
        "gender": rng.integers(0, 2, rows),
        "attributes": rng.integers(0, 2, (rows, 40)).astype("float32"),
    }
    data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(128)
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="elu")])
    tasks = {"age": kb.tasks.Regression(), "gender": kb.tasks.Multiclass(2), "attributes": kb.tasks.Binary(40)}
    model = kb.MultiTaskModel(trunk, tasks)
    model.compile(optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=warmup, seed=0))
    clock = EpochClock()
    model.fit(data, epochs=epochs, validation_data=data.take(2), callbacks=[clock], verbose=0)
    steady = float(np.median(clock.seconds[warmup + 1 :]))
    for epoch, seconds in enumerate(clock.seconds):
        role = "warm-up" if epoch < warmup - 1 else "last warm-up" if epoch == warmup - 1 else "BayesAgg"
        steps = f"first step {clock.first_steps[epoch]:6.3f} s, median step {clock.median_steps[epoch]:6.3f} s"
        print(f"epoch {epoch}: {seconds:6.2f} s  ({seconds / steady:4.1f}x steady)  {steps}  {role}")
    print(f"steady (median of epochs {warmup + 1}..{epochs - 1}): {steady:.2f} s")


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:]))
