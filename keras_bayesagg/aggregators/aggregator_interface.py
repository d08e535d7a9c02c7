"""The `Aggregator` base class: the interface every method implements (see `keras_bayesagg.aggregators.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from keras_bayesagg.aggregators.base import AggregatorInputs, TaskLayout
    from keras_bayesagg.aggregators.decisions import Aggregation

SEED_STATE_PREFIX = "seed_generator_state_"


def implements_aggregate(cls: type) -> bool:
    """True when `cls` (an Aggregator subclass) overrides `aggregate`, i.e. is a method and not the bare interface."""
    return cls.aggregate is not Aggregator.aggregate


def bare_interface_message(cls: type) -> str:
    """The error for an aggregator that does not implement `aggregate` (the bare interface, or a subclass without it)."""
    return (
        f"{cls.__name__} does not implement aggregate(inputs): kb.interface.Aggregator is the interface, not a method. "
        "Pass a method from kb.aggregators (e.g. kb.BayesAgg() or kb.aggregators.LinearScalarization()), or subclass "
        "Aggregator and implement aggregate (docs/architecture.md, 'Adding an aggregator')."
    )


class Aggregator(keras.layers.Layer):
    """Base class: subclasses implement `aggregate` and, if they keep state, `build_state`."""

    needs_task_gradients: bool = False
    needs_parameter_gradients: bool = False
    needs_epoch_hooks: bool = False  # True: `model.end_epoch()` must run (loops without fit get a warning)
    # True: under R > 1 replicas the engine hands it `inputs.rows`, and the gradient of its
    # `RepresentationAggregation` holds this replica's rows only (per-row work split over the replicas; task
    # weights and faults summed over replicas with `inputs.sum_over_replicas`). False: the gradient of the
    # whole global batch, of which the engine keeps this replica's rows (docs/distributed.md).
    computes_own_rows: bool = False

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
        """This step's decision (see the module docstring); every method implements it."""
        raise NotImplementedError(bare_interface_message(type(self)))

    def commit(self, aggregation: Aggregation) -> None:
        """Apply an aggregation's state writes and record its task weights (the engine calls this
        only for steps it applies)."""
        aggregation.commit()
        if aggregation.task_weights is not None:
            self.last_task_weights.assign(tf.cast(tf.reshape(aggregation.task_weights, [-1]), tf.float32))

    # Hooks around training. `fit` calls them through the model (`kb.callbacks.AggregatorHooks`);
    # a custom training loop calls `model.begin_epoch()`, `model.end_batch()`, `model.end_epoch()`.
    def check_batch_size(self, batch_size: int) -> None:
        """Before training on batches of `batch_size` (global) samples: refuse one this method cannot serve
        (BayesAgg: its memory estimate). Default: any."""

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
