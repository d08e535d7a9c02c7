"""Training under tf.distribute equals one device on the same global batches.

MirroredStrategy runs on two logical CPUs, in a subprocess (the devices must be configured before
TensorFlow starts, which the rest of the suite has already done). MultiWorkerMirroredStrategy runs
two real worker processes on localhost, each with its TF_CONFIG and free ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from tests.distributed import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}


def run_script(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"tests.distributed.{script}", *args],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0 or "OK" not in result.stdout:
        pytest.fail(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    print(result.stdout)


def test_mirrored_strategy_equals_one_device():
    """BayesAgg (warm-up, refreshes, Monte Carlo), steps_per_execution=3, saving, a bad label, and a few
    other aggregators: two replicas end within 1e-4 (relative) of one device."""
    run_script("mirrored_script", "fast")


def test_several_mirrored_strategies_in_one_process_train_after_an_uneven_last_batch():
    run_script("second_strategy_script")


@pytest.mark.slow
def test_mirrored_strategy_equals_one_device_for_every_aggregator():
    run_script("mirrored_script", "all")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_strategy_equals_one_device(tmp_path):
    """Two worker processes end identical to each other and within 1e-4 of one device, for BayesAgg
    (with steps_per_execution=2) and linear scalarization; the chief's checkpoint and .keras file load on one
    device."""
    ports = ",".join(str(port) for port in free_ports(2))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.worker_script", str(index), ports, str(tmp_path)],
            env=ENV,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0 and "OK" in output, output[-6000:]

    def load(path: str) -> list[np.ndarray]:
        stored = np.load(path)
        return [stored[f"arr_{index}"] for index in range(len(stored.files))]

    runs = {"bayesagg": common.bayesagg, "linear": kb.aggregators.LinearScalarization}
    for run, make in runs.items():
        first, second = load(tmp_path / f"{run}-0.npz"), load(tmp_path / f"{run}-1.npz")
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b, err_msg=f"{run}: the workers differ")
        single_model = common.trained(tf.distribute.get_strategy(), make)
        worst = common.worst_relative_difference(common.weights(single_model), first)
        assert worst < 1e-4, (run, worst)
        single_model.load_weights(tmp_path / f"{run}.weights.h5")  # the chief's last checkpoint
        for a, b in zip(common.weights(single_model), first):
            np.testing.assert_array_equal(a, b, err_msg=f"{run}: the checkpoint differs")

    reloaded = keras.saving.load_model(tmp_path / "bayesagg.keras")
    expected = np.load(tmp_path / "bayesagg-predictions.npz")
    for name, value in reloaded.predict(common.probe_inputs(), verbose=0).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-6, err_msg=name)
