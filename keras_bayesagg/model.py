"""MultiTaskModel: a shared trunk, one linear head per task, and an aggregator-driven train step.

The Keras glue only: the step's pieces live in `engine` (losses, task gradients, routing, fault
handling), `labels` (checks), the aggregators and `tasks`. See docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import tensorflow as tf

from keras_bayesagg import building, model_state, sample_weights, serving, steps, validation
from keras_bayesagg import callbacks as builtin_callbacks
from keras_bayesagg import labels as label_checks
from keras_bayesagg.aggregators.base import Aggregator, TaskLayout
from keras_bayesagg.compiling import CompiledParts, check_compile_arguments, resolve_aggregator, resolve_metrics
from keras_bayesagg.engine import global_batch, step_by_step
from keras_bayesagg.engine.faults import FaultRecord
from keras_bayesagg.heads import LinearHead
from keras_bayesagg.tasks import Task, check_task_dict, deserialize_task, serialize_task


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class MultiTaskModel(keras.Model):
    """A shared trunk (x → h ∈ R^D) plus one linear head per task.

    `predict` and the exported `serve` endpoint return a dict: regression values, binary
    probabilities (sigmoid) and class probabilities (softmax). Training combines the task
    gradients w.r.t. h with the aggregator given to `compile` (linear scalarization by default).
    Logs hold `loss` (the sum of all task-unit losses plus regularization) and `<task>_loss`.
    A step with labels that do not fit, or non-finite values, makes no update (see `raise_for_faults`).

    `uncertainty_state_mb`: the largest served state (posterior covariance) a head gets, in MB; every head has
    one whatever the aggregator, so the weight list depends on the tasks alone (a Multiclass(C) head's dense one
    is (C(D+1))² floats: over the limit it gets the Kronecker-factored form, C² + (D+1)² + C(D+1) floats; a head
    over the limit in every form serves no uncertainty). None: no limit.
    """

    def __init__(
        self,
        trunk: keras.layers.Layer,
        tasks: Mapping[str, Task],
        uncertainty_state_mb: float | None = 64.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(trunk, keras.layers.Layer):
            raise TypeError(
                f"trunk must be a Keras layer or model mapping x to a representation h; got {type(trunk).__name__}."
            )
        check_task_dict(tasks)
        validation.check_log_keys(list(tasks))  # e.g. "a" and "val_a" would share the log key val_a_loss
        self.trunk = trunk
        self.task_specs: dict[str, Task] = dict(tasks)
        self.uncertainty_state_mb = validation.optional_positive_float(
            "MultiTaskModel", "uncertainty_state_mb", uncertainty_state_mb
        )
        self.heads = {
            name: LinearHead(task.units, kind=task.kind, uncertainty_state_mb=self.uncertainty_state_mb, name=name)
            for name, task in self.task_specs.items()
        }
        self.epoch_hooks = model_state.EpochHooks()
        self.task_loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in self.task_specs}
        self.representation_dim: int | None = None
        self._compiled_parts: CompiledParts | None = None

    # ------------------------------------------------------------------ structure
    @property
    def aggregator(self) -> Aggregator | None:
        """The aggregator given to `compile` (None before compile)."""
        return self._compiled_parts.aggregator if self._compiled_parts else None

    @property
    def task_layout(self) -> TaskLayout:
        if self.representation_dim is None:
            raise ValueError("The model is not built yet: call it on data or fit it first.")
        return TaskLayout(dict(self.task_specs), self.representation_dim, building.parameter_count(self.trunk))

    def build(self, input_shape: Any) -> None:
        self.representation_dim = building.representation_dim(self.trunk, input_shape, self.compute_dtype)
        for head in self.heads.values():
            if not head.built:
                head.build((None, self.representation_dim))
        self.built = True
        if self.aggregator is not None:
            self._prepare_training_state()

    def _prepare_training_state(self) -> None:
        """Create the aggregator's state, the heads it overrides, the fault record and the optimizer's
        slots, before the first step (under the model's tf.distribute strategy)."""
        global_batch.isolate_collective_keys(self.distribute_strategy)  # several strategies in one process
        with self.distribute_strategy.scope():
            self.aggregator.build_for(self.task_layout)
            self.aggregator.use_served_state({name: head.served for name, head in self.heads.items()})
            if self._compiled_parts.faults is None:
                self._compiled_parts.faults = FaultRecord()
            if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables + list(self.aggregator.trainable_variables))

    def _representation(self, inputs: Any, training: bool | None) -> tf.Tensor:
        h = self.trunk(inputs, training=training)
        if not isinstance(h, (tf.Tensor, keras.KerasTensor)) or len(h.shape) != 2:
            raise ValueError(
                f"The trunk must return one rank-2 tensor (batch, D); got {getattr(h, 'shape', type(h).__name__)}."
            )
        return h

    def _logits(self, h: tf.Tensor) -> dict[str, tf.Tensor]:
        return {name: head(h) for name, head in self.heads.items()}

    def _predictions(self, logits: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {name: task.predictions(logits[name]) for name, task in self.task_specs.items()}

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        return self._predictions(self._logits(self._representation(inputs, training)))

    def head_weights(self) -> dict[str, tf.Tensor]:
        """Every head as W [units, D+1] (bias last), as aggregators see it."""
        return {name: head.weight_matrix() for name, head in self.heads.items()}

    # ------------------------------------------------------------------ compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        aggregator: Aggregator | str | dict | None = None,
        metrics: Mapping[str, Any] | None = None,
        **keras_arguments: Any,
    ) -> None:
        """Keras's `compile` plus `aggregator=`; losses come from the task kinds."""
        check_compile_arguments(keras_arguments)
        aggregator = resolve_aggregator(aggregator)
        keras_arguments["weighted_metrics"] = resolve_metrics(
            self.task_specs, keras_arguments.get("weighted_metrics"), "weighted_metrics"
        )
        metrics = resolve_metrics(self.task_specs, metrics, "metrics")
        validation.check_log_keys(list(self.task_specs), metrics, keras_arguments["weighted_metrics"])
        super().compile(optimizer=optimizer, metrics=metrics, **keras_arguments)
        self._compiled_parts = CompiledParts(aggregator)
        if self.representation_dim is not None:
            self._prepare_training_state()
            model_state.follow_aggregator(self, aggregator)

    def get_compile_config(self) -> dict[str, Any]:
        config = super().get_compile_config() if self.compiled else None
        if not config:
            return {}
        config = {key: value for key, value in config.items() if key not in ("loss", "loss_weights")}
        return {**config, "aggregator": keras.saving.serialize_keras_object(self.aggregator)}

    def compile_from_config(self, config: dict[str, Any]) -> None:
        self.compile(**keras.saving.deserialize_keras_object(config))

    # ------------------------------------------------------------------ steps (keras_bayesagg/steps.py)
    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        return steps.train_step(self, data)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        return steps.test_step(self, data)

    # ------------------------------------------------------------------ hooks (fit calls them; custom loops too)
    def begin_epoch(self) -> None:
        """Before each training epoch (`fit` calls it; call it yourself in a loop of `train_on_batch`)."""
        self.epoch_hooks.began()
        self.aggregator.begin_epoch()

    def end_batch(self) -> None:
        """After each train step: report a skipped step (raises), then the aggregator's batch hook."""
        self.raise_for_faults()
        self.aggregator.end_batch()

    def end_epoch(self) -> None:
        """After each training epoch: the aggregator's epoch hook (BayesAgg's refresh), then the head overrides
        it asks for. `fit` calls it before validating; in a loop of `train_on_batch`, call it after each pass."""
        self.epoch_hooks.ended()
        self.aggregator.end_epoch(self.head_weights())
        for name, kernel in self.aggregator.head_overrides().items():
            self.heads[name].set_override(kernel)

    def raise_for_faults(self) -> None:
        """Raise (once) the first fault since the last call: the step that saw it made no update.

        A ValueError naming the task for labels that do not fit; a FloatingPointError for
        non-finite inputs, losses or gradients and failed posteriors (the error is both).
        """
        if self._compiled_parts and self._compiled_parts.faults is not None:
            self._compiled_parts.faults.raise_if_any()

    # ------------------------------------------------------------------ fit / evaluate
    def fit(self, x: Any = None, *args: Any, callbacks: Any = None, validation_data: Any = None, **kwargs: Any) -> Any:
        """Keras's `fit`; `class_weight={task: {class: weight}}` per Multiclass / Binary task (docs/contract.md)."""
        kwargs, validation_data = sample_weights.fit_arguments(self, validation_data, kwargs)
        if not self.built and building.input_spec_of(x) is not None:
            building.build_symbolically(self, building.input_spec_of(x))
        validation.check_numeric_labels(list(self.task_specs), kwargs.get("y", args[0] if args else None))
        batch = building.known_batch_size(x, kwargs.get("batch_size", args[1] if len(args) > 1 else None))
        if batch is not None and self.aggregator is not None and self.aggregator.built:
            self.aggregator.check_batch_size(batch)  # BayesAgg's memory estimate at the batch it will see
        spec = label_checks.validation_label_spec(validation_data)
        validation.check_numeric_labels(list(self.task_specs), spec, "The validation labels")
        if spec is not None:
            label_checks.check_label_spec(self.task_specs, spec, "validation_data")
        callbacks = builtin_callbacks.with_builtin_callbacks(self, callbacks, training=True)
        return super().fit(x, *args, callbacks=callbacks, validation_data=validation_data, **kwargs)

    def finish_epoch(self) -> None:
        """The pending epoch end of `fit` (once per epoch): before validation, or at `on_epoch_end` without one."""
        if self.epoch_hooks.take_pending():
            self.end_epoch()

    def evaluate(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        validation.check_numeric_labels(list(self.task_specs), kwargs.get("y", args[1] if len(args) > 1 else None))
        kwargs = sample_weights.keras_arguments(self.task_specs, kwargs)
        if model_state.is_fit_validation(self, callbacks):
            self.finish_epoch()  # val_* then describe the model the epoch leaves (Keras validates before on_epoch_end)
        return super().evaluate(
            *args, callbacks=builtin_callbacks.with_builtin_callbacks(self, callbacks, training=False), **kwargs
        )

    def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        """Keras's `train_on_batch`, then the batch hook `fit` would run (a skipped step raises here)."""
        logs = super().train_on_batch(*args, **kwargs)
        self.end_batch()
        self.epoch_hooks.count_step(self.aggregator)
        return logs

    def make_train_function(self, force: bool = False) -> Any:
        if not step_by_step.install_if_needed(self, force):  # where Keras's fused loop fails (engine/step_by_step.py)
            return super().make_train_function(force)
        return self.train_function

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras's version fails on MultiWorkerMirroredStrategy (keras-team/keras#20585); see first_replica_batch.
        super()._maybe_symbolic_build(**building.symbolic_build_arguments(self, iterator, data_batch))

    # ------------------------------------------------------------------ uncertainty (keras_bayesagg/serving.py)
    def predict_with_uncertainty(self, x: Any, batch_size: int | None = None) -> dict[str, Any]:
        """{"<task>/mean", "<task>/variance"} (regression), {"<task>/probabilities", "<task>/entropy"}
        (binary, multiclass) as arrays, from BayesAgg's full-data posterior; see docs/uncertainty.md."""
        return serving.predict_with_uncertainty(self, x, batch_size)

    def export(self, filepath: Any, format: str = "tf_saved_model", verbose: bool = False, **kwargs: Any) -> None:
        """Keras's export; a SavedModel also gets `serve_with_uncertainty` when available (`serving.export`).
        Quiet by default (Keras lists every captured variable); `verbose=True` prints that listing."""
        if format != "tf_saved_model":
            return super().export(filepath, format=format, verbose=verbose, **kwargs)
        serving.export(self, filepath, verbose=verbose, **kwargs)

    # ------------------------------------------------------------------ TensorFlow checkpoints
    def _trackable_children(self, save_type: str = "checkpoint", **kwargs: Any) -> dict[str, Any]:
        # Keras's tracked dict of heads is no TensorFlow trackable: name each head (and, in checkpoints, the
        # aggregator's training state) so tf.train.Checkpoint(model=...) holds the whole model.
        children = dict(super()._trackable_children(save_type, **kwargs))
        children.update({f"head_{name}": head for name, head in self.heads.items()})
        if save_type == "checkpoint" and self.aggregator is not None:
            children["aggregator"] = self.aggregator
        return children

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trunk": keras.saving.serialize_keras_object(self.trunk),
            "tasks": {name: serialize_task(task) for name, task in self.task_specs.items()},
            "uncertainty_state_mb": self.uncertainty_state_mb,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> "MultiTaskModel":
        trunk = keras.saving.deserialize_keras_object(config["trunk"], custom_objects=custom_objects)
        tasks = {name: deserialize_task(task) for name, task in config["tasks"].items()}
        limit = config.get("uncertainty_state_mb", 64.0)  # files before 0.3.0: the default
        return cls(trunk, tasks, uncertainty_state_mb=limit, name=config.get("name"))
