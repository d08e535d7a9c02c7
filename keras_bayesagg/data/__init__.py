"""Datasets shipped with the package (no download)."""

from keras_bayesagg.data.penguins import PENGUIN_SPECIES, Penguins, load_penguins

__all__ = ["PENGUIN_SPECIES", "Penguins", "load_penguins"]
