"""Benchmarks read from a local folder (not in TFDS): UTKFace and NIH ChestX-ray14."""

from __future__ import annotations

import csv
import os
import pathlib
import re
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bayesagg.datasets._base import MultiTaskData, decode_image, finish, resize_and_center_crop, split_indices
from keras_bayesagg.tasks import Binary, Multiclass, Regression

UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_[^/]*\.jpe?g$", re.IGNORECASE)
CHESTXRAY14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
CHESTXRAY14_CSV = "Data_Entry_2017.csv"


def _folder(directory: str | os.PathLike, what: str) -> pathlib.Path:
    path = pathlib.Path(directory).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a folder at '{path}', but it does not exist or is not a folder.")
    return path


def _report(skipped: list[str], what: str, expected: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:20]) + (f", … ({len(skipped) - 20} more)" if len(skipped) > 20 else "")
        warnings.warn(f"{what}: skipped {len(skipped)} file(s) {expected}: {shown}", stacklevel=3)


def _pipelines(
    paths: np.ndarray,
    labels: dict[str, np.ndarray],
    parts: tuple[np.ndarray, np.ndarray, np.ndarray],
    preprocess: Any,
    batch_size: int,
    seed: int,
) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
    def one(indices: np.ndarray, shuffle_seed: int | None) -> tf.data.Dataset:
        indices = np.sort(indices)
        dataset = tf.data.Dataset.from_tensor_slices((paths[indices], {k: v[indices] for k, v in labels.items()}))
        dataset = dataset.map(lambda p, y: (preprocess(p), y), num_parallel_calls=tf.data.AUTOTUNE)
        return finish(dataset, batch_size, shuffle_seed, buffer=max(1, min(len(indices), 10_000)))

    return one(parts[0], seed), one(parts[1], None), one(parts[2], None)


def _utkface_metrics() -> dict[str, list[Any]]:
    return {
        "age": [keras.metrics.MeanAbsoluteError(name="mae")],
        "gender": [keras.metrics.CategoricalAccuracy(name="accuracy")],
        "ethnicity": [keras.metrics.CategoricalAccuracy(name="accuracy")],
    }


def utkface(
    directory: str | os.PathLike,
    batch_size: int = 128,
    seed: int = 0,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    resize: int = 140,
    image_size: int = 128,
) -> MultiTaskData:
    """UTKFace from a folder of `[age]_[gender]_[race]_[date].jpg` (also `*.jpg.chip.jpg`) images.

    Tasks: `age` (regression, z-scored with training statistics, `target_scale` in years),
    `gender` (`Multiclass(2)`, 0 male / 1 female) and `ethnicity` (`Multiclass(5)`). Files are
    split 70/10/20 by a permutation drawn with `split_seed` (fixed across `seed`s); images are
    resized to `resize`² and center-cropped to `image_size`². JPEGs whose names do not parse are
    listed in a warning and in `skipped`.
    """
    root = _folder(directory, "utkface")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
    parsed, skipped = [], []
    for path in files:
        match = UTKFACE_NAME.match(path.name)
        if match is None or int(match.group(1)) > 120:
            skipped.append(str(path.relative_to(root)))
        else:
            parsed.append((str(path), *(int(g) for g in match.groups())))
    _report(skipped, "utkface", "whose names are not [age]_[gender 0|1]_[race 0-4]_*.jpg")
    if len(parsed) < 3:
        raise FileNotFoundError(
            f"utkface: expected UTKFace images named [age]_[gender]_[race]_[date].jpg in '{root}' (searched recursively); "
            f"found {len(parsed)} usable of {len(files)} JPEG file(s)."
        )
    paths = np.array([p[0] for p in parsed])
    age = np.array([p[1] for p in parsed], dtype="float64")
    parts = split_indices(len(paths), fractions, split_seed)
    mean, std = float(age[parts[0]].mean()), float(age[parts[0]].std()) or 1.0
    labels = {
        "age": ((age - mean) / std).astype("float32")[:, None],
        "gender": np.array([p[2] for p in parsed], dtype="int32"),
        "ethnicity": np.array([p[3] for p in parsed], dtype="int32"),
    }
    return _image_data(
        paths,
        labels,
        parts,
        (resize, image_size, batch_size, seed),
        tasks={"age": Regression(), "gender": Multiclass(2), "ethnicity": Multiclass(5)},
        higher_is_better={"age": {"mae": False}, "gender": {"accuracy": True}, "ethnicity": {"accuracy": True}},
        metric_factory=_utkface_metrics,
        target_scale={"age": (mean, std)},
        skipped=tuple(skipped),
    )


