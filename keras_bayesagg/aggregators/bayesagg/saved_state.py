"""Loading BayesAgg state saved by an earlier version, which lacks variables appended since."""

from __future__ import annotations

from typing import Any, Sequence

import keras

from keras_bayesagg.aggregators.base import SEED_STATE_PREFIX


def load_with_appended_state(store: Any, layer: keras.layers.Layer, appended: Sequence[keras.Variable]) -> Any:
    """`store`, completed with the current values of `appended` (the layer's last variables) when it was
    saved without them; any other difference is left to the layer's own count check."""
    keys = [key for key in store.keys() if not key.startswith(SEED_STATE_PREFIX)]
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)
    tail = own[len(own) - len(appended) :]
    if not appended or len(keys) != len(own) - len(appended) or any(a is not b for a, b in zip(tail, appended)):
        return store
    completed = {key: store[key] for key in store.keys()}
    completed.update({str(len(keys) + index): variable.numpy() for index, variable in enumerate(appended)})
    return completed
