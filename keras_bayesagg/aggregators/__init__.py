"""Aggregators: how task gradients w.r.t. the shared representation combine (one method a file)."""

from keras_bayesagg.aggregators.base import Aggregation, Aggregator, AggregatorInputs, TaskLayout, TaskUnit
from keras_bayesagg.aggregators.bayesagg import BayesAgg
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization

__all__ = [
    "Aggregation",
    "Aggregator",
    "AggregatorInputs",
    "BayesAgg",
    "LinearScalarization",
    "TaskLayout",
    "TaskUnit",
]
