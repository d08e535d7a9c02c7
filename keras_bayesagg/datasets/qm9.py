"""QM9 (Ramakrishnan et al. 2014) from TFDS `qm9/dimenet`: 11 regression targets on padded atoms.

The 11 targets of Navon et al. (2022) that BayesAgg-MTL's Table 1 uses (PyTorch Geometric's
targets 0-10): mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G — one named `Regression()` task
each, so Δm averages their MAEs. Energies (homo … G) are converted from Hartree to eV as in that
protocol; labels are z-scores with training-split statistics (`target_scale`,
`inverse_transform`). The TFDS `dimenet` configuration gives the ~110k/10k/10k split: 110,000
train, 10,000 validation, 10,831 test molecules, drawn with a fixed seed (42) by TFDS.

Inputs are a dict of padded atoms (29 slots): `charges` (int32, 0 = padding), `positions` (Å,
float32, zeros at padding), `num_atoms` (int32) and `mask` (float32, 1 for real atoms).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.datasets._base import MultiTaskData, finish
from keras_bayesagg.datasets._tfds import load_split
from keras_bayesagg.tasks import Regression

QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")
MAX_ATOMS = 29
HARTREE_TO_EV = 27.211386246
_ENERGIES = frozenset({"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"})
_NAME = "qm9/dimenet"


def _atoms(features: dict[str, Any]) -> dict[str, tf.Tensor]:
    count = tf.clip_by_value(tf.cast(features["num_atoms"], tf.int32), 0, MAX_ATOMS)
    mask = tf.cast(tf.range(MAX_ATOMS) < count, tf.float32)
    charges = tf.cast(features["charges"], tf.int32) * tf.cast(mask, tf.int32)
    positions = tf.cast(features["positions"], tf.float32) * mask[:, None]
    return {"charges": charges, "positions": positions, "num_atoms": count, "mask": mask}


def _raw_targets(features: dict[str, Any]) -> tf.Tensor:
    """[11] targets in reporting units (energies in eV)."""
    scale = tf.constant([HARTREE_TO_EV if t in _ENERGIES else 1.0 for t in QM9_TARGETS], tf.float64)
    return tf.stack([tf.cast(features[t], tf.float64) for t in QM9_TARGETS]) * scale


def target_statistics(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (population, float64) of the 11 targets over one pass of a raw TFDS split."""
    total, squares, count = np.zeros(len(QM9_TARGETS)), np.zeros(len(QM9_TARGETS)), 0
    for block in dataset.map(_raw_targets, num_parallel_calls=tf.data.AUTOTUNE).batch(8192).as_numpy_iterator():
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
        count += len(block)
    if count == 0:
        raise ValueError("The QM9 training split is empty; cannot compute target statistics.")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _metrics() -> dict[str, list[Any]]:
    return {t: [keras.metrics.MeanAbsoluteError(name="mae")] for t in QM9_TARGETS}


def qm9(
    batch_size: int = 120,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> MultiTaskData:
    """QM9 with standardized targets; `data.metrics()` gives MAE in z-score units, per target.

    For MAEs in reporting units, undo the standardization of predictions with
    `data.inverse_transform` (multiplies by the training std). Needs pandas (the TFDS builder imports it).
    """
    train_raw = load_split(_NAME, "train", data_dir, download)
    mean, std = target_statistics(train_raw)
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    def example(features: dict[str, Any]) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        z = tf.cast((_raw_targets(features) - mean_t) / std_t, tf.float32)
        return _atoms(features), {t: z[i : i + 1] for i, t in enumerate(QM9_TARGETS)}

    def split(raw: tf.data.Dataset, shuffle_seed: int | None) -> tf.data.Dataset:
        return finish(raw.map(example, num_parallel_calls=tf.data.AUTOTUNE), batch_size, shuffle_seed)

    return MultiTaskData(
        train=split(train_raw, seed),
        validation=split(load_split(_NAME, "validation", data_dir, download), None),
        test=split(load_split(_NAME, "test", data_dir, download), None),
        tasks={t: Regression() for t in QM9_TARGETS},
        higher_is_better={t: {"mae": False} for t in QM9_TARGETS},
        metric_factory=_metrics,
        num_examples={"train": 110_000, "validation": 10_000, "test": 10_831},
        target_scale={t: (float(mean[i]), float(std[i])) for i, t in enumerate(QM9_TARGETS)},
    )
