"""kb.datasets offline: TFDS loaders on tfds.testing.mock_data, folder loaders on generated image folders."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_bayesagg as kb
from keras_bayesagg.datasets.cifar import CIFAR100_TRAIN_SIZE, validation_mask
from keras_bayesagg.datasets.qm9 import HARTREE_TO_EV, QM9_TARGETS

USE_CODE = tfds.testing.MockPolicy.USE_CODE


def _unbatch(dataset: tf.data.Dataset) -> list:
    return list(dataset.unbatch().as_numpy_iterator())


# ----------------------------------------------------------------------------------------- CIFAR-MTL
def _cifar_split(self, split, **kwargs) -> tf.data.Dataset:
    """Train images carry their index in pixel (0, 0): channel 0 = i % 256, channel 1 = i // 256."""
    count = 300 if str(split).startswith("train") else 40
    index = np.arange(count)
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "coarse_label": (index % 20).astype("int64"), "label": index.astype("int64") % 100,
         "id": np.array([f"{split}_{i}" for i in index])}
    )  # fmt: skip


def _cifar_indices(dataset: tf.data.Dataset) -> np.ndarray:
    pixels = np.stack([x[0, 0, :2] for x, _ in _unbatch(dataset)])
    raw = np.rint((pixels * np.array([0.2673, 0.2564]) + np.array([0.5071, 0.4865])) * 255).astype(int)
    return raw[:, 0] + 256 * raw[:, 1]


def test_cifar_mtl_labels_validation_carved_from_train_and_seeded_order():
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=_cifar_split):
        data = kb.datasets.cifar_mtl(batch_size=32, seed=1)
        again = kb.datasets.cifar_mtl(batch_size=32, seed=1)
        other = kb.datasets.cifar_mtl(batch_size=32, seed=2)
        x, y = next(iter(data.test))  # (iterating train here would advance its reshuffling)
        assert x.shape == (32, 32, 32, 3) and x.dtype == tf.float32 and set(y) == {"coarse"}
        assert y["coarse"].shape == (32, 20) and np.all(np.sum(y["coarse"], axis=1) == 1)
        train, validation = _cifar_indices(data.train), _cifar_indices(data.validation)
        np.testing.assert_array_equal(train, _cifar_indices(again.train))
        assert not np.array_equal(train, _cifar_indices(other.train))
        np.testing.assert_array_equal(np.sort(validation), _cifar_indices(other.validation))
    mask = validation_mask()
    assert mask.sum() == 5_000 and len(mask) == CIFAR100_TRAIN_SIZE
    assert set(train).isdisjoint(validation) and sorted(set(train) | set(validation)) == list(range(300))
    np.testing.assert_array_equal(np.sort(validation), np.flatnonzero(mask[:300]))
    assert len(_unbatch(data.test)) == 40
    assert isinstance(data.tasks["coarse"], kb.tasks.Binary) and data.tasks["coarse"].units == 20
    first, second = data.metrics(), data.metrics()
    assert first["coarse"][0] is not second["coarse"][0]
    assert data.higher_is_better == {"coarse": {"accuracy": True, "auc": True}}


def test_tfds_loader_without_prepared_data_says_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar100.*not prepared in .*" + tmp_path.name):
        kb.datasets.cifar_mtl(data_dir=tmp_path)


# -------------------------------------------------------------------------------------------- CelebA
def test_celeba_forty_named_binary_tasks_on_mock_data():
    with tfds.testing.mock_data(num_examples=6, policy=USE_CODE):
        data = kb.datasets.celeba(batch_size=4, image_size=16)
        x, y = next(iter(data.validation))
    assert x.shape == (4, 16, 16, 3) and float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0
    assert len(data.tasks) == 40 and "Five_o_Clock_Shadow" in data.tasks and "Male" in data.tasks
    assert set(y) == set(data.tasks) and all(v.shape == (4, 1) for v in y.values())
    assert all(set(np.unique(v)) <= {0.0, 1.0} for v in y.values())
    assert set(data.metrics()) == set(data.tasks) == set(data.higher_is_better)


