"""The one small interface every aggregator implements.

An aggregator decides how the task gradients w.r.t. the shared representation h combine before
they reach the trunk. It sees tensors only (no Keras layers, no model). Each train step:

1. the engine computes, per task unit k, the loss L_k (mean over the batch, differentiable) and,
   if asked, the exact per-sample gradients G[i, k] = ∂ℓ_ik/∂h_i or the per-unit parameter
   gradients ∂L_k/∂θ;
2. `aggregate(inputs)` returns one of three kinds of `Aggregation`:
   `ObjectiveAggregation` (train the trunk on this objective), `RepresentationAggregation`
   (back-propagate this [B, D] gradient from h) or `ParameterAggregation` (use this flattened
   trunk gradient). Heads and the aggregator's own trainable variables always train on the
   objective;
3. the engine applies the update, and then `aggregation.commit()` (the aggregator's state writes),
   only if the step is sound; the aggregation's `faults` are part of that check.

Aggregators are Keras layers only to own Keras variables (saved in `.keras` files and weight
checkpoints, created before `fit` so XLA works); they are never called on data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import keras
import tensorflow as tf

from keras_bayesagg.engine.faults import Fault
from keras_bayesagg.tasks import Task

SEED_STATE_PREFIX = "seed_generator_state_"


@dataclasses.dataclass(frozen=True)
class TaskUnit:
    """One task in the aggregation sense: an output of a regression/binary head, or a multiclass head."""

    name: str  # e.g. "age", "attributes[3]"
    task: str  # key in the model's task dict
    kind: str  # "regression" | "binary" | "multiclass" (for display; code uses the Task classes)
    output: int | None  # output index in the head (None for a multiclass head)


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """The model's tasks as seen by an aggregator, in a fixed order."""

    tasks: dict[str, Task]
    representation_dim: int

    @property
    def units(self) -> tuple[TaskUnit, ...]:
        return tuple(
            TaskUnit(unit, name, task.kind, output)
            for name, task in self.tasks.items()
            for unit, output in task.unit_outputs(name)
        )

    @property
    def num_units(self) -> int:
        return sum(task.num_task_units for task in self.tasks.values())

    def unit_slice(self, task_name: str) -> slice:
        """The columns of `task_name` among the K task units."""
        start = 0
        for name, task in self.tasks.items():
            if name == task_name:
                return slice(start, start + task.num_task_units)
            start += task.num_task_units
        raise KeyError(task_name)

    def unit_columns(self, task_names: Sequence[str]) -> tuple[int, ...]:
        """The columns of these tasks' units among the K task units, in the order given."""
        return tuple(column for name in task_names for column in range(*self.unit_slice(name).indices(self.num_units)))

    def names_of(self, kind: type[Task]) -> list[str]:
        """Task names of one kind (a Task class), in layout order."""
        return [name for name, task in self.tasks.items() if isinstance(task, kind)]


@dataclasses.dataclass(frozen=True)
class AggregatorInputs:
    """What one train step hands to `Aggregator.aggregate` (tensors only).

    losses: [K] loss per task unit, the mean over the unit's present labels (differentiable: computed
        under the tape).
    representation: h, [B, D] float32, without gradient (the trunk is reached through the result).
    task_gradients: [B, K, D] per-sample ∂ℓ_ik/∂h_i (not divided by B; zero where the label is
        missing), or None unless `needs_task_gradients`. ∂L_k/∂h_i is `loss_gradients()`.
    labels: per task name, canonical float32 labels ([B, units]; multiclass as probability rows),
        with a finite placeholder where the label is missing.
    head_weights: per task name, the head as W [units, D+1] (bias last), float32, no gradient.
    parameter_gradients: [K, P] ∂L_k/∂θ for the trunk's trainable variables, flattened in
        `trunk.trainable_variables` order, or None unless `needs_parameter_gradients`.
    present: [B, K] float32, 1 where the label of (sample i, unit k) is given, 0 where it is missing
        (the engine always sets it; None, e.g. in hand-made inputs, means every label is present).
    """

    losses: tf.Tensor
    representation: tf.Tensor
    task_gradients: tf.Tensor | None
    labels: Mapping[str, tf.Tensor]
    head_weights: Mapping[str, tf.Tensor]
    parameter_gradients: tf.Tensor | None = None
    present: tf.Tensor | None = None

    @property
    def batch_size(self) -> tf.Tensor:
        return tf.shape(self.representation)[0]

    def presence(self) -> tf.Tensor:
        """`present`, or all ones [B, K] when it is None."""
        if self.present is not None:
            return tf.cast(self.present, tf.float32)
        rows = self.batch_size if self.task_gradients is None else tf.shape(self.task_gradients)[0]
        return tf.ones([rows, tf.shape(self.losses)[0]], tf.float32)

    def unit_counts(self) -> tf.Tensor:
        """n_k = max(Σ_i present_ik, 1) [K] float32: the denominators of the unit losses."""
        return tf.maximum(tf.reduce_sum(self.presence(), axis=0), 1.0)

    def loss_gradients(self) -> tf.Tensor:
        """∂L_k/∂h_i = G[i, k] / n_k: [B, K, D] (G[:, k] / B when every label is present)."""
        if self.task_gradients is None:
            raise ValueError("loss_gradients needs task_gradients; set needs_task_gradients = True.")
        counts = tf.cast(self.unit_counts(), self.task_gradients.dtype)
        return self.task_gradients / counts[None, :, None]


