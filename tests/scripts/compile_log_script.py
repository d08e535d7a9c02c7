"""Fits a graph-mode BayesAgg model through its warm-up and marks the end of each epoch on stderr, where
TensorFlow logs each XLA compilation (run with TF_CPP_VMODULE=device_compiler=1): `tests/test_one_state.py`
counts the compilations after the run's first step (issue 16, item 8: no stall at the end of warm-up)."""

from __future__ import annotations

import sys

import keras

import keras_bayesagg as kb
from tests.conftest import make_mixed_model, mixed_task_data


class Marks(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        print(f"MARK step {batch}", file=sys.stderr, flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(
            f"MARK epoch {epoch} completed={int(self.model.aggregator.completed_epochs.numpy())}",
            file=sys.stderr,
            flush=True,
        )


def main() -> None:
    traces = []
    train_step = kb.MultiTaskModel.train_step

    def counted(model: kb.MultiTaskModel, data: object) -> object:
        traces.append(1)  # runs once per trace of the train function (graph mode)
        return train_step(model, data)

    kb.MultiTaskModel.train_step = counted
    x, labels = mixed_task_data(num_samples=256)
    validation = mixed_task_data(num_samples=64, seed=1)
    model = make_mixed_model()
    aggregator = kb.BayesAgg(
        num_samples=16, seed=0, warmup_epochs=2, moments=sys.argv[1] if len(sys.argv) > 1 else "exact"
    )
    model.compile(optimizer="adam", aggregator=aggregator)
    model.fit(x, labels, batch_size=64, epochs=4, validation_data=validation, callbacks=[Marks()], verbose=0)
    print(f"MARK traces {len(traces)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
