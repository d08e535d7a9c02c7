"""CIFAR-MTL (Rosenbaum et al. 2018): CIFAR-100's 20 superclasses as 20 one-vs-rest binary tasks.

One task, `"coarse"` = `Binary(20)`: each sample's label is the one-hot row of its superclass, so
the aggregator sees 20 task units (`coarse[0]` … `coarse[19]`, the paper's 20 tasks) while the
metric the paper's Table 2 reports — accuracy of the class assignment, argmax over the 20
outputs — is one number (`accuracy`); the mean one-vs-rest AUC is reported too (`auc`).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.datasets._base import MultiTaskData, finish
from keras_bayesagg.datasets._tfds import load_split
from keras_bayesagg.tasks import Binary

CIFAR100_TRAIN_SIZE = 50_000
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
_MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 training-set channel statistics
_STD = (0.2673, 0.2564, 0.2762)


def validation_mask(validation_size: int = 5_000, split_seed: int = 0) -> np.ndarray:
    """Which of the 50,000 training images (in TFDS file order) form the validation set: a fixed random subset."""
    if not 0 < validation_size < CIFAR100_TRAIN_SIZE:
        raise ValueError(f"validation_size must be in (0, {CIFAR100_TRAIN_SIZE}); got {validation_size!r}.")
    mask = np.zeros(CIFAR100_TRAIN_SIZE, dtype=bool)
    mask[np.random.default_rng(split_seed).permutation(CIFAR100_TRAIN_SIZE)[:validation_size]] = True
    return mask


def _example(features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    image = (tf.cast(features["image"], tf.float32) / 255.0 - _MEAN) / _STD
    coarse = tf.one_hot(tf.cast(features["coarse_label"], tf.int32), len(CIFAR100_SUPERCLASSES), dtype=tf.float32)
    return image, {"coarse": coarse}


def _metrics() -> dict[str, list[Any]]:
    return {
        "coarse": [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.AUC(multi_label=True, num_labels=len(CIFAR100_SUPERCLASSES), name="auc"),
        ]
    }


def _split_size(data_dir: str | os.PathLike | None) -> int | None:
    """Examples in the prepared TFDS train split, or None when the metadata does not say (e.g. mock data)."""
    import tensorflow_datasets as tfds

    try:
        return int(tfds.builder("cifar100", data_dir=data_dir).info.splits["train"].num_examples)
    except (KeyError, ValueError, OSError):  # no prepared metadata: the size stays unknown to tf.data
        return None


def cifar_mtl(
    batch_size: int = 128,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 5_000,
    split_seed: int = 0,
    download: bool = False,
) -> MultiTaskData:
    """CIFAR-MTL from TFDS `cifar100`: official train/test; `validation_size` training images held out.

    The validation images are a fixed random subset of the training split (drawn with
    `split_seed`, the same for every `seed`), as the paper allocates 5,000 of the 50,000;
    `seed` only sets the training order. Images are standardized per channel.
    """
    mask = tf.constant(validation_mask(validation_size, split_seed))
    train_all = load_split("cifar100", "train", data_dir, download)

    size = _split_size(data_dir)

    def part(held_out: bool) -> tf.data.Dataset:
        chosen = train_all.enumerate().filter(lambda i, _: tf.gather(mask, i % CIFAR100_TRAIN_SIZE) == held_out)
        if size == CIFAR100_TRAIN_SIZE:  # the filter hides the size; tell Keras (progress bar, no "ran out of data")
            count = validation_size if held_out else CIFAR100_TRAIN_SIZE - validation_size
            chosen = chosen.apply(tf.data.experimental.assert_cardinality(count))
        return chosen.map(lambda _, features: _example(features), num_parallel_calls=tf.data.AUTOTUNE)

    test = load_split("cifar100", "test", data_dir, download).map(_example, num_parallel_calls=tf.data.AUTOTUNE)
    return MultiTaskData(
        train=finish(part(False), batch_size, seed),
        validation=finish(part(True), batch_size, None),
        test=finish(test, batch_size, None),
        tasks={"coarse": Binary(len(CIFAR100_SUPERCLASSES))},
        higher_is_better={"coarse": {"accuracy": True, "auc": True}},
        metric_factory=_metrics,
        num_examples={"train": CIFAR100_TRAIN_SIZE - validation_size, "validation": validation_size, "test": 10_000},
    )
