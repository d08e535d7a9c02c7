"""Datasets shipped with the package (no download) and random task batches."""

from keras_bayesagg.data.penguins import PENGUIN_SPECIES, Penguins, load_penguins
from keras_bayesagg.data.synthetic import random_task_batch

__all__ = ["PENGUIN_SPECIES", "Penguins", "load_penguins", "random_task_batch"]
