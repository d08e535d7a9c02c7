"""Running the steps of one `steps_per_execution` call one by one, where Keras's fused loop cannot.

Keras 3 fuses the steps of an execution into a `tf.while_loop` with a `tf.cond` around each step.
Under strategies whose optimizer update needs a merge call (MirroredStrategy outside XLA, and
MultiWorkerMirroredStrategy on CPUs), such a cond
cannot hold the step, and any model fails with "You must feed a value for placeholder tensor"
(keras-team/keras#19246, open). There, the model runs the steps of an execution as separate calls
of one compiled step instead: callbacks and the aggregator's batch hook still run once per
`steps_per_execution` steps, at the cost of one host dispatch per step.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf


def fused_loop_unsupported(strategy: tf.distribute.Strategy, steps_per_execution: int, run_eagerly: bool) -> bool:
    """True where Keras's fused multi-step loop fails: several steps under a merge-call strategy."""
    if steps_per_execution == 1 or run_eagerly or strategy.num_replicas_in_sync == 1:
        return False
    with strategy.scope():
        return not tf.__internal__.distribute.strategy_supports_no_merge_call()


def step_by_step_function(
    strategy: tf.distribute.Strategy, step: Callable[[Any], Any], steps_per_execution: int, jit_compile: bool
) -> Callable[[Any], Any]:
    """A train function taking a distributed iterator: up to `steps_per_execution` compiled steps per call."""

    def one_step(data: Any) -> Any:
        outputs = strategy.run(step, args=(data,))
        return tf.nest.map_structure(
            lambda value: tf.reduce_mean(strategy.experimental_local_results(value), axis=0), outputs
        )

    compiled = tf.function(one_step, reduce_retracing=True, jit_compile=jit_compile)

    def function(iterator: Any) -> Any:
        logs = None
        for _ in range(steps_per_execution):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            logs = compiled(batch.get_value())
        if logs is None:
            raise StopIteration
        return logs

    return function


def install_if_needed(model: Any, force: bool = False) -> bool:
    """Give `model` a step-by-step train function where the fused loop fails; False where Keras's own works."""
    if not fused_loop_unsupported(model.distribute_strategy, model.steps_per_execution, model.run_eagerly):
        return False
    if model.train_function is None or force:
        model.train_function = step_by_step_function(
            model.distribute_strategy, model.train_step, model.steps_per_execution, bool(model.jit_compile)
        )
    return True
