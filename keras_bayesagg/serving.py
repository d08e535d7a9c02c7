"""Predictive uncertainty at serving time: `MultiTaskModel.predict_with_uncertainty` and the exported
`serve_with_uncertainty` endpoint, both from the heads' served state (`served_state.py`, written by BayesAgg).

The outputs are one flat dict of float32 tensors keyed "<task>/<quantity>" (the same keys in Python
and in the SavedModel signature): regression "<task>/mean" (what `predict` returns) and
"<task>/variance"; binary and multiclass "<task>/probabilities" and "<task>/entropy" (nats).
See docs/uncertainty.md for the formulas.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.export.export_utils import get_input_signature, make_tf_tensor_spec  # as keras.Model.export

DEFAULT_BATCH_SIZE = 32
SERVE = "serve"
SERVE_WITH_UNCERTAINTY = "serve_with_uncertainty"


def _megabytes(size: float) -> str:
    return f"{size:.0f}" if size >= 100 else f"{size:.3g}"


def served_missing(model: keras.Model) -> str | None:
    """Why the heads' served state cannot answer (None when every head's is written)."""
    for name, head in model.heads.items():
        if head.served is None and head.served_state_skipped_mb is not None:
            return (
                f"head '{name}' keeps no served state: its posterior covariance would take "
                f"{_megabytes(head.served_state_skipped_mb)} MB in its smallest form, over the model's "
                f"uncertainty_state_mb={model.uncertainty_state_mb}. Build the model with kb.MultiTaskModel(..., "
                f"uncertainty_state_mb={int(head.served_state_skipped_mb) + 1}) to serve its uncertainty."
            )
    if all(head.served is not None and float(head.served.ready.numpy()) > 0 for head in model.heads.values()):
        return None
    if model.aggregator is None:
        return (
            "Predictive uncertainty needs BayesAgg's posterior over the heads: compile the model with "
            "aggregator=kb.BayesAgg(...) and fit it past its warm-up."
        )
    return model.aggregator.uncertainty_missing() or "the heads' served state has not been written yet."


def check_available(model: keras.Model) -> None:
    """Raise a ValueError that names what is missing when the model cannot give predictive uncertainty."""
    missing = served_missing(model)
    if missing:
        raise ValueError(f"No predictive uncertainty for this model: {missing}")


def uncertainty_outputs(model: keras.Model, inputs: Any) -> dict[str, tf.Tensor]:
    """The flat uncertainty dict for one batch of inputs from the heads' served state (traceable, XLA-compilable)."""
    h32 = tf.cast(model._representation(inputs, training=False), tf.float32)
    logits = model._logits(h32)
    out: dict[str, tf.Tensor] = {}
    for name, head in model.heads.items():
        out.update(head.served.outputs(name, h32, logits[name]))
    return out


def _batches(x: Any, batch_size: int) -> Any:
    if isinstance(x, tf.data.Dataset):
        for element in x:
            yield element[0] if isinstance(element, tuple) else element
        return
    count = len(keras.tree.flatten(x)[0])
    for start in range(0, count, batch_size):
        yield keras.tree.map_structure(lambda array: array[start : start + batch_size], x)


def predict_with_uncertainty(model: keras.Model, x: Any, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """`uncertainty_outputs` over arrays (or a dict of arrays) in batches, or over a dataset of x or (x, y)."""
    check_available(model)
    step = tf.function(lambda inputs: uncertainty_outputs(model, inputs), reduce_retracing=True)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in _batches(x, batch_size or DEFAULT_BATCH_SIZE):
        for key, value in step(batch).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values, axis=0) for key, values in parts.items()}


def export(
    model: keras.Model,
    filepath: Any,
    verbose: bool | None = None,
    input_signature: Any = None,
    uncertainty: bool | None = None,
    jit_compile: bool = False,
) -> None:
    """A SavedModel with `serve` (as `keras.Model.export`) and, when available, `serve_with_uncertainty`.

    `uncertainty`: None exports the endpoint when the model can answer it, True requires it (the
    error of `predict_with_uncertainty` otherwise), False leaves it out. `jit_compile` compiles both
    endpoints with XLA when the SavedModel runs. Quiet unless `verbose=True` (then TensorFlow lists
    each endpoint's signature and captured variables, as `keras.Model.export` does by default).
    """
    if uncertainty is None:
        uncertainty = served_missing(model) is None
    if uncertainty:
        check_available(model)
    signature = input_signature if input_signature is not None else get_input_signature(model)
    specs = keras.tree.map_structure(make_tf_tensor_spec, signature)
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = {SERVE: lambda *inputs: model(*inputs, training=False)}
    if uncertainty:
        endpoints[SERVE_WITH_UNCERTAINTY] = lambda *inputs: uncertainty_outputs(model, *inputs)
    for name, function in endpoints.items():
        compiled = tf.function(function, input_signature=specs, autograph=False, jit_compile=jit_compile)
        compiled.get_concrete_function()
        archive.add_endpoint(name, compiled)
    archive.write_out(filepath, verbose=bool(verbose))  # a library call is quiet unless asked
