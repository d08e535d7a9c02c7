"""MultiTaskModel: a shared trunk, one linear head per task, and an aggregator-driven train step."""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.aggregators.base import Aggregation, Aggregator, AggregatorInputs, TaskLayout
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization
from keras_bayesagg.callbacks import AggregatorHooks
from keras_bayesagg.tasks import BINARY, MULTICLASS, LinearHead, Task, deserialize_task, serialize_task

_COMPILE_ARGUMENTS = (
    "optimizer",
    "aggregator",
    "metrics",
    "weighted_metrics",
    "run_eagerly",
    "steps_per_execution",
    "jit_compile",
    "auto_scale_loss",
)
_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _resolve_accuracy(task: Task, metric: Any) -> Any:
    """'accuracy' means binary accuracy for a Binary set and categorical accuracy for a Multiclass head."""
    if isinstance(metric, str) and metric in ("accuracy", "acc"):
        if task.kind == BINARY:
            return keras.metrics.BinaryAccuracy(name=metric)
        if task.kind == MULTICLASS:
            return keras.metrics.CategoricalAccuracy(name=metric)
    return metric


@keras.saving.register_keras_serializable(package="keras_bayesagg")
class MultiTaskModel(keras.Model):
    """A shared trunk (x → h ∈ R^D) plus one linear head per task.

    `predict` and the exported `serve` endpoint return a dict: regression values, binary
    probabilities (sigmoid) and class probabilities (softmax). Training combines the task
    gradients w.r.t. h with the aggregator given to `compile` (linear scalarization by default).
    Logs hold `loss` (the sum of all task-unit losses plus regularization) and `<task>_loss`.
    """

    def __init__(self, trunk: keras.layers.Layer, tasks: Mapping[str, Task], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(trunk, keras.layers.Layer):
            raise TypeError(f"trunk must be a Keras layer or model mapping x to a representation h; got {type(trunk).__name__}.")
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError("tasks must be a non-empty dict {name: kb.tasks.Regression() | Binary(n) | Multiclass(n)}.")
        for name, task in tasks.items():
            if not isinstance(name, str) or not _TASK_NAME.match(name):
                raise ValueError(f"Task name {name!r} must be a string of letters, digits, '_', '.', '-' (not starting with a digit).")
            if not isinstance(task, Task):
                raise TypeError(f"Task '{name}' must be a kb.tasks.Regression, Binary or Multiclass instance; got {task!r}.")
        self.trunk = trunk
        self.task_specs: dict[str, Task] = dict(tasks)
        self.heads = {name: task.make_head(name) for name, task in self.task_specs.items()}
        self.task_loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in self.task_specs}
        # Bookkeeping, not model state: kept out of `model.weights` like the aggregator.
        object.__setattr__(
            self, "invalid_label_code", keras.Variable(0, dtype="int32", trainable=False, name="invalid_label_code")
        )
        self.representation_dim: int | None = None

    # ------------------------------------------------------------------ structure
    @property
    def aggregator(self) -> Aggregator | None:
        """The aggregator given to `compile` (None before compile)."""
        return self.__dict__.get("_aggregator")

    @property
    def task_layout(self) -> TaskLayout:
        if self.representation_dim is None:
            raise ValueError("The model is not built yet: call it on data or fit it first.")
        return TaskLayout(dict(self.task_specs), self.representation_dim)

    def build(self, input_shape: Any) -> None:
        if not self.trunk.built:
            self.trunk.build(input_shape)
        spec = self.trunk.compute_output_spec(
            keras.tree.map_shape_structure(lambda s: keras.KerasTensor(s, dtype=self.compute_dtype), input_shape)
        )
        shape = tuple(spec.shape) if hasattr(spec, "shape") else None
        if shape is None or len(shape) != 2 or shape[-1] is None:
            raise ValueError(
                "The trunk must return one rank-2 representation of shape (batch, D) with D known; "
                f"got {spec if shape is None else shape}. Add a Flatten or pooling layer at the end of the trunk."
            )
        self.representation_dim = int(shape[-1])
        for head in self.heads.values():
            if not head.built:
                head.build((None, self.representation_dim))
        self.built = True
        if self.aggregator is not None:
            self._build_aggregator_and_optimizer()

    def _representation(self, inputs: Any, training: bool | None) -> tf.Tensor:
        h = self.trunk(inputs, training=training)
        if not isinstance(h, (tf.Tensor, keras.KerasTensor)) or len(h.shape) != 2:
            raise ValueError(
                f"The trunk must return one rank-2 tensor (batch, D); got {getattr(h, 'shape', type(h).__name__)}."
            )
        return h

    def _logits(self, h: tf.Tensor) -> dict[str, tf.Tensor]:
        return {name: head(h) for name, head in self.heads.items()}

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        logits = self._logits(self._representation(inputs, training))
        return {name: task.predictions(logits[name]) for name, task in self.task_specs.items()}

    # ------------------------------------------------------------------ compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        aggregator: Aggregator | str | dict | None = None,
        metrics: Mapping[str, Any] | None = None,
        weighted_metrics: Any = None,
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        jit_compile: bool | str = "auto",
        auto_scale_loss: bool = True,
        **unknown: Any,
    ) -> None:
        """Keras's `compile` plus `aggregator=`; losses come from the task kinds."""
        if "loss" in unknown or "loss_weights" in unknown:
            raise ValueError(
                "MultiTaskModel derives each task's loss from its kind (squared error, sigmoid or softmax "
                "cross-entropy); do not pass loss= or loss_weights=. To weigh tasks, pass an aggregator."
            )
        if unknown:
            raise TypeError(
                f"MultiTaskModel.compile() got unknown argument(s) {sorted(unknown)}; it accepts {list(_COMPILE_ARGUMENTS)}."
            )
        aggregator = self._resolve_aggregator(aggregator)
        metrics = self._resolve_metrics(metrics, "metrics")
        weighted_metrics = self._resolve_metrics(weighted_metrics, "weighted_metrics")
        super().compile(
            optimizer=optimizer,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self._attach_aggregator(aggregator)
        self._compile_config.config["aggregator"] = aggregator

    def _resolve_aggregator(self, aggregator: Any) -> Aggregator:
        if aggregator is None:
            return LinearScalarization()
        if isinstance(aggregator, (str, dict)):
            aggregator = keras.saving.deserialize_keras_object(aggregator)
        if not isinstance(aggregator, Aggregator):
            raise TypeError(
                f"aggregator must be a kb.aggregators.Aggregator (e.g. kb.BayesAgg()); got {aggregator!r}."
            )
        return aggregator

    def _resolve_metrics(self, metrics: Any, argument: str) -> Any:
        if metrics is None:
            return None
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"{argument} must be a dict keyed by task name, e.g. {{'gender': ['accuracy']}}; got {metrics!r}. "
                f"Tasks: {list(self.task_specs)}."
            )
        resolved = {}
        for name, task_metrics in metrics.items():
            if name not in self.task_specs:
                raise ValueError(f"{argument} names task '{name}', which the model does not have; tasks: {list(self.task_specs)}.")
            listed = task_metrics if isinstance(task_metrics, (list, tuple)) else [task_metrics]
            resolved[name] = [_resolve_accuracy(self.task_specs[name], m) for m in listed]
        return resolved

    def _attach_aggregator(self, aggregator: Aggregator) -> None:
        """Keep the aggregator outside `model.weights` (like the optimizer) but saved with the model.

        Its variables are written to `.keras` files and weight checkpoints under `aggregator/`
        because Keras saves every saveable attribute; its trainable variables are trained by the
        model's optimizer (see `_optimizer_variables`).
        """
        object.__setattr__(self, "_aggregator", aggregator)
        if self.representation_dim is not None:
            self._build_aggregator_and_optimizer()

    def _build_aggregator_and_optimizer(self) -> None:
        """Create the aggregator's state and the optimizer's slots (under the model's tf.distribute strategy)."""
        with self.distribute_strategy.scope():
            self.aggregator.build_for(self.task_layout)
            self._build_optimizer()

    def _optimizer_variables(self) -> list[Any]:
        extra = list(self.aggregator.trainable_variables) if self.aggregator is not None else []
        return list(self.trainable_variables) + extra

    def _build_optimizer(self) -> None:
        if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
            self.optimizer.build(self._optimizer_variables())

    def get_compile_config(self) -> dict[str, Any]:
        if not (self.compiled and hasattr(self, "_compile_config")):
            return {}
        config = dict(self._compile_config.config)
        config.pop("loss", None)
        config.pop("loss_weights", None)
        return keras.saving.serialize_keras_object(config)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            with self.distribute_strategy.scope():
                self._build_optimizer()

    # ------------------------------------------------------------------ labels
    def _prepare_labels(self, y: Any) -> dict[str, tf.Tensor]:
        if not isinstance(y, Mapping):
            raise ValueError(
                f"MultiTaskModel expects labels as a dict {{task name: labels}} for tasks {list(self.task_specs)}; "
                f"got {type(y).__name__}."
            )
        missing = [name for name in self.task_specs if name not in y]
        if missing:
            raise ValueError(f"The batch has no labels for task(s) {missing}; every batch needs labels for {list(self.task_specs)}.")
        extra = [name for name in y if name not in self.task_specs]
        if extra:
            raise ValueError(f"The batch has labels for unknown task(s) {extra}; the model's tasks are {list(self.task_specs)}.")
        return {name: task.prepare_labels(name, y[name]) for name, task in self.task_specs.items()}

    def _flag_invalid_labels(self, labels: dict[str, tf.Tensor]) -> tf.Tensor:
        """Record the first task whose label values do not fit (checked by a callback); True if all fit."""
        code = tf.constant(0, tf.int32)
        for index, (name, task) in reversed(list(enumerate(self.task_specs.items()))):
            code = tf.where(task.labels_valid(labels[name]), code, index + 1)
        first_bad = tf.where(self.invalid_label_code > 0, self.invalid_label_code, code)
        self.invalid_label_code.assign(first_bad)
        return tf.equal(first_bad, 0)

    def raise_for_invalid_labels(self) -> None:
        """Raise (once) if a step saw label values that do not fit their task; that step made no update."""
        code = int(self.invalid_label_code.numpy())
        if code:
            self.invalid_label_code.assign(0)
            name, task = list(self.task_specs.items())[code - 1]
            raise ValueError(
                f"Task '{name}' ({task.describe()}) got label values that do not fit it: {task.value_expectation()}. "
                "The step that saw them made no update."
            )

    # ------------------------------------------------------------------ steps
    def _task_losses(self, labels: dict[str, tf.Tensor], logits: dict[str, tf.Tensor]) -> tf.Tensor:
        """Per-sample loss of every task unit, [B, K], in layout order."""
        return tf.concat(
            [task.per_sample_losses(labels[name], logits[name]) for name, task in self.task_specs.items()], axis=1
        )

    def _task_gradients(self, labels: dict[str, tf.Tensor], logits: dict[str, tf.Tensor]) -> tf.Tensor:
        """Per-sample ∂ℓ_ik/∂h_i, [B, K, D], exact for linear heads (no extra backward pass)."""
        pieces = []
        for name, task in self.task_specs.items():
            kernel, _ = self.heads[name].effective_kernel_and_bias()
            residuals = task.logit_gradients(labels[name], tf.stop_gradient(logits[name]))
            pieces.append(task.representation_gradients(residuals, tf.stop_gradient(tf.convert_to_tensor(kernel))))
        return tf.concat(pieces, axis=1)

    def _update_loss_trackers(self, unit_losses: tf.Tensor, total: tf.Tensor, batch_size: tf.Tensor) -> None:
        layout = self.task_layout
        for name in self.task_specs:
            self.task_loss_trackers[name].update_state(tf.reduce_sum(unit_losses[layout.unit_slice(name)]), sample_weight=batch_size)
        self._loss_tracker.update_state(total, sample_weight=batch_size)

    def _ensure_built(self, x: Any) -> None:
        """On the TensorFlow backend Keras builds a subclassed model in its first traced step."""
        if not self.built:
            self._build_symbolically(keras.tree.map_structure(lambda t: _InputSpec(tuple(t.shape), t.dtype), x))

    def _build_symbolically(self, specs: Any) -> None:
        """Build by one symbolic call, so Keras records the input signature `export` needs."""
        with self.distribute_strategy.scope():
            self(_map_specs(specs))

    def _unpack_batch(self, data: Any) -> tuple[Any, dict[str, tf.Tensor]]:
        """(x, canonical labels) of a batch, building the model on first use."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._ensure_built(x)
        if sample_weight is not None:
            raise ValueError("MultiTaskModel does not support sample_weight / class_weight yet; weigh tasks with an aggregator.")
        return x, self._prepare_labels(y)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, labels = self._unpack_batch(data)
        labels_ok = self._flag_invalid_labels(labels)
        aggregator = self.aggregator
        trunk_variables = list(self.trunk.trainable_variables)
        head_variables = [v for head in self.heads.values() for v in head.trainable_variables]
        aggregator_variables = list(aggregator.trainable_variables)

        with tf.GradientTape(persistent=True) as tape:
            h = self._representation(x, training=True)
            h32 = tf.cast(h, tf.float32)
            logits = self._logits(h32)
            per_sample = self._task_losses(labels, logits)
            unit_losses = tf.reduce_mean(per_sample, axis=0)
            task_gradients = self._task_gradients(labels, logits) if aggregator.needs_task_gradients else None
            parameter_gradients = None
            if aggregator.needs_parameter_gradients:
                per_unit_losses = tf.unstack(unit_losses)
                with tape.stop_recording():
                    parameter_gradients = _per_unit_parameter_gradients(tape, per_unit_losses, trunk_variables)
            aggregation: Aggregation = aggregator.aggregate(
                AggregatorInputs(
                    losses=unit_losses,
                    representation=tf.stop_gradient(h32),
                    task_gradients=task_gradients,
                    labels=labels,
                    logits=logits,
                    heads=dict(self.heads),
                    parameter_gradients=parameter_gradients,
                )
            )
            regularization = tf.add_n([tf.cast(l, tf.float32) for l in self.losses]) if self.losses else None
            objective = aggregation.objective if regularization is None else aggregation.objective + regularization
            # Loss scaling of mixed precision, and 1/replicas as Keras does under tf.distribute
            # (replica gradients are summed).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss_scale = self.optimizer.scale_loss(tf.constant(1.0 / replicas))
            scaled_objective = objective * loss_scale

        if aggregation.parameter_gradient is not None:
            variables = head_variables + aggregator_variables + trunk_variables
            gradients = tape.gradient(scaled_objective, head_variables + aggregator_variables)
            trunk_gradients = _unflatten(aggregation.parameter_gradient * loss_scale, trunk_variables)
            if regularization is not None:
                extra = tape.gradient(regularization * loss_scale, trunk_variables)
                trunk_gradients = [g if e is None else g + tf.cast(e, g.dtype) for g, e in zip(trunk_gradients, extra)]
            gradients += trunk_gradients
        elif aggregation.representation_gradient is None:
            variables = trunk_variables + head_variables + aggregator_variables
            gradients = tape.gradient(scaled_objective, variables)
        else:
            variables = head_variables + aggregator_variables + trunk_variables
            gradients = tape.gradient(scaled_objective, head_variables + aggregator_variables)
            targets, output_gradients = [h], [tf.cast(aggregation.representation_gradient * loss_scale, h.dtype)]
            if regularization is not None:
                targets.append(regularization)
                output_gradients.append(tf.cast(loss_scale, regularization.dtype))
            gradients += tape.gradient(targets, trunk_variables, output_gradients=output_gradients)
        del tape

        # A step with labels that do not fit their task makes no update (the callback then raises).
        if tf.distribute.has_strategy():
            # TF cannot put the optimizer's cross-replica sync inside a cond: the step is made with
            # zero gradients instead (momentum may still move the weights a little).
            gradients = [None if g is None else tf.where(labels_ok, g, tf.zeros_like(g)) for g in gradients]
            self.optimizer.apply_gradients(zip(gradients, variables))
        else:

            def apply() -> tf.Tensor:
                self.optimizer.apply_gradients(zip(gradients, variables))
                return tf.constant(True)

            tf.cond(labels_ok, apply, lambda: tf.constant(False))
        aggregator.record_task_weights(aggregation.task_weights)

        batch_size = tf.shape(h)[0]
        total = tf.reduce_sum(unit_losses) + (0.0 if regularization is None else regularization)
        self._update_loss_trackers(unit_losses, total, batch_size)
        return self.compute_metrics(x, labels, self._predictions_from_logits(logits), sample_weight=None)

    def _predictions_from_logits(self, logits: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {name: task.predictions(logits[name]) for name, task in self.task_specs.items()}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, labels = self._unpack_batch(data)
        self._flag_invalid_labels(labels)
        h = self._representation(x, training=False)
        logits = self._logits(tf.cast(h, tf.float32))
        unit_losses = tf.reduce_mean(self._task_losses(labels, logits), axis=0)
        regularization = tf.add_n([tf.cast(l, tf.float32) for l in self.losses]) if self.losses else 0.0
        self._update_loss_trackers(unit_losses, tf.reduce_sum(unit_losses) + regularization, tf.shape(h)[0])
        return self.compute_metrics(x, labels, self._predictions_from_logits(logits), sample_weight=None)

    # ------------------------------------------------------------------ fit / evaluate
    def _with_builtin_callbacks(self, callbacks: Any, training: bool) -> Any:
        """The model's own callbacks go first: a bad step raises before user callbacks see it, and
        the epoch-end prior refresh happens before checkpoints are written."""
        builtin: list[keras.callbacks.Callback] = [_LabelGuard()]
        if training and self.aggregator is not None:
            builtin = builtin + [AggregatorHooks(self.aggregator)] + self.aggregator.callbacks()
        if callbacks is None:
            return builtin
        if isinstance(callbacks, keras.callbacks.CallbackList):
            for callback in builtin:
                callback.set_model(self)
            callbacks.callbacks[:0] = builtin
            return callbacks
        return builtin + list(callbacks)

    def _build_from_data(self, x: Any) -> None:
        """Build before `fit` when the input shape is visible, so callbacks see built state."""
        if self.built or x is None:
            return
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            self._build_symbolically(keras.tree.map_structure(lambda s: _InputSpec(tuple(s.shape), s.dtype), spec))
        elif hasattr(x, "shape") and hasattr(x, "dtype"):
            self._build_symbolically(_InputSpec((None,) + tuple(x.shape[1:]), x.dtype))

    def fit(self, x: Any = None, *args: Any, callbacks: Any = None, **kwargs: Any) -> keras.callbacks.History:
        self._build_from_data(x)
        return super().fit(x, *args, callbacks=self._with_builtin_callbacks(callbacks, training=True), **kwargs)

    def evaluate(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        return super().evaluate(*args, callbacks=self._with_builtin_callbacks(callbacks, training=False), **kwargs)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trunk": keras.saving.serialize_keras_object(self.trunk),
            "tasks": {name: serialize_task(task) for name, task in self.task_specs.items()},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> "MultiTaskModel":
        trunk = keras.saving.deserialize_keras_object(config["trunk"], custom_objects=custom_objects)
        tasks = {name: deserialize_task(task) for name, task in config["tasks"].items()}
        return cls(trunk, tasks, name=config.get("name"))


class _InputSpec(NamedTuple):
    shape: tuple[int | None, ...]
    dtype: Any


def _map_specs(specs: Any) -> Any:
    """`_InputSpec`s, possibly nested in dicts/lists, to KerasTensors with a free batch size."""
    if isinstance(specs, _InputSpec):
        shape, dtype = specs
        return keras.KerasTensor((None,) + tuple(shape[1:]), dtype=keras.backend.standardize_dtype(tf.as_dtype(dtype).name))
    if isinstance(specs, dict):
        return {key: _map_specs(value) for key, value in specs.items()}
    if isinstance(specs, (list, tuple)):
        return type(specs)(_map_specs(value) for value in specs)
    raise TypeError(f"Cannot build MultiTaskModel from inputs described as {specs!r}.")


def _per_unit_parameter_gradients(
    tape: tf.GradientTape, unit_losses: list[tf.Tensor], variables: list[tf.Variable]
) -> tf.Tensor:
    """[K, P]: the gradient of each task unit's loss w.r.t. all `variables`, flattened."""
    rows = []
    for loss in unit_losses:
        gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        rows.append(tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in gradients], axis=0))
    return tf.stack(rows)


def _unflatten(flat: tf.Tensor, variables: list[tf.Variable]) -> list[tf.Tensor]:
    pieces, start = [], 0
    for variable in variables:
        size = int(np.prod(variable.shape))
        pieces.append(tf.cast(tf.reshape(flat[start : start + size], variable.shape), variable.dtype))
        start += size
    return pieces


class _LabelGuard(keras.callbacks.Callback):
    """Raises the clear label error right after the step that saw bad label values."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.raise_for_invalid_labels()

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.raise_for_invalid_labels()
