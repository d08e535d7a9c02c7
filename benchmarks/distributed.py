"""Per-step cost of one global batch on two replicas (MirroredStrategy, 2 logical CPUs) against one device.

    python benchmarks/distributed.py                 # both presets, 15 steps each
    python benchmarks/distributed.py --steps 30 --preset utkface-heads

For each preset and aggregator it reports the median step time on one device and on two replicas
with the same global batch, and the median time of the all-gather alone (h and the labels of a
replica's rows, as the step exchanges them). It also prints the values each replica receives per
step. On this machine the two "devices" share two CPU cores, so the ratio measures the overhead of
the replicated step (gather, rebuilt task gradients, the aggregator on the global batch, the
gradient all-reduce), not a speed-up; on GPUs the compute splits while the gather stays small.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import keras_bayesagg as kb  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import PRESETS, make_trunk, parse_tasks  # noqa: E402

from keras_bayesagg.data import random_task_batch  # noqa: E402

REPLICAS = 2


def median_step_seconds(strategy: tf.distribute.Strategy, make_aggregator, preset, steps: int) -> float:
    with strategy.scope():
        keras.utils.set_random_seed(0)
        tasks = parse_tasks(preset.tasks)
        trunk, input_shape = make_trunk(preset.trunk, preset.dim)
        model = kb.MultiTaskModel(trunk, tasks)
        model.compile(optimizer="adam", aggregator=make_aggregator())
    x, labels = random_task_batch(tasks, preset.batch, input_shape)
    dataset = tf.data.Dataset.from_tensors((x, labels)).repeat(4)
    model.fit(dataset, epochs=1, verbose=0)  # trace, compile, end BayesAgg's warm-up
    train_function = model.make_train_function()
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, labels)).repeat()))
    for _ in range(3):
        train_function(iterator)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(train_function(iterator)["loss"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_gather_seconds(strategy: tf.distribute.Strategy, rows: int, columns: int, steps: int) -> float:
    values = tf.random.normal([rows * REPLICAS, columns])
    distributed = strategy.experimental_distribute_values_from_function(
        lambda context: values[context.replica_id_in_sync_group * rows : (context.replica_id_in_sync_group + 1) * rows]
    )

    @tf.function
    def gather(value):
        return strategy.run(lambda v: tf.distribute.get_replica_context().all_gather(v, axis=0), args=(value,))

    for _ in range(3):
        gather(distributed)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        strategy.experimental_local_results(gather(distributed))[0].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", action="append", choices=sorted(PRESETS), help="default: utkface-heads, cifar-mtl-heads"
    )
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    mirrored = tf.distribute.MirroredStrategy([f"cpu:{index}" for index in range(REPLICAS)])
    one_device = tf.distribute.OneDeviceStrategy("cpu:0")
    aggregators = {
        "LinearScalarization": kb.aggregators.LinearScalarization,
        "BayesAgg": lambda: kb.BayesAgg(warmup_epochs=1),
    }
    print(
        "| preset | aggregator | one device s/step | 2 replicas s/step | ratio | all-gather s | values in per replica |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.preset or ["utkface-heads", "cifar-mtl-heads"]:
        preset = PRESETS[name]
        tasks = parse_tasks(preset.tasks)
        label_columns = sum(task.units for task in tasks.values())
        rows = preset.batch // REPLICAS
        gathered = (REPLICAS - 1) * rows * (preset.dim + label_columns)
        gather = median_gather_seconds(mirrored, rows, preset.dim + label_columns, args.steps)
        for label, make in aggregators.items():
            single = median_step_seconds(one_device, make, preset, args.steps)
            replicated = median_step_seconds(mirrored, make, preset, args.steps)
            print(
                f"| {name} (B={preset.batch}, D={preset.dim}, {preset.tasks}) | {label} | {single:.4f} | "
                f"{replicated:.4f} | {replicated / single:.2f} | {gather:.5f} | {gathered:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
