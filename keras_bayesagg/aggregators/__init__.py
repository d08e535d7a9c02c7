"""Aggregators: how task gradients w.r.t. the shared representation combine (one method a file).

Methods only; the interface they implement (Aggregator, AggregatorInputs, the Aggregation kinds, ...) is
`keras_bayesagg.interface`.
"""

from keras_bayesagg.aggregators.aligned_mtl import AlignedMTL
from keras_bayesagg.aggregators.bayesagg import BayesAgg
from keras_bayesagg.aggregators.cagrad import CAGrad
from keras_bayesagg.aggregators.conflict_free import ConFIG
from keras_bayesagg.aggregators.cosmos import COSMOS
from keras_bayesagg.aggregators.cr_mogm import CRMOGM
from keras_bayesagg.aggregators.dbmtl import DBMTL
from keras_bayesagg.aggregators.dual_proj import DualProj
from keras_bayesagg.aggregators.dynamic_weight_average import DynamicWeightAverage
from keras_bayesagg.aggregators.excess_mtl import ExcessMTL
from keras_bayesagg.aggregators.fairgrad import FairGrad
from keras_bayesagg.aggregators.famo import FAMO
from keras_bayesagg.aggregators.geometric_loss import GeometricLoss
from keras_bayesagg.aggregators.graddrop import GradDrop
from keras_bayesagg.aggregators.gradnorm import GradNorm
from keras_bayesagg.aggregators.gradvac import GradVac
from keras_bayesagg.aggregators.imtl import IMTL
from keras_bayesagg.aggregators.imtl_g import IMTLG
from keras_bayesagg.aggregators.imtl_l import IMTLL
from keras_bayesagg.aggregators.krum import Krum
from keras_bayesagg.aggregators.linear_scalarization import LinearScalarization
from keras_bayesagg.aggregators.mgda import MGDA
from keras_bayesagg.aggregators.moco import MoCo
from keras_bayesagg.aggregators.modo import MoDo
from keras_bayesagg.aggregators.nash_mtl import NashMTL
from keras_bayesagg.aggregators.pbi import PBI
from keras_bayesagg.aggregators.pcd import PCD
from keras_bayesagg.aggregators.pcgrad import PCGrad
from keras_bayesagg.aggregators.random_loss_weighting import RandomLossWeighting
from keras_bayesagg.aggregators.scale_invariant import ScaleInvariant
from keras_bayesagg.aggregators.sdmgrad import SDMGrad
from keras_bayesagg.aggregators.stch import STCH
from keras_bayesagg.aggregators.trimmed_mean import TrimmedMean
from keras_bayesagg.aggregators.uncertainty_weighting import UncertaintyWeighting
from keras_bayesagg.aggregators.upgrad import UPGrad

__all__ = [
    "AlignedMTL",
    "BayesAgg",
    "CAGrad",
    "ConFIG",
    "CRMOGM",
    "DualProj",
    "COSMOS",
    "DBMTL",
    "DynamicWeightAverage",
    "FairGrad",
    "ExcessMTL",
    "FAMO",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "IMTLG",
    "Krum",
    "GeometricLoss",
    "IMTL",
    "IMTLL",
    "LinearScalarization",
    "MGDA",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCD",
    "PBI",
    "PCGrad",
    "RandomLossWeighting",
    "ScaleInvariant",
    "TrimmedMean",
    "SDMGrad",
    "STCH",
    "UncertaintyWeighting",
    "UPGrad",
]
