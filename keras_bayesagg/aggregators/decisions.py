"""What an aggregator decides for one step: the three `Aggregation` kinds, and seeds drawn without advancing
their generator (the advance is a state write, so it belongs in the aggregation's `commit`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import tensorflow as tf

from keras_bayesagg.engine.faults import Fault


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
