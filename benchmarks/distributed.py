"""Per-step cost of one global batch on two replicas (MirroredStrategy, 2 logical CPUs) against one device.

    python benchmarks/distributed.py                 # both presets, 15 steps each
    python benchmarks/distributed.py --steps 30 --preset utkface-heads

For each preset and aggregator it reports the median step time on one device and on two replicas
with the same global batch, and the median time of the all-gather alone (h, the labels and the weights
`present` of a replica's rows, as the step exchanges them). It also prints the values each replica receives per
step. On this machine the two "devices" share two CPU cores, so the ratio measures the overhead of
the replicated step (gather, rebuilt task gradients, the aggregator on the global batch, the
gradient all-reduce), not a speed-up; on GPUs the compute splits while the gather stays small.

A second table times BayesAgg's `aggregate` call alone (warm: past its warm-up) on the preset's global batch:
on one device for the whole batch (R = 1, and what every replica computed before each replica took its own
rows), for one replica's rows of R = 2 (`inputs.rows`: the per-replica work now) and for no rows (the batch
posteriors alone, which every replica still builds from all rows), so the differences are the per-row part;
and on the two replicas computing the whole batch each (before) or their own rows (now), wall time. The last two columns are the
BayesAgg part of a train step, the step with BayesAgg minus the step with linear scalarization.
Variants alternate within rounds; medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # each timed variant is a tf.function of its own: no retracing warnings

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bayesagg as kb  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import PRESETS, make_trunk, parse_tasks  # noqa: E402

from keras_bayesagg.aggregators.base import AggregatorInputs, ReplicaRows, TaskLayout  # noqa: E402
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


def aggregate_inputs(tasks: dict, batch: int, dim: int) -> AggregatorInputs:
    """A fully labelled global batch as `gather` hands it to the aggregator (h Gaussian, canonical labels)."""
    h, labels = random_task_batch(tasks, batch, (dim,))
    rng = np.random.default_rng(1)
    canonical = {
        name: np.eye(task.units, dtype="float32")[labels[name]]
        if isinstance(task, kb.tasks.Multiclass)
        else labels[name]
        for name, task in tasks.items()
    }
    units = TaskLayout(dict(tasks), dim).num_units
    return AggregatorInputs(
        losses=tf.ones([units]),
        representation=tf.constant(h),
        task_gradients=tf.constant(rng.normal(size=(batch, units, dim)), tf.float32),
        labels={name: tf.constant(value) for name, value in canonical.items()},
        head_weights={
            name: tf.constant(0.05 * rng.normal(size=(task.units, dim + 1)), tf.float32) for name, task in tasks.items()
        },
        present=tf.ones([batch, units]),
    )


def aggregate_call(strategy: tf.distribute.Strategy, tasks: dict, inputs: AggregatorInputs, rows: int | None):
    """A compiled call of a warm BayesAgg's `aggregate` under `strategy`; `rows`: each replica computes `rows` rows
    from offset replica_id·rows (None: the whole global batch; 0: the posteriors alone, no per-row work)."""
    with strategy.scope():
        aggregator = kb.BayesAgg(warmup_epochs=1, seed=0)
        aggregator.build_for(TaskLayout(dict(tasks), int(inputs.representation.shape[1])))
        aggregator.completed_epochs.assign(1)
    replicas = max(strategy.num_replicas_in_sync, REPLICAS)

    def on_replica() -> tf.Tensor:
        own = None
        if rows is not None:
            replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
            own = ReplicaRows(offset=replica * rows, size=tf.constant(rows), replicas=replicas)
        return aggregator.aggregate(dataclasses.replace(inputs, rows=own)).representation_gradient

    function = tf.function(lambda: strategy.run(on_replica))
    return lambda: [value.numpy() for value in strategy.experimental_local_results(function())]


def median_interleaved_seconds(calls: dict, rounds: int) -> dict[str, float]:
    for call in calls.values():
        for _ in range(3):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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
    step_seconds: dict[tuple[str, str], tuple[float, float]] = {}
    presets = args.preset or ["utkface-heads", "cifar-mtl-heads"]
    for name in presets:
        preset = PRESETS[name]
        tasks = parse_tasks(preset.tasks)
        # h, the label columns and `present` (one column per task unit) of the other replica's rows
        columns = (
            preset.dim + sum(task.units for task in tasks.values()) + TaskLayout(dict(tasks), preset.dim).num_units
        )
        rows = preset.batch // REPLICAS
        gathered = (REPLICAS - 1) * rows * columns
        gather = median_gather_seconds(mirrored, rows, columns, args.steps)
        for label, make in aggregators.items():
            single = median_step_seconds(one_device, make, preset, args.steps)
            replicated = median_step_seconds(mirrored, make, preset, args.steps)
            step_seconds[name, label] = single, replicated
            print(
                f"| {name} (B={preset.batch}, D={preset.dim}, {preset.tasks}) | {label} | {single:.4f} | "
                f"{replicated:.4f} | {replicated / single:.2f} | {gather:.5f} | {gathered:,} |",
                flush=True,
            )
    print(f"\nBayesAgg's aggregate call alone, s (load average {os.getloadavg()[0]:.2f} at the start)")
    print(
        "| preset | 1 device, global batch | 1 device, one replica's rows (R=2) | 1 device, no rows (posteriors) | "
        "per-row part: global, one replica's | 2 replicas, whole batch each (before) | 2 replicas, own rows | "
        "ratio | step BayesAgg − LS, 1 device | step BayesAgg − LS, 2 replicas |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in presets:
        preset = PRESETS[name]
        tasks = parse_tasks(preset.tasks)
        inputs = aggregate_inputs(tasks, preset.batch, preset.dim)
        calls = {
            "global": aggregate_call(one_device, tasks, inputs, None),
            "share": aggregate_call(one_device, tasks, inputs, preset.batch // REPLICAS),
            "none": aggregate_call(one_device, tasks, inputs, 0),
            "replicas, whole batch": aggregate_call(mirrored, tasks, inputs, None),
            "replicas, own rows": aggregate_call(mirrored, tasks, inputs, preset.batch // REPLICAS),
        }
        seconds = median_interleaved_seconds(calls, args.steps)
        (single_bayes, replicated_bayes), (single_ls, replicated_ls) = (
            step_seconds[name, "BayesAgg"],
            step_seconds[name, "LinearScalarization"],
        )
        print(
            f"| {name} | {seconds['global']:.4f} | {seconds['share']:.4f} | {seconds['none']:.4f} | "
            f"{seconds['global'] - seconds['none']:.4f}, {seconds['share'] - seconds['none']:.4f} | "
            f"{seconds['replicas, whole batch']:.4f} | {seconds['replicas, own rows']:.4f} | "
            f"{seconds['replicas, own rows'] / seconds['replicas, whole batch']:.2f} | "
            f"{single_bayes - single_ls:.4f} | {replicated_bayes - replicated_ls:.4f} |",
            flush=True,
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