def labelled_samples(present: tf.Tensor) -> tf.Tensor:
    """How many rows of `present` [B, k] have at least one present label: a float32 scalar."""
    return tf.reduce_sum(tf.reduce_max(tf.cast(present, tf.float32), axis=1))


def _no_commit() -> None:
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Aggregation:
    """What an aggregator decides for one step (use one of the three subclasses).

    objective: scalar; its gradient trains the heads and the aggregator's trainable variables.
    task_weights: [K], the weight each task unit got (logs, `TaskWeightHistory`), or None.
    commit: the aggregator's state writes for this step; the engine calls it only if the step
        is applied, so a skipped step leaves the aggregator's statistics untouched.
    faults: in-graph checks of the aggregator (e.g. a posterior that could not be factored);
        any failed one skips the step and is reported with its message.
    """

    objective: tf.Tensor
    task_weights: tf.Tensor | None = None
    commit: Callable[[], Any] = _no_commit
    faults: tuple[Fault, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveAggregation(Aggregation):
    """Train the trunk on `objective` too (loss-weighting methods)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RepresentationAggregation(Aggregation):
    """Back-propagate `representation_gradient` [B, D] from h into the trunk: a batch-mean gradient (already
    divided by B, or per unit by its present-label count n_k as in `AggregatorInputs.loss_gradients`)."""

    representation_gradient: tf.Tensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParameterAggregation(Aggregation):
    """Use `parameter_gradient` [P] (layout of `AggregatorInputs.parameter_gradients`) for the trunk."""

    parameter_gradient: tf.Tensor


def peek_seeds(generator: keras.random.SeedGenerator, count: int) -> tuple[list[tf.Tensor], Callable[[], Any]]:
    """The seeds `count` calls of `generator.next()` would return, and the write that advances it.

    Aggregators advance their generators in `commit`: a skipped step leaves the generator where
    it was, so a run depends on its seed (and the steps applied) alone.
    """
    state = tf.convert_to_tensor(generator.state)
    seeds = [state + tf.constant([0, k], state.dtype) for k in range(count)]
    return seeds, lambda: generator.state.assign(state + tf.constant([0, count], state.dtype))


def peek_seed(generator: keras.random.SeedGenerator) -> tuple[tf.Tensor, Callable[[], Any]]:
    """The seed `generator.next()` would return, and the write that advances the generator."""
    (seed,), advance = peek_seeds(generator, 1)
    return seed, advance


class Aggregator(keras.layers.Layer):
    """Base class: subclasses implement `aggregate` and, if they keep state, `build_state`."""

    needs_task_gradients: bool = False
    needs_parameter_gradients: bool = False
    needs_epoch_hooks: bool = False  # True: `model.end_epoch()` must run (loops without fit get a warning)

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

    def commit(self, aggregation: Aggregation) -> None:
        """Apply an aggregation's state writes and record its task weights (the engine calls this
        only for steps it applies)."""
        aggregation.commit()
        if aggregation.task_weights is not None:
            self.last_task_weights.assign(tf.cast(tf.reshape(aggregation.task_weights, [-1]), tf.float32))

    # Hooks around training. `fit` calls them through the model (`kb.callbacks.AggregatorHooks`);
    # a custom training loop calls `model.begin_epoch()`, `model.end_batch()`, `model.end_epoch()`.
    def begin_epoch(self) -> None:
        """Before each training epoch."""

    def end_batch(self) -> None:
        """After each train step (each `steps_per_execution` call)."""

    def end_epoch(self, head_weights: Mapping[str, tf.Tensor]) -> None:
        """After each training epoch, with the heads' current weights {task: W [units, D+1]}."""

    @property
    def overridden_heads(self) -> tuple[str, ...]:
        """Tasks whose head predictions this aggregator may replace (see `head_overrides`)."""
        return ()

    def head_overrides(self) -> dict[str, tf.Tensor]:
        """{task: kernel [D, units]}: heads that should predict h·kernel (no bias) from now on."""
        return {}

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """Extra callbacks `MultiTaskModel.fit` adds by itself, beyond `AggregatorHooks`."""
        return []

    # The served state (what `predict_with_uncertainty` reads) belongs to the model's heads (served_state.py);
    # an aggregator that maintains it gets references to it and writes it (BayesAgg, at each refresh).
    def use_served_state(self, states: Mapping[str, Any]) -> None:
        """The model hands over its heads' served states {task: ServedState or None}. Default: not used."""

    @property
    def writes_served_state(self) -> bool:
        """True when this aggregator keeps the heads' served state up to date (else compile clears it)."""
        return False

    def uncertainty_missing(self) -> str | None:
        """Why the heads' served state is not written (yet). Default: this aggregator keeps no posterior."""
        return f"{type(self).__name__} keeps no posterior over the heads: compile with BayesAgg and train past its warm-up."

    def later_version_variables(self) -> list[keras.Variable]:
        """Variables added after version 0.1.0, created after all older ones: a file without them still loads."""
        return []

    def save_own_variables(self, store: Any) -> None:
        # Keras does not save SeedGenerator states; without them a reloaded model replays its draws.
        super().save_own_variables(store)
        for index, generator in enumerate(self._seed_generators):
            store[f"{SEED_STATE_PREFIX}{index}"] = generator.state

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())
        stored = [key for key in keys if not key.startswith(SEED_STATE_PREFIX)]
        own = self._trainable_variables + self._non_trainable_variables
        older_file = len(stored) < len(own) and self._lacks_only_later_variables(store, len(stored))
        if len(stored) != len(own) and not older_file:
            raise ValueError(
                f"The saved aggregator state has {len(stored)} variables but this model's {type(self).__name__} has "
                f"{len(own)}: "
                "it was saved from a model compiled with another aggregator (or other tasks). To continue that run, "
                "compile the model with the aggregator it was saved with; to take the trunk and heads alone, use "
                "model.load_weights(path, skip_mismatch=True)."
            )
        for index, generator in enumerate(self._seed_generators):
            key = f"{SEED_STATE_PREFIX}{index}"
            if key in keys:
                generator.state.assign(store[key])
        if older_file:  # the later variables keep their initial values
            for index, variable in enumerate(own[: len(stored)]):
                variable.assign(store[str(index)])
            return
        super().load_own_variables({key: store[key] for key in keys if not key.startswith(SEED_STATE_PREFIX)})

    def _lacks_only_later_variables(self, store: Any, count: int) -> bool:
        """True when the store holds this aggregator's first `count` variables (same shapes) and every
        missing one was added in a later version (files saved before those variables existed)."""
        own = self._trainable_variables + self._non_trainable_variables
        later = {id(variable) for variable in self.later_version_variables()}
        return all(id(variable) in later for variable in own[count:]) and all(
            tuple(store[str(index)].shape) == tuple(variable.shape) for index, variable in enumerate(own[:count])
        )

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is an aggregator: pass it to model.compile(aggregator=...).")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}


def sum_of_losses_gradient(inputs: AggregatorInputs) -> tf.Tensor:
    """The representation gradient of Σ_k L_k: Σ_k G[:, k] / n_k (Σ_k G[:, k] / B when fully labelled)."""
    return tf.reduce_sum(inputs.loss_gradients(), axis=1)
