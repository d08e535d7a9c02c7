"""Full-size runs at the paper's head shapes (slow: `make test-slow`, not part of `make test`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_bayesagg as kb
from keras_bayesagg.data import random_task_batch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "tasks, dim, batch",
    [
        (
            {"age": kb.tasks.Regression(), "gender": kb.tasks.Multiclass(2), "ethnicity": kb.tasks.Multiclass(5)},
            512,
            128,
        ),
        ({"findings": kb.tasks.Binary(14)}, 512, 256),
        ({"coarse": kb.tasks.Binary(20)}, 64, 128),
    ],
    ids=["utkface", "chestxray", "cifar-mtl"],
)
def test_default_bayesagg_trains_at_paper_shapes_under_xla(tasks, dim, batch):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(dim, activation="elu")])
    model = kb.MultiTaskModel(trunk, tasks)
    aggregator = kb.BayesAgg(warmup_epochs=1, seed=0)  # S = 1024, the paper's default
    model.compile(optimizer=keras.optimizers.Adam(1e-3), aggregator=aggregator, jit_compile=True)
    x, labels = random_task_batch(tasks, batch * 6, (dim,), positive_rate=0.3)
    history = model.fit(x, labels, batch_size=batch, epochs=3, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert int(aggregator.completed_epochs.numpy()) == 3
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights + aggregator.weights)
