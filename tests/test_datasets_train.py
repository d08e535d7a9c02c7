"""The TFDS loaders feed a MultiTaskModel on the matching kb.models trunk that trains an epoch with BayesAgg."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_bayesagg as kb
from tests.test_datasets import USE_CODE, _qm9_split


def _fit_one_epoch(trunk, data, batches: int) -> list[float]:
    model = kb.MultiTaskModel(trunk, data.tasks)
    model.compile(
        optimizer="adam", aggregator=kb.BayesAgg(warmup_epochs=0, num_samples=8, seed=0), metrics=data.metrics()
    )
    history = model.fit(data.train.take(batches), epochs=1, verbose=0)
    assert int(model.aggregator.completed_epochs.numpy()) == 1  # the epoch ended with a prior refresh
    return history.history["loss"]


def test_celeba_trains_an_epoch_with_bayesagg_on_the_resnet_encoder():
    with tfds.testing.mock_data(num_examples=8, policy=USE_CODE):
        data = kb.datasets.celeba(batch_size=4, image_size=16)
        trunk = kb.models.resnet_encoder(depth=18, dim=16, input_shape=(16, 16, 3), width=4)
        losses = _fit_one_epoch(trunk, data, batches=2)
    assert np.all(np.isfinite(losses))


def test_qm9_trains_an_epoch_with_bayesagg_on_the_mpnn():
    pytest.importorskip("pandas", reason="the TFDS qm9 builder imports pandas")
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=_qm9_split):
        data = kb.datasets.qm9(batch_size=16)
        losses = _fit_one_epoch(kb.models.qm9_mpnn(units=8, steps=1, set2set_steps=1, dim=8), data, batches=2)
    assert np.all(np.isfinite(losses))
    assert isinstance(data.train, tf.data.Dataset)
