"""Aggregators: how task gradients w.r.t. the shared representation combine (one method a file)."""

from keras_bayesagg.aggregators.base import Aggregation, Aggregator, AggregatorInputs, TaskLayout, TaskUnit
from keras_bayesagg.aggregators.bayesagg import BayesAgg
from keras_bayesagg.aggregators.dynamic_weight_average import DynamicWeightAverage
from keras_bayesagg.aggregators.famo import FAMO
from keras_bayesagg.aggregators.gradnorm import GradNorm
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization
from keras_bayesagg.aggregators.random_loss_weighting import RandomLossWeighting
from keras_bayesagg.aggregators.scale_invariant import ScaleInvariant
from keras_bayesagg.aggregators.uncertainty_weighting import UncertaintyWeighting

__all__ = [
    "Aggregation",
    "Aggregator",
    "AggregatorInputs",
    "BayesAgg",
    "DynamicWeightAverage",
    "FAMO",
    "GradNorm",
    "LinearScalarization",
    "RandomLossWeighting",
    "ScaleInvariant",
    "TaskLayout",
    "TaskUnit",
    "UncertaintyWeighting",
]
