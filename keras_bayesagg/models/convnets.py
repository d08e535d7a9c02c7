"""Image trunks of the paper: the CIFAR-MTL CNN and ResNet-18/34 encoders, each ending in h ∈ R^D."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class ReflectionPadding2D(layers.Layer):
    """Pads height and width by mirroring the border (no edge repeat), like `padding_mode='reflect'`."""

    def __init__(self, padding: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs: Any) -> Any:
        p = self.padding
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        height, width = (None if s is None else s + 2 * self.padding for s in input_shape[1:3])
        return (input_shape[0], height, width, input_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "padding": self.padding}


def cifar_mtl_cnn(input_shape: tuple[int, int, int] = (32, 32, 3), filters: int = 160, blocks: int = 3) -> keras.Model:
    """The CIFAR-MTL trunk: `blocks` × [reflect-pad 1 → 3×3 conv (`filters`) → ELU → 3×3 max-pool → batch norm].

    Max-pooling uses stride 3 (Keras's default stride = pool size), so 32×32 becomes 10, 3 and
    1 pixel(s) and the global average pool at the end is exactly a flatten: D = `filters` = 160.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block in range(blocks):
        x = ReflectionPadding2D(1, name=f"pad{block}")(x)
        x = layers.Conv2D(filters, 3, name=f"conv{block}")(x)
        x = layers.Activation("elu", name=f"elu{block}")(x)
        x = layers.MaxPooling2D(3, name=f"pool{block}")(x)
        x = layers.BatchNormalization(name=f"bn{block}")(x)
    h = layers.GlobalAveragePooling2D(name="h")(x)
    return keras.Model(inputs, h, name="cifar_mtl_cnn")


def _basic_block(x: Any, filters: int, stride: int, name: str) -> Any:
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_down_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def resnet_encoder(
    depth: int = 18, dim: int = 256, input_shape: tuple[int, int, int] = (128, 128, 3), width: int = 64
) -> keras.Model:
    """ResNet-18/34 (He et al. 2016, basic blocks) → global average pool → Dense(`dim`) → ELU.

    The ImageNet stem (7×7/2 conv, 3×3/2 max-pool) and stages of `width`·(1, 2, 4, 8) channels;
    `width` < 64 gives a thin network for quick runs. D = `dim` (256 for UTKFace).
    """
    if depth not in RESNET_STAGES:
        raise ValueError(f"depth must be one of {sorted(RESNET_STAGES)}; got {depth!r}.")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, repeats in enumerate(RESNET_STAGES[depth]):
        for block in range(repeats):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, width * 2**stage, stride, name=f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    h = layers.Dense(dim, activation="elu", name="h")(x)
    return keras.Model(inputs, h, name=f"resnet{depth}_encoder")
