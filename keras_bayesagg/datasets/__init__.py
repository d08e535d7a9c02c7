"""The paper's benchmarks as ready-to-train `MultiTaskData`: tf.data pipelines, tasks, metrics, Δm directions.

TFDS loaders (`cifar_mtl`, `celeba`, `qm9`) read prepared TFDS folders and never download unless
asked (`download=True`); folder loaders (`utkface`, `chestxray14`) read the authors' releases.
"""

from keras_bayesagg.datasets._base import MultiTaskData
from keras_bayesagg.datasets.celeba import CELEBA_ATTRIBUTES, celeba
from keras_bayesagg.datasets.cifar import CIFAR100_SUPERCLASSES, cifar_mtl
from keras_bayesagg.datasets.folders import CHESTXRAY14_FINDINGS, chestxray14, utkface
from keras_bayesagg.datasets.qm9 import QM9_TARGETS, qm9

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CHESTXRAY14_FINDINGS",
    "CIFAR100_SUPERCLASSES",
    "QM9_TARGETS",
    "MultiTaskData",
    "celeba",
    "chestxray14",
    "cifar_mtl",
    "qm9",
    "utkface",
]
