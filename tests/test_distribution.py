"""Training under tf.distribute (two logical CPU replicas), in a subprocess: the devices must be
configured before TensorFlow starts, which the rest of the suite has already done."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np, keras, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras_bayesagg as kb
    from tests.conftest import mixed_task_data, MIXED_TASKS

    x, y = mixed_task_data(num_samples=256)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)

    def trained(strategy, aggregator):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="elu")])
            model = kb.MultiTaskModel(trunk, {name: make() for name, make in MIXED_TASKS.items()})
            model.compile(optimizer=keras.optimizers.SGD(0.05), aggregator=aggregator)
        history = model.fit(dataset, epochs=2, verbose=0).history
        return [w.numpy() for w in model.weights], history["loss"]

    mirrored = tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"])
    # Methods whose update is linear in the per-sample losses give the same update from two
    # half-batches as from the whole batch.
    for make in (kb.aggregators.LinearScalarization, kb.aggregators.UncertaintyWeighting):
        single, single_loss = trained(tf.distribute.get_strategy(), make())
        replicated, replicated_loss = trained(mirrored, make())
        for a, b in zip(single, replicated):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=make.__name__)
        np.testing.assert_allclose(single_loss, replicated_loss, rtol=1e-3, err_msg=make.__name__)
    # Gradient methods combine each replica's own task gradients: they train, with finite weights.
    weights, losses = trained(mirrored, kb.aggregators.MGDA())
    assert all(np.all(np.isfinite(w)) for w in weights) and losses[-1] < losses[0], losses
    try:
        trained(mirrored, kb.BayesAgg())
    except ValueError as error:
        assert "BayesAgg does not support tf.distribute" in str(error), error
    else:
        raise AssertionError("BayesAgg should refuse a multi-replica strategy")
    # A bad label on any replica skips the step everywhere: weights, Adam's slots and the
    # iteration counter stay exactly as they were.
    with mirrored.scope():
        keras.utils.set_random_seed(0)
        trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="elu")])
        model = kb.MultiTaskModel(trunk, {name: make() for name, make in MIXED_TASKS.items()})
        model.compile(optimizer="adam")
    model.fit(dataset, epochs=1, verbose=0)
    state = lambda: [np.array(v.numpy()) for v in list(model.weights) + list(model.optimizer.variables)]
    before = state()
    bad = {name: labels.copy() for name, labels in y.items()}
    bad["kind"][40] = 9  # in the second half of the first batch: one replica sees it
    try:
        model.fit(tf.data.Dataset.from_tensor_slices((x, bad)).batch(64), epochs=1, verbose=0)
    except ValueError as error:
        assert "Task 'kind'" in str(error), error
    else:
        raise AssertionError("a bad label should stop fit")
    for a, b in zip(before, state()):
        np.testing.assert_array_equal(a, b)
    print("OK")
    """
)


def test_multi_replica_training_matches_single_device():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": repo}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=repo, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or "OK" not in result.stdout:
        pytest.fail(f"distributed training failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
