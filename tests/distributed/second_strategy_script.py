"""Run as a script (two logical CPUs): several MirroredStrategy models in one process, as a notebook or a sweep
makes them. The first trains on batches that leave an uneven last batch; later models (new strategies, other
batch sizes, BayesAgg and linear scalarization) must train too. Prints OK at the end."""

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import keras_bayesagg as kb  # noqa: E402
from tests.conftest import MIXED_TASKS, mixed_task_data  # noqa: E402


def train(batch_size: int, rows: int, aggregator: kb.interface.Aggregator) -> None:
    x, y = mixed_task_data(num_samples=rows)
    strategy = tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"])  # a new one per model, as a notebook cell does
    with strategy.scope():
        trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, activation="elu")])
        model = kb.MultiTaskModel(trunk, {name: make() for name, make in MIXED_TASKS.items()})
        model.compile(optimizer="sgd", aggregator=aggregator)
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    print(f"trained: batch {batch_size}, {rows} rows, {type(aggregator).__name__}", flush=True)


train(128, 313, kb.aggregators.LinearScalarization())  # last batch 57 rows: 29 and 28 per replica
train(128, 256, kb.aggregators.LinearScalarization())
train(100, 250, kb.BayesAgg(num_samples=8, warmup_epochs=0, seed=0))
print("OK")
