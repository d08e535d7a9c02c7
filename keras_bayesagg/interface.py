"""The aggregator interface: what a method receives each step, what it returns, and the base class it derives from.

`kb.aggregators` holds the methods only; write a new one against these names (docs/architecture.md,
"Adding an aggregator"). The definitions live in `keras_bayesagg.aggregators.base` and its two helper
modules; this module is their public home.
"""

from keras_bayesagg.aggregators.base import (
    Aggregation,
    Aggregator,
    AggregatorInputs,
    ObjectiveAggregation,
    ParameterAggregation,
    ReplicaRows,
    RepresentationAggregation,
    TaskLayout,
    TaskUnit,
    labelled_samples,
    peek_seed,
    peek_seeds,
    sum_of_losses_gradient,
)

__all__ = [
    "Aggregation",
    "Aggregator",
    "AggregatorInputs",
    "ObjectiveAggregation",
    "ParameterAggregation",
    "ReplicaRows",
    "RepresentationAggregation",
    "TaskLayout",
    "TaskUnit",
    "labelled_samples",
    "peek_seed",
    "peek_seeds",
    "sum_of_losses_gradient",
]
