"""Palmer penguins (Horst, Hill & Gorman 2020; CC0), shipped as `penguins.csv`.

A small real multi-task problem with every task kind: from bill length, bill depth, island and
year predict species (3 classes), sex (binary), body mass and flipper length (regression).
Rows with a missing value are dropped (333 of 344 remain).
"""

from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass

import numpy as np

PENGUIN_SPECIES = ("Adelie", "Chinstrap", "Gentoo")
ISLANDS = ("Biscoe", "Dream", "Torgersen")
CSV_PATH = pathlib.Path(__file__).with_name("penguins.csv")


@dataclass(frozen=True)
class Penguins:
    """Standardized inputs and per-task labels; `target_scale` undoes the regression z-scores."""

    x_train: np.ndarray
    y_train: dict[str, np.ndarray]
    x_test: np.ndarray
    y_test: dict[str, np.ndarray]
    target_scale: dict[str, tuple[float, float]]  # task -> (mean, std) of the original units


def _read_rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if all(value not in ("", "NA") for value in row.values())]


def load_penguins(test_fraction: float = 0.25, seed: int = 0) -> Penguins:
    """Split, standardize with training statistics, and return arrays ready for `fit`."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
    rows = _read_rows()
    bills = np.array([[float(r["bill_length_mm"]), float(r["bill_depth_mm"]), float(r["year"])] for r in rows])
    islands = np.array([[float(r["island"] == island) for island in ISLANDS] for r in rows])
    species = np.array([PENGUIN_SPECIES.index(r["species"]) for r in rows], dtype="int32")
    sex = np.array([float(r["sex"] == "male") for r in rows], dtype="float32")
    targets = {
        "body_mass": np.array([float(r["body_mass_g"]) for r in rows]),
        "flipper_length": np.array([float(r["flipper_length_mm"]) for r in rows]),
    }

    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(round(len(rows) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]

    mean, std = bills[train].mean(axis=0), bills[train].std(axis=0)
    x = np.concatenate([(bills - mean) / std, islands], axis=1).astype("float32")
    labels: dict[str, np.ndarray] = {"species": species, "sex": sex}
    scale: dict[str, tuple[float, float]] = {}
    for name, values in targets.items():
        mu, sigma = float(values[train].mean()), float(values[train].std())
        labels[name] = ((values - mu) / sigma).astype("float32")
        scale[name] = (mu, sigma)
    return Penguins(
        x_train=x[train],
        y_train={k: v[train] for k, v in labels.items()},
        x_test=x[test],
        y_test={k: v[test] for k, v in labels.items()},
        target_scale=scale,
    )
