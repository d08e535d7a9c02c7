"""The pure math of BayesAgg-MTL: posteriors, gradient moments, aggregation, safe Cholesky.

Plain TensorFlow functions with no Keras state, so each can be tested alone.
"""

from keras_bayesagg.bayes import classification, evidence, exact_moments, kronecker, kronecker_draws, regression
from keras_bayesagg.bayes.aggregation import (
    InverseVarianceAggregate,
    inverse_variance_aggregate,
    tempered_variance,
)
from keras_bayesagg.bayes.evidence import classification_evidence_variance, regression_evidence_variance
from keras_bayesagg.bayes.exact_moments import binary_gradient_moments_exact, two_class_gradient_moments_exact
from keras_bayesagg.bayes.linalg import SafeCholesky, inverse_diagonal, inverse_from_cholesky, safe_cholesky

__all__ = [
    "InverseVarianceAggregate",
    "SafeCholesky",
    "binary_gradient_moments_exact",
    "classification",
    "classification_evidence_variance",
    "evidence",
    "exact_moments",
    "inverse_diagonal",
    "inverse_from_cholesky",
    "inverse_variance_aggregate",
    "kronecker",
    "kronecker_draws",
    "regression",
    "regression_evidence_variance",
    "safe_cholesky",
    "tempered_variance",
    "two_class_gradient_moments_exact",
]