# ----------------------------------------------------------------------------------------------- QM9
def _qm9_split(self, split, **kwargs) -> tf.data.Dataset:
    """Molecules with 2-5 atoms; train targets ~ N(k, (k+1)²)·Hartree-free, test shifted by +100."""
    name = str(split)
    count, shift = {"train": (64, 0.0), "validation": (8, 50.0), "test": (8, 100.0)}[name.split("[")[0]]
    rng = np.random.default_rng(len(name))
    atoms = rng.integers(2, 6, size=count)
    charges = np.zeros((count, 29), np.int64)
    positions = rng.normal(size=(count, 29, 3)).astype("float32")
    for i, n in enumerate(atoms):
        charges[i, :n] = rng.choice([1, 6, 7, 8, 9], size=n)
    features = {"num_atoms": atoms.astype("int64"), "charges": charges, "positions": positions}
    for k, target in enumerate(QM9_TARGETS):
        features[target] = (shift + k + (k + 1) * rng.normal(size=count)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(features)


def test_qm9_standardizes_with_training_statistics_and_masks_padding():
    pytest.importorskip("pandas", reason="the TFDS qm9 builder imports pandas")
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=_qm9_split):
        data = kb.datasets.qm9(batch_size=16)
        raw_train = _qm9_split(None, "train")
        raw_test = _qm9_split(None, "test")
        test = _unbatch(data.test)
        train = _unbatch(data.train)
    units = np.array([HARTREE_TO_EV if t not in ("mu", "alpha", "r2") else 1.0 for t in QM9_TARGETS])
    expected = np.stack([np.stack([ex[t] for t in QM9_TARGETS]) for ex in raw_train.as_numpy_iterator()]) * units
    mean = np.array([data.target_scale[t][0] for t in QM9_TARGETS])
    std = np.array([data.target_scale[t][1] for t in QM9_TARGETS])
    np.testing.assert_allclose(mean, expected.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, expected.std(axis=0), rtol=1e-5)
    z_train = np.stack([np.concatenate([y[t] for t in QM9_TARGETS]) for _, y in train])
    np.testing.assert_allclose(z_train.mean(axis=0), 0.0, atol=1e-4)
    raw_test_targets = np.stack([np.stack([ex[t] for t in QM9_TARGETS]) for ex in raw_test.as_numpy_iterator()]) * units
    z_test = np.stack([np.concatenate([y[t] for t in QM9_TARGETS]) for _, y in test])
    np.testing.assert_allclose(z_test, (raw_test_targets - mean) / std, rtol=1e-4, atol=1e-4)
    restored = data.inverse_transform({t: z_test[:, i] for i, t in enumerate(QM9_TARGETS)})
    np.testing.assert_allclose(restored["mu"], raw_test_targets[:, 0], rtol=1e-4, atol=1e-4)
    x, _ = test[0]
    assert set(x) == {"charges", "positions", "num_atoms", "mask"} and x["positions"].shape == (29, 3)
    n = int(x["num_atoms"])
    assert x["mask"].sum() == n and np.all(x["charges"][n:] == 0) and np.all(x["positions"][n:] == 0)
    assert set(data.tasks) == set(QM9_TARGETS) and all(t.kind == "regression" for t in data.tasks.values())


