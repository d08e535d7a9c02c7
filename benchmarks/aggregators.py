"""Per-step time of every aggregator relative to linear scalarization, on one fixed workload.

    python benchmarks/aggregators.py                 # all aggregators, graph mode
    python benchmarks/aggregators.py --steps 20 --rounds 3 --modes graph,xla

Workload: a small conv trunk on 32×32×3 inputs (representation D = 128) with UTKFace-shaped
heads, Regression(1) + Multiclass(2) + Multiclass(5) (K = 3 task units), batch 128, Adam.
Aggregators are discovered from `keras_bayesagg.aggregators.__all__` (every concrete subclass
of `Aggregator`, built with its defaults, BayesAgg without warm-up so its own step is timed),
plus the parameter-level variants of the gradient methods. All models are built and compiled
first, then timed in interleaved rounds (in a rotating order), so slow drifts of the machine
hit every row alike.
A step is the time between the starts of consecutive batches inside `fit`: it includes what an
aggregator's callbacks do per batch, not what they do at epoch ends.

Graph mode (tf.function, what Keras's jit_compile="auto" picks on a CPU-only machine) is the
default. On CPU, XLA's convolutions make every step of this workload ~40× slower whatever the
aggregator (linear scalarization: ~3-4 s instead of ~80 ms on 2 cores), so `--modes xla` times
the convolutions more than the aggregators; use it on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from step_time import make_trunk, parse_tasks  # noqa: E402  (same folder)

import keras_bayesagg as kb  # noqa: E402
from keras_bayesagg import aggregators  # noqa: E402
from keras_bayesagg.data import random_task_batch  # noqa: E402

BATCH = 128
INPUT_SHAPE = (32, 32, 3)
REPRESENTATION_DIM = 128
TASKS = "reg:1,mc:2,mc:5"  # UTKFace heads: age, gender, ethnicity
# Defaults that would not time the method itself.
CONSTRUCTOR_OVERRIDES: dict[str, dict[str, Any]] = {"BayesAgg": {"warmup_epochs": 0}}
# Extra rows: the per-task trunk-gradient variants of the gradient methods.
PARAMETER_LEVEL = ("MGDA", "PCGrad", "CAGrad", "IMTLG", "NashMTL", "AlignedMTL", "IMTL", "DBMTL")


@dataclasses.dataclass
class Row:
    label: str
    make: Callable[[], aggregators.Aggregator]
    seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    models: dict[str, kb.MultiTaskModel] = dataclasses.field(default_factory=dict)
    error: str | None = None


def discover_rows() -> list[Row]:
    rows = []
    for name in aggregators.__all__:
        candidate = getattr(aggregators, name)
        if not (inspect.isclass(candidate) and issubclass(candidate, aggregators.Aggregator)):
            continue
        if candidate is aggregators.Aggregator or inspect.isabstract(candidate):
            continue
        options = CONSTRUCTOR_OVERRIDES.get(name, {})
        rows.append(Row(name, lambda candidate=candidate, options=options: candidate(**options)))
        if name in PARAMETER_LEVEL:
            rows.append(Row(f"{name}(level='parameters')", lambda candidate=candidate: candidate(level="parameters")))
    rows.sort(key=lambda row: (row.label != "LinearScalarization", row.label.lower()))
    return rows


def make_model() -> kb.MultiTaskModel:
    keras.utils.set_random_seed(0)
    trunk, _ = make_trunk("conv", REPRESENTATION_DIM)
    return kb.MultiTaskModel(trunk, parse_tasks(TASKS))


def workload() -> tf.data.Dataset:
    x, labels = random_task_batch(parse_tasks(TASKS), BATCH, INPUT_SHAPE)
    return tf.data.Dataset.from_tensors((x, labels)).repeat()


class StepClock(keras.callbacks.Callback):
    """Start times of the batches; each step waits for its loss so the interval is the whole step."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        float(np.asarray((logs or {}).get("loss", 0.0)))

    def intervals(self) -> list[float]:
        return list(np.diff(self.starts))


def run_steps(model: kb.MultiTaskModel, dataset: tf.data.Dataset, steps: int) -> list[float]:
    clock = StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[clock], verbose=0)
    return clock.intervals()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row and round")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds over all rows")
    parser.add_argument("--modes", default="graph", help="comma-separated: graph (tf.function), xla (jit_compile=True)")
    parser.add_argument("--only", default="", help="comma-separated class names to time (with LinearScalarization)")
    arguments = parser.parse_args()
    modes = [mode.strip() for mode in arguments.modes.split(",") if mode.strip()]
    dataset = workload()
    rows = discover_rows()
    if arguments.only:
        wanted = {"LinearScalarization", *(name.strip() for name in arguments.only.split(","))}
        rows = [row for row in rows if row.label.split("(")[0] in wanted]

    for row in rows:
        for mode in modes:
            started = time.perf_counter()
            try:
                model = make_model()
                model.compile(optimizer="adam", aggregator=row.make(), jit_compile=mode == "xla")
                run_steps(model, dataset, 2)  # trace and compile
            except Exception as error:  # a row that cannot run is reported, not fatal
                row.error = f"{mode}: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
                continue
            row.models[mode] = model
            row.seconds[mode] = []
            print(f"built {row.label:<32} {mode:<5} in {time.perf_counter() - started:5.1f} s", flush=True)

    for round_index in range(arguments.rounds):
        shift = round_index % len(rows)  # rotate the order so no row is always timed first
        for row in rows[shift:] + rows[:shift]:
            for mode, model in row.models.items():
                row.seconds[mode].extend(run_steps(model, dataset, arguments.steps))
        print(f"round {round_index + 1}/{arguments.rounds} done", flush=True)

    baseline = {mode: statistics.median(rows[0].seconds[mode]) for mode in modes if mode in rows[0].seconds}
    header = "| aggregator | " + " | ".join(f"{mode} ms/step | × LS ({mode})" for mode in modes) + " |"
    print()
    print(
        f"Workload: conv trunk on 32×32×3, D = {REPRESENTATION_DIM}, heads Regression(1) + Multiclass(2) + "
        f"Multiclass(5), batch {BATCH}; medians of {arguments.rounds}×{arguments.steps} steps; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores."
    )
    print()
    print(header)
    print("|---|" + "---:|---:|" * len(modes))
    for row in rows:
        cells = []
        for mode in modes:
            if mode in row.seconds and row.seconds[mode]:
                median = statistics.median(row.seconds[mode])
                cells += [f"{1000 * median:.1f}", f"{median / baseline[mode]:.2f}" if mode in baseline else "–"]
            else:
                cells += ["failed", "–"]
        print(f"| {row.label} | " + " | ".join(cells) + " |")
    for row in rows:
        if row.error:
            print(f"\n{row.label} failed in {row.error}")


if __name__ == "__main__":
    main()
