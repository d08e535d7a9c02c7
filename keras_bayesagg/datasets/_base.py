"""The object every loader returns, and the tf.data plumbing the loaders share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from keras_bayesagg.tasks import Task

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class MultiTaskData:
    """A benchmark ready for `kb.MultiTaskModel`: pipelines, tasks, metrics and Δm directions.

    Attributes:
        train, validation, test: batched, prefetched `tf.data` pipelines of `(x, {task: labels})`;
            `train` reshuffles every epoch from `seed` (TensorFlow mixes in its global seed when one is
            set, e.g. by `keras.utils.set_random_seed`, before the loader is called); the other two keep their order.
        tasks: the `tasks` dict for `MultiTaskModel` (fresh Task objects are cheap; this one is shared).
        higher_is_better: `{task: {metric name: bool}}`, the structure `kb.metrics.delta_m` reads.
        num_examples: examples per split (`None` where a split's size is unknown without a pass over it).
        target_scale: `{regression task: (mean, std)}` of the training split; labels are z-scores.
        skipped: files that were found but could not be used (folder loaders), reported, never silent.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    tasks: Mapping[str, Task]
    higher_is_better: Mapping[str, Mapping[str, bool]]
    metric_factory: Callable[[], dict[str, list[Any]]] = dataclasses.field(repr=False, compare=False)
    num_examples: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    target_scale: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def metrics(self) -> dict[str, list[Any]]:
        """Per-task metric objects for `compile(metrics=...)`; new objects on every call (one per model)."""
        return self.metric_factory()

    def inverse_transform(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Regression outputs or labels back to original units (z·std + mean); other tasks pass through."""
        restored = {}
        for name, value in values.items():
            array = np.asarray(value, dtype="float64")
            if name in self.target_scale:
                mean, std = self.target_scale[name]
                array = array * std + mean
            restored[name] = array
        return restored


def finish(
    dataset: tf.data.Dataset, batch_size: int, shuffle_seed: int | None, buffer: int = 10_000
) -> tf.data.Dataset:
    """Shuffle (train only, reproducibly from the seed), batch and prefetch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if shuffle_seed is not None:
        dataset = dataset.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def split_indices(
    count: int, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded permutation of range(count) cut into train/validation/test by `fractions`."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1 (train, validation, test); got {fractions!r}."
        )
    order = np.random.default_rng(seed).permutation(count)
    first = round(count * fractions[0])
    second = first + round(count * fractions[1])
    return order[:first], order[first:second], order[second:]


def decode_image(path: tf.Tensor, channels: int = 3) -> tf.Tensor:
    """JPEG or PNG file → uint8 [H, W, channels]."""
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def resize_and_center_crop(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    """Resize to resize×resize, center-crop crop×crop, scale to [0, 1] float32."""
    image = tf.image.resize(tf.cast(image, tf.float32), (resize, resize), antialias=True)
    offset = (resize - crop) // 2
    image = image[offset : offset + crop, offset : offset + crop, :]
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)