# ------------------------------------------------------------------------------------------- UTKFace
def _write_image(path: pathlib.Path, value: int, png: bool = False, size: int = 24) -> None:
    image = tf.fill((size, size, 3), tf.constant(value, tf.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((tf.io.encode_png(image) if png else tf.io.encode_jpeg(image)).numpy())


def _utkface_folder(root: pathlib.Path) -> pathlib.Path:
    for i in range(30):
        _write_image(root / f"{i + 1}_{i % 2}_{i % 5}_2017011{i:02d}.jpg.chip.jpg", 100)
    _write_image(root / "39_1_20170116174525125.jpg.chip.jpg", 100)  # the race field is missing
    _write_image(root / "holiday.jpg", 100)
    return root


def test_utkface_parses_names_reports_the_rest_and_splits_70_10_20(tmp_path):
    root = _utkface_folder(tmp_path / "UTKFace")
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\).*39_1_20170116174525125\.jpg\.chip\.jpg"):
        data = kb.datasets.utkface(root, batch_size=8, resize=20, image_size=16)
    assert sorted(data.skipped) == ["39_1_20170116174525125.jpg.chip.jpg", "holiday.jpg"]
    assert data.num_examples == {"train": 21, "validation": 3, "test": 6}
    splits = {name: _unbatch(getattr(data, name)) for name in ("train", "validation", "test")}
    ages = {name: np.rint(data.inverse_transform({"age": np.array([y["age"][0] for _, y in rows])})["age"]).astype(int)
            for name, rows in splits.items()}  # fmt: skip
    assert sorted(np.concatenate(list(ages.values()))) == list(range(1, 31))
    for rows in splits.values():
        for x, y in rows:
            age = int(np.rint(data.inverse_transform({"age": y["age"]})["age"][0]))
            assert x.shape == (16, 16, 3) and y["gender"] == (age - 1) % 2 and y["ethnicity"] == (age - 1) % 5
    assert abs(np.mean([y["age"][0] for _, y in splits["train"]])) < 1e-5  # z-scored with training statistics
    with pytest.warns(UserWarning):
        again = kb.datasets.utkface(root, batch_size=8, resize=20, image_size=16)
    with pytest.warns(UserWarning):
        other = kb.datasets.utkface(root, batch_size=8, resize=20, image_size=16, seed=5)
    assert [float(y["age"][0]) for _, y in _unbatch(again.train)] == [float(y["age"][0]) for _, y in splits["train"]]
    assert [float(y["age"][0]) for _, y in _unbatch(other.train)] != [float(y["age"][0]) for _, y in splits["train"]]
    assert [float(y["age"][0]) for _, y in _unbatch(other.test)] == [float(y["age"][0]) for _, y in splits["test"]]


def test_utkface_wrong_folder_errors_name_the_expectation(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected a folder at .*nowhere"):
        kb.datasets.utkface(tmp_path / "nowhere")
    _write_image(tmp_path / "faces" / "cat.jpg", 3)
    with (
        pytest.warns(UserWarning),
        pytest.raises(FileNotFoundError, match=r"\[age\]_\[gender\]_\[race\].*found 0 usable of 1"),
    ):
        kb.datasets.utkface(tmp_path / "faces")


# -------------------------------------------------------------------------------------- ChestX-ray14
def _chest_folder(root: pathlib.Path) -> pathlib.Path:
    """20 patients with 1-3 images each; every image is filled with 10·patient id."""
    rng = np.random.default_rng(0)
    findings = list(kb.datasets.CHESTXRAY14_FINDINGS) + ["No Finding"]
    rows = []
    for patient in range(1, 21):
        for follow_up in range(int(rng.integers(1, 4))):
            name = f"{patient:08d}_{follow_up:03d}.png"
            _write_image(root / "images_001" / "images" / name, 10 * patient, png=True, size=20)
            labels = "|".join(sorted(set(rng.choice(findings, size=int(rng.integers(1, 3))))))
            rows.append(
                {"Image Index": name, "Finding Labels": labels, "Follow-up #": follow_up, "Patient ID": patient}
            )
    rows.append({"Image Index": "00000099_000.png", "Finding Labels": "Mass", "Follow-up #": 0, "Patient ID": 99})
    with (root / "Data_Entry_2017.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_chestxray14_patient_wise_split_and_labels(tmp_path):
    root = _chest_folder(tmp_path / "nih")
    with pytest.warns(UserWarning, match="00000099_000.png"):
        data = kb.datasets.chestxray14(root, batch_size=4, resize=20, image_size=16)
    assert data.skipped == ("00000099_000.png",) and len(data.tasks) == 14
    patients = {}
    for name in ("train", "validation", "test"):
        rows = _unbatch(getattr(data, name))
        assert len(rows) == data.num_examples[name]
        assert all(x.shape == (16, 16, 3) and set(y) == set(data.tasks) and y["Mass"].shape == (1,) for x, y in rows)
        patients[name] = {int(np.rint(x[0, 0, 0] * 255 / 10)) for x, _ in rows}
    assert [len(p) for p in patients.values()] == [14, 2, 4]
    assert set.union(*patients.values()) == set(range(1, 21))
    assert all(
        patients[a].isdisjoint(patients[b])
        for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]
    )
    with (root / "Data_Entry_2017.csv").open() as handle:
        table = {r["Image Index"]: r["Finding Labels"] for r in csv.DictReader(handle)}
    positives = sum(
        int(y["Effusion"][0]) for name in ("train", "validation", "test") for _, y in _unbatch(getattr(data, name))
    )
    assert positives == sum("Effusion" in v.split("|") for k, v in table.items() if k != "00000099_000.png")


def test_chestxray14_without_label_file_says_which_file(tmp_path):
    _write_image(tmp_path / "images" / "00000001_000.png", 1, png=True)
    with pytest.raises(FileNotFoundError, match=r"Data_Entry_2017\.csv"):
        kb.datasets.chestxray14(tmp_path)


def test_cifar_mtl_reports_split_sizes_to_keras_when_the_prepared_split_is_complete(monkeypatch):
    from keras_bayesagg.datasets import cifar

    monkeypatch.setattr(cifar, "_split_size", lambda data_dir: CIFAR100_TRAIN_SIZE)
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=_cifar_split):
        data = kb.datasets.cifar_mtl(batch_size=100)
    assert [int(d.cardinality()) for d in (data.train, data.validation)] == [450, 50]
    monkeypatch.setattr(cifar, "_split_size", lambda data_dir: None)
    with tfds.testing.mock_data(policy=USE_CODE, as_dataset_fn=_cifar_split):
        assert int(kb.datasets.cifar_mtl(batch_size=100).train.cardinality()) == tf.data.UNKNOWN_CARDINALITY
