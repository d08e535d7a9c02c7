"""keras-bayesagg: BayesAgg-MTL and baseline multi-task aggregators for Keras 3 (TensorFlow backend)."""

from keras_bayesagg import aggregators, bayes, callbacks, datasets, interface, metrics, models, tasks
from keras_bayesagg.aggregators import BayesAgg
from keras_bayesagg.model import MultiTaskModel

__version__ = "0.2.0"
__all__ = [
    "BayesAgg",
    "MultiTaskModel",
    "__version__",
    "aggregators",
    "bayes",
    "callbacks",
    "datasets",
    "interface",
    "metrics",
    "models",
    "tasks",
]
