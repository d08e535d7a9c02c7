"""Building a MultiTaskModel from what the data says about its inputs, before the first step.

One symbolic call records the input signature that `model.export` needs, and builds everything
the first step would otherwise create while tracing (so callbacks see built state).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import keras
import tensorflow as tf


class InputSpec(NamedTuple):
    shape: tuple[int | None, ...]
    dtype: Any


def _keras_tensors(specs: Any) -> Any:
    """`InputSpec`s, possibly nested in dicts/lists, to KerasTensors with a free batch size."""
    if isinstance(specs, InputSpec):
        shape, dtype = specs
        return keras.KerasTensor(
            (None,) + tuple(shape[1:]), dtype=keras.backend.standardize_dtype(tf.as_dtype(dtype).name)
        )
    if isinstance(specs, dict):
        return {key: _keras_tensors(value) for key, value in specs.items()}
    if isinstance(specs, (list, tuple)):
        return type(specs)(_keras_tensors(value) for value in specs)
    raise TypeError(f"Cannot build MultiTaskModel from inputs described as {specs!r}.")


def build_symbolically(model: keras.Model, specs: Any) -> None:
    with model.distribute_strategy.scope():
        model(_keras_tensors(specs))


def input_spec_of(x: Any) -> Any:
    """The input specs of a dataset of (x, y) or of an array, or None when they cannot be seen."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        return keras.tree.map_structure(lambda s: InputSpec(tuple(s.shape), s.dtype), spec)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return InputSpec((None,) + tuple(x.shape[1:]), x.dtype)
    return None


def representation_dim(trunk: keras.layers.Layer, input_shape: Any, dtype: str) -> int:
    """D of the trunk's rank-2 output (batch, D), or a clear error."""
    if not trunk.built:
        trunk.build(input_shape)
    spec = trunk.compute_output_spec(
        keras.tree.map_shape_structure(lambda s: keras.KerasTensor(s, dtype=dtype), input_shape)
    )
    shape = tuple(spec.shape) if hasattr(spec, "shape") else None
    if shape is None or len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "The trunk must return one rank-2 representation of shape (batch, D) with D known; "
            f"got {spec if shape is None else shape}. Add a Flatten or pooling layer at the end of the trunk."
        )
    return int(shape[-1])


def first_replica_batch(strategy: tf.distribute.Strategy, iterator: Any) -> Any:
    """The first batch of an epoch iterator as replica 0 sees it (no cross-replica op: works on every strategy).

    Keras's own build step reduces the first distributed batch with an eager `strategy.reduce`, which
    collective strategies (MultiWorkerMirroredStrategy) cannot run (keras-team/keras#20585); one
    replica's batch has every shape the build needs.
    """
    for _, _, batches in iterator:
        batch = next(batches)
        return keras.tree.map_structure(
            lambda value: (
                strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues)
                else value
            ),
            batch,
        )
    return None


def symbolic_build_arguments(model: keras.Model, iterator: Any, data_batch: Any) -> dict[str, Any]:
    """Keras's `_maybe_symbolic_build` arguments with replica 0's first batch in place of a distributed iterator."""
    if iterator is not None and data_batch is None and model._distribute_strategy is not None:
        return {"iterator": None, "data_batch": first_replica_batch(model.distribute_strategy, iterator)}
    return {"iterator": iterator, "data_batch": data_batch}


KERAS_DEFAULT_BATCH_SIZE = 32  # what keras.Model.fit uses for arrays without batch_size


def known_batch_size(x: Any, batch_size: Any) -> int | None:
    """The batch size fit will train on when it can be seen before training (arrays, or a dataset with a static
    batch dimension), else None."""
    if isinstance(x, tf.data.Dataset):
        specs = keras.tree.flatten(x.element_spec)
        first = specs[0].shape if specs and hasattr(specs[0], "shape") else None
        return int(first[0]) if first is not None and first.rank and first[0] is not None else None
    arrays = [item for item in keras.tree.flatten(x) if hasattr(item, "shape")] if x is not None else []
    if not arrays or not len(arrays[0].shape):
        return None
    return min(int(batch_size or KERAS_DEFAULT_BATCH_SIZE), int(arrays[0].shape[0]))


def parameter_count(trunk: keras.layers.Layer) -> int:
    """P: how many trainable parameters the trunk has (the length of a flattened trunk gradient)."""
    return sum(math.prod(variable.shape) for variable in trunk.trainable_variables)
