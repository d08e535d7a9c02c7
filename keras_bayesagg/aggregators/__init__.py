"""Aggregators: how task gradients w.r.t. the shared representation combine (one method a file)."""

from keras_bayesagg.aggregators.aligned_mtl import AlignedMTL
from keras_bayesagg.aggregators.base import (
    Aggregation,
    Aggregator,
    AggregatorInputs,
    ObjectiveAggregation,
    ParameterAggregation,
    RepresentationAggregation,
    TaskLayout,
    TaskUnit,
)
from keras_bayesagg.aggregators.bayesagg import BayesAgg
from keras_bayesagg.aggregators.cagrad import CAGrad
from keras_bayesagg.aggregators.cosmos import COSMOS
from keras_bayesagg.aggregators.dbmtl import DBMTL
from keras_bayesagg.aggregators.dynamic_weight_average import DynamicWeightAverage
from keras_bayesagg.aggregators.famo import FAMO
from keras_bayesagg.aggregators.geometric_loss import GeometricLoss
from keras_bayesagg.aggregators.gradnorm import GradNorm
from keras_bayesagg.aggregators.imtl import IMTL
from keras_bayesagg.aggregators.imtl_g import IMTLG
from keras_bayesagg.aggregators.imtl_l import IMTLL
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization
from keras_bayesagg.aggregators.mgda import MGDA
from keras_bayesagg.aggregators.nash_mtl import NashMTL
from keras_bayesagg.aggregators.pbi import PBI
from keras_bayesagg.aggregators.pcgrad import PCGrad
from keras_bayesagg.aggregators.random_loss_weighting import RandomLossWeighting
from keras_bayesagg.aggregators.scale_invariant import ScaleInvariant
from keras_bayesagg.aggregators.stch import STCH
from keras_bayesagg.aggregators.uncertainty_weighting import UncertaintyWeighting

__all__ = [
    "Aggregation",
    "Aggregator",
    "AggregatorInputs",
    "AlignedMTL",
    "BayesAgg",
    "CAGrad",
    "COSMOS",
    "DBMTL",
    "DynamicWeightAverage",
    "FAMO",
    "GeometricLoss",
    "GradNorm",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "LinearScalarization",
    "MGDA",
    "NashMTL",
    "ObjectiveAggregation",
    "ParameterAggregation",
    "PBI",
    "PCGrad",
    "RandomLossWeighting",
    "RepresentationAggregation",
    "ScaleInvariant",
    "STCH",
    "TaskLayout",
    "TaskUnit",
    "UncertaintyWeighting",
]
