"""CelebA (Liu et al. 2015) from TFDS `celeb_a`: the 40 binary face attributes as 40 named tasks.

Each attribute is its own task (`Binary(1)`), so Δm averages over the 40 attributes as in the
multi-task literature. Task names are the TFDS attribute names, except `5_o_Clock_Shadow`, which
becomes `Five_o_Clock_Shadow` (task names cannot start with a digit).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.datasets._base import MultiTaskData, finish
from keras_bayesagg.datasets._tfds import load_split
from keras_bayesagg.tasks import Binary

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


def task_name(attribute: str) -> str:
    """The task name of a CelebA attribute (a leading digit spelled out)."""
    return "Five" + attribute[1:] if attribute.startswith("5") else attribute


def _metrics() -> dict[str, list[Any]]:
    return {task_name(a): [keras.metrics.BinaryAccuracy(name="accuracy")] for a in CELEBA_ATTRIBUTES}


def celeba(
    batch_size: int = 256,
    image_size: int = 64,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> MultiTaskData:
    """CelebA's official train/validation/test splits; the 178×218 aligned faces center-cropped to
    178×178 and resized to `image_size`², scaled to [0, 1]. Labels: `{attribute: (batch, 1) 0/1}`."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8; got {image_size!r}.")

    def example(features: dict[str, Any]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        image = tf.cast(features["image"], tf.float32)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
        image = tf.image.resize(image, (image_size, image_size), antialias=True) / 255.0
        labels = {task_name(a): tf.cast(features["attributes"][a], tf.float32)[None] for a in CELEBA_ATTRIBUTES}
        return tf.clip_by_value(image, 0.0, 1.0), labels

    def split(name: str, shuffle_seed: int | None) -> tf.data.Dataset:
        dataset = load_split("celeb_a", name, data_dir, download).map(example, num_parallel_calls=tf.data.AUTOTUNE)
        return finish(dataset, batch_size, shuffle_seed)

    return MultiTaskData(
        train=split("train", seed),
        validation=split("validation", None),
        test=split("test", None),
        tasks={task_name(a): Binary(1) for a in CELEBA_ATTRIBUTES},
        higher_is_better={task_name(a): {"accuracy": True} for a in CELEBA_ATTRIBUTES},
        metric_factory=_metrics,
        num_examples={"train": 162_770, "validation": 19_867, "test": 19_962},
    )
