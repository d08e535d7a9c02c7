"""The pure math of BayesAgg-MTL: posteriors, gradient moments, aggregation, safe Cholesky.

Plain TensorFlow functions with no Keras state, so each can be tested alone.
"""

from keras_bayesagg.bayes import classification, regression
from keras_bayesagg.bayes.aggregation import (
    InverseVarianceAggregate,
    inverse_variance_aggregate,
    tempered_variance,
)
from keras_bayesagg.bayes.linalg import SafeCholesky, inverse_diagonal, inverse_from_cholesky, safe_cholesky

__all__ = [
    "InverseVarianceAggregate",
    "SafeCholesky",
    "classification",
    "inverse_diagonal",
    "inverse_from_cholesky",
    "inverse_variance_aggregate",
    "regression",
    "safe_cholesky",
    "tempered_variance",
]
