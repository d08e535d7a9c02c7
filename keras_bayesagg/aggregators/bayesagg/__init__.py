"""BayesAgg-MTL, split by concern: the composer (`aggregator`), regression statistics and prior
(`regression_part`), classification priors and moments (`classification_part`), the staging of
rows for the classification prior (`row_staging`) and the memory estimate (`memory`)."""

from keras_bayesagg.aggregators.bayesagg.aggregator import BayesAgg

__all__ = ["BayesAgg"]
