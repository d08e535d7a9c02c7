"""Shared fixtures: small synthetic multi-task data and model factories for end-to-end tests."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb

# ../shared beside the repository; BAYESAGG_REFERENCE overrides it (git worktrees live elsewhere).
REFERENCE_PATH = pathlib.Path(
    os.environ.get(
        "BAYESAGG_REFERENCE",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "bayesagg_reference.npz",
    )
)


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    """The authors' outputs (../shared/reference); tests that need them skip when it is absent."""
    if not REFERENCE_PATH.exists():
        pytest.skip(f"reference vectors not found at {REFERENCE_PATH} (CI has ../shared beside the repo)")
    with np.load(REFERENCE_PATH) as data:
        return {key: data[key] for key in data.files}


def mixed_task_data(
    num_samples: int = 512, input_dim: int = 12, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs and labels for a regression output, a set of 3 binary tasks and a 4-class task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    w = rng.normal(size=(input_dim, 8)).astype("float32")
    z = x @ w
    labels = {
        "value": (z[:, 0] + 0.1 * rng.normal(size=num_samples)).astype("float32"),
        "flags": (z[:, 1:4] > 0).astype("float32"),
        "kind": np.argmax(z[:, 4:8], axis=1).astype("int32"),
    }
    return x, labels


MIXED_TASKS: dict[str, Callable[[], Any]] = {
    "value": lambda: kb.tasks.Regression(),
    "flags": lambda: kb.tasks.Binary(3),
    "kind": lambda: kb.tasks.Multiclass(4),
}


def value_and_class_data(
    num_classes: int, num_samples: int = 192, input_dim: int = 10, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs, a regression label "value" and a `num_classes`-class label "kind", both from one linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, input_dim)).astype("float32")
    z = x @ rng.normal(size=(input_dim, num_classes + 1)).astype("float32")
    labels = {
        "value": (z[:, 0] + 0.3 * rng.normal(size=num_samples)).astype("float32"),
        "kind": np.argmax(z[:, 1:] + rng.normal(size=(num_samples, num_classes)), axis=1).astype("int32"),
    }
    return x, labels


def make_mixed_model(input_dim: int = 12, hidden: int = 16, seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(hidden, activation="elu")])
    return kb.MultiTaskModel(trunk, {name: make() for name, make in MIXED_TASKS.items()})


def mixed_dataset(batch_size: int = 64, **kwargs: Any) -> tf.data.Dataset:
    x, labels = mixed_task_data(**kwargs)
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size)


def applied(aggregator: Any, inputs: Any) -> Any:
    """One aggregation as the engine applies it: aggregate, then commit the aggregator's state writes."""
    aggregation = aggregator.aggregate(inputs)
    aggregator.commit(aggregation)
    return aggregation
