"""The one small interface every aggregator implements.

An aggregator decides how the task gradients w.r.t. the shared representation h combine before
they flow into the trunk. Each train step of `MultiTaskModel`:

1. runs the trunk and the heads under a gradient tape and computes, per task unit k, the loss
   L_k (mean over the batch) and, if `needs_task_gradients`, the per-sample gradients
   G[i, k] = ∂ℓ_ik/∂h_i (exact, from the linear heads: no extra backward pass);
2. calls `aggregate(inputs)` inside the tape, which returns an `Aggregation`;
3. trains the heads and the aggregator's own trainable variables on the gradient of
   `Aggregation.objective`, and the trunk either on the same objective
   (`representation_gradient is None`, for loss-weighting methods) or by back-propagating
   `representation_gradient` ([B, D], already divided by B) from h.

Aggregators are Keras layers only to own Keras variables (saved in `.keras` files and weight
checkpoints, created before `fit` so `jit_compile=True` works); they are never called on data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from keras_bayesagg.tasks import Task

SEED_STATE_PREFIX = "seed_generator_state_"


@dataclasses.dataclass(frozen=True)
class TaskUnit:
    """One task in the aggregation sense: an output of a regression/binary head, or a multiclass head."""

    name: str  # e.g. "age", "attributes[3]"
    task: str  # key in the model's task dict
    kind: str  # "regression" | "binary" | "multiclass"
    output: int | None  # output index in the head (None for a multiclass head)


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """The model's tasks as seen by an aggregator, in a fixed order."""

    tasks: dict[str, Task]
    representation_dim: int

    @property
    def units(self) -> tuple[TaskUnit, ...]:
        units: list[TaskUnit] = []
        for name, task in self.tasks.items():
            if task.num_task_units == 1 and task.kind == "multiclass":
                units.append(TaskUnit(name, name, task.kind, None))
            elif task.units == 1:
                units.append(TaskUnit(name, name, task.kind, 0))
            else:
                units.extend(TaskUnit(f"{name}[{o}]", name, task.kind, o) for o in range(task.units))
        return tuple(units)

    @property
    def num_units(self) -> int:
        return sum(task.num_task_units for task in self.tasks.values())

    def unit_slice(self, task_name: str) -> slice:
        start = 0
        for name, task in self.tasks.items():
            if name == task_name:
                return slice(start, start + task.num_task_units)
            start += task.num_task_units
        raise KeyError(task_name)


@dataclasses.dataclass
class AggregatorInputs:
    """What one train step hands to `Aggregator.aggregate`.

    losses: [K] mean-over-batch loss per task unit (differentiable: computed under the tape).
    representation: h, [B, D] float32 (a stopped copy; the trunk is reached through the result).
    task_gradients: [B, K, D] per-sample ∂ℓ_ik/∂h_i (not divided by B), or None when the
        aggregator does not ask for them (`needs_task_gradients`).
    parameter_gradients: [K, P] ∂L_k/∂θ for all trainable trunk variables θ, flattened and
        concatenated in `trunk.trainable_variables` order, or None unless
        `needs_parameter_gradients` (costs one backward pass through the trunk per task unit).
    labels, logits: per task name, canonical float32 labels and float32 logits.
    heads: per task name, the `LinearHead` layers (kernels [D, units], biases).
    """

    losses: tf.Tensor
    representation: tf.Tensor
    task_gradients: tf.Tensor | None
    labels: dict[str, tf.Tensor]
    logits: dict[str, tf.Tensor]
    heads: dict[str, Any]
    parameter_gradients: tf.Tensor | None = None

    @property
    def batch_size(self) -> tf.Tensor:
        return tf.shape(self.representation)[0]


@dataclasses.dataclass
class Aggregation:
    """What an aggregator decides for one step.

    objective: scalar whose gradient trains the heads and the aggregator's own trainable
        variables (and the trunk when `representation_gradient` is None).
    representation_gradient: [B, D], back-propagated from h into the trunk (includes the 1/B
        of the batch mean), or None to back-propagate `objective` instead.
    task_weights: [K], the weight each task unit got this step (for logs and comparisons).
    parameter_gradient: [P], the update direction for the flattened trunk variables (same
        layout as `AggregatorInputs.parameter_gradients`); when given it is used for the trunk
        instead of `representation_gradient` / `objective`.
    """

    objective: tf.Tensor
    representation_gradient: tf.Tensor | None = None
    task_weights: tf.Tensor | None = None
    parameter_gradient: tf.Tensor | None = None


class Aggregator(keras.layers.Layer):
    """Base class: subclasses implement `aggregate` and, if they keep state, `build_state`."""

    needs_task_gradients: bool = False
    needs_parameter_gradients: bool = False

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, trainable=kwargs.pop("trainable", True), dtype="float32", **kwargs)
        self.layout: TaskLayout | None = None

    def build_for(self, layout: TaskLayout) -> None:
        """Create all state for these tasks (called by the model before the first step)."""
        if self.built:
            if self.layout != layout:
                raise ValueError(
                    f"{type(self).__name__} was built for tasks {self.layout} and cannot serve {layout}; "
                    "use a new aggregator instance for another model."
                )
            return
        self.layout = layout
        self.last_task_weights = self.add_weight(
            name="last_task_weights", shape=(layout.num_units,), initializer="ones", trainable=False
        )
        self.build_state(layout)
        self.built = True

    def build_state(self, layout: TaskLayout) -> None:
        """Create the aggregator's own Keras variables. Default: none."""

    def aggregate(self, inputs: AggregatorInputs) -> Aggregation:
        raise NotImplementedError

    # Hooks around training. `fit` calls them through `kb.callbacks.AggregatorHooks`; a custom
    # training loop calls them itself.
    def begin_epoch(self) -> None:
        """Before each training epoch."""

    def end_batch(self) -> None:
        """After each train step (each `steps_per_execution` call); may raise to stop training."""

    def end_epoch(self, model: Any = None) -> None:
        """After each training epoch, with the model (e.g. to refresh priors from its heads)."""

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Extra callbacks `MultiTaskModel.fit` adds by itself, beyond `AggregatorHooks`."""
        return []

    def record_task_weights(self, weights: tf.Tensor | None) -> None:
        if weights is not None:
            self.last_task_weights.assign(tf.cast(tf.reshape(weights, [-1]), tf.float32))

    def save_own_variables(self, store: Any) -> None:
        # Keras does not save SeedGenerator states; without them a reloaded model replays its draws.
        super().save_own_variables(store)
        for index, generator in enumerate(self._seed_generators):
            store[f"{SEED_STATE_PREFIX}{index}"] = generator.state

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())
        for index, generator in enumerate(self._seed_generators):
            key = f"{SEED_STATE_PREFIX}{index}"
            if key in keys:
                generator.state.assign(store[key])
        super().load_own_variables({key: store[key] for key in keys if not key.startswith(SEED_STATE_PREFIX)})

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is an aggregator: pass it to model.compile(aggregator=...).")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}


def sum_of_losses_gradient(inputs: AggregatorInputs) -> tf.Tensor:
    """The representation gradient of Σ_k L_k: Σ_k G[:, k] / B (linear scalarization)."""
    if inputs.task_gradients is None:
        raise ValueError("sum_of_losses_gradient needs task_gradients; set needs_task_gradients = True.")
    batch = tf.cast(inputs.batch_size, inputs.task_gradients.dtype)
    return tf.reduce_sum(inputs.task_gradients, axis=1) / batch
