"""Faults of a step: which checks failed, the record of the first one, and skipping the update.

A step is *sound* when its labels fit their tasks, its input/representation, losses and
gradients are finite, and its aggregator reports no failure. An unsound step makes no update at
all: `apply_if` runs the optimizer and the aggregator's state writes only when the step is sound
on every replica (the way Keras's `LossScaleOptimizer` skips non-finite steps in-graph). The
first fault is kept in a `FaultRecord` until `raise_if_any()` reports it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import keras
import tensorflow as tf


class Fault(NamedTuple):
    """One in-graph check: `failed` is a scalar bool tensor; `message` says what it means."""

    failed: tf.Tensor
    message: str


class StepFault(FloatingPointError, ValueError):
    """A training or evaluation step was unsound and made no update (a ValueError for bad labels,
    a FloatingPointError for non-finite values: both `except` clauses catch it)."""


def first_fault_code(failed: Sequence[tf.Tensor]) -> tf.Tensor:
    """0 when no check failed (on any replica), else 1 + the index of the first failed check (int32 scalar)."""
    if not failed:
        return tf.constant(0, tf.int32)
    flags = agree_across_replicas(tf.stack([tf.reshape(tf.cast(f, tf.bool), []) for f in failed]))
    first = tf.argmax(tf.cast(flags, tf.int32), output_type=tf.int32)
    return tf.where(tf.reduce_any(flags), first + 1, 0)


def all_finite(tensors: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """True when every element of every (non-None) tensor is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def agree_across_replicas(flags: tf.Tensor) -> tf.Tensor:
    """Each check failed on some replica (bool vector), so that every replica skips the same steps."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return flags
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(flags, tf.float32)) > 0


class FaultRecord:
    """The first fault code seen since the last report, in a Keras variable (works under XLA).

    Not model state: it is kept out of `model.weights` and is not saved.
    """

    def __init__(self) -> None:
        self.code = keras.Variable(
            0, dtype="int32", trainable=False, name="fault_code", aggregation="only_first_replica"
        )
        self.messages: list[str] = []

    def record(self, faults: Sequence[Fault]) -> tf.Tensor:
        """Record the first failed check of this step (keeping an earlier unreported one); its code."""
        self.messages = [fault.message for fault in faults]
        code = first_fault_code([fault.failed for fault in faults])
        self.code.assign(tf.where(tf.equal(self.code, 0), code, self.code))
        return code

    def sound(self, faults: Sequence[Fault], blocks_rest: bool) -> tf.Tensor:
        """Record this step's faults; True when the step may be applied. With `blocks_rest`
        (steps_per_execution > 1) a fault recorded earlier in the execution also blocks this step,
        so the error describes the model as it is."""
        earlier = tf.not_equal(self.code, 0) if blocks_rest else tf.constant(False)
        return tf.equal(self.record(faults), 0) & ~earlier

    def pending(self) -> bool:
        return int(self.code.numpy()) != 0

    def raise_if_any(self) -> None:
        """Raise the recorded fault once (and clear it), so the next step starts clean."""
        code = int(self.code.numpy())
        if not code:
            return
        self.code.assign(0)
        message = self.messages[code - 1] if code <= len(self.messages) else f"fault code {code}"
        raise StepFault(f"{message} That step made no update.")


def apply_if(
    sound: tf.Tensor, apply: Callable[[Any], Any], gradients: Any, commit: Callable[[], Any] | None = None
) -> None:
    """Run `apply(gradients)` (the optimizer update) and `commit()` (aggregator state) only if `sound`.

    `sound` must be the same on every replica. On one device (and strategies without merge calls)
    both run in one `tf.cond`. Under strategies whose optimizer update needs a merge call (e.g.
    MirroredStrategy), the cond moves to the cross-replica context, where each replica's update
    runs in `call_for_each_replica` (TensorFlow cannot merge inside a replica-context cond).
    """

    def commit_branch() -> tf.Tensor:
        if commit is not None:
            commit()
        return tf.constant(True)

    skip = lambda: tf.constant(False)  # noqa: E731
    if tf.__internal__.distribute.strategy_supports_no_merge_call():

        def apply_and_commit() -> tf.Tensor:
            apply(gradients)
            return commit_branch()

        tf.cond(sound, apply_and_commit, skip)
        return
    tf.cond(sound, commit_branch, skip)

    def cross_replica(distribution: tf.distribute.Strategy, sound: Any, gradients: Any) -> None:
        first = distribution.experimental_local_results(sound)[0]

        def apply_everywhere() -> tf.Tensor:
            distribution.extended.call_for_each_replica(apply, args=(gradients,))
            return tf.constant(True)

        tf.cond(first, apply_everywhere, skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(sound, gradients))