def _chest_metrics() -> dict[str, list[Any]]:
    return {f: [keras.metrics.AUC(name="auc")] for f in CHESTXRAY14_FINDINGS}


def chestxray14(
    directory: str | os.PathLike,
    batch_size: int = 256,
    seed: int = 0,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    resize: int = 256,
    image_size: int = 224,
) -> MultiTaskData:
    """NIH ChestX-ray14: `directory` holds `Data_Entry_2017.csv` and the PNGs (any subfolders).

    14 named `Binary(1)` tasks, one per finding ("No Finding" is all zeros). The split is by
    patient: patients are permuted with `split_seed` and cut 70/10/20, so no patient is in two
    splits. Images are read as RGB, resized to `resize`² and center-cropped to `image_size`².
    Rows of the CSV whose image is missing are listed in a warning and in `skipped`.
    """
    root = _folder(directory, "chestxray14")
    table = root / CHESTXRAY14_CSV
    if not table.is_file():
        raise FileNotFoundError(f"chestxray14: expected the label file '{CHESTXRAY14_CSV}' at '{table}' (NIH release).")
    images = {p.name: str(p) for p in root.rglob("*.png")}
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"Image Index", "Finding Labels", "Patient ID"} <= set(rows[0]):
        raise ValueError(f"chestxray14: '{table}' lacks the columns 'Image Index', 'Finding Labels', 'Patient ID'.")
    kept = [r for r in rows if r["Image Index"] in images]
    _report(
        [r["Image Index"] for r in rows if r["Image Index"] not in images],
        "chestxray14",
        "listed in the CSV but absent",
    )
    if not kept:
        raise FileNotFoundError(
            f"chestxray14: none of the {len(rows)} images listed in '{table}' was found as a .png under '{root}'."
        )
    patients = np.array([int(r["Patient ID"]) for r in kept])
    unique = np.unique(patients)
    patient_parts = split_indices(len(unique), fractions, split_seed)
    parts = tuple(np.flatnonzero(np.isin(patients, unique[p])) for p in patient_parts)
    findings = [set(r["Finding Labels"].split("|")) for r in kept]
    labels = {f: np.array([[float(f in s)] for s in findings], dtype="float32") for f in CHESTXRAY14_FINDINGS}
    paths = np.array([images[r["Image Index"]] for r in kept])
    return _image_data(
        paths,
        labels,
        parts,
        (resize, image_size, batch_size, seed),
        tasks={f: Binary(1) for f in CHESTXRAY14_FINDINGS},
        higher_is_better={f: {"auc": True} for f in CHESTXRAY14_FINDINGS},
        metric_factory=_chest_metrics,
        skipped=tuple(r["Image Index"] for r in rows if r["Image Index"] not in images),
    )


def _image_data(
    paths: np.ndarray, labels: dict[str, np.ndarray], parts: tuple, sizes: tuple[int, int, int, int], **fields: Any
) -> MultiTaskData:
    """Decoded, resized and center-cropped image pipelines for the three splits, wrapped with the task fields.

    `sizes` is (resize, image_size, batch_size, seed).
    """
    resize, image_size, batch_size, seed = sizes
    train, validation, test = _pipelines(
        paths, labels, parts, lambda p: resize_and_center_crop(decode_image(p), resize, image_size), batch_size, seed
    )
    counts = {"train": len(parts[0]), "validation": len(parts[1]), "test": len(parts[2])}
    return MultiTaskData(train=train, validation=validation, test=test, num_examples=counts, **fields)
