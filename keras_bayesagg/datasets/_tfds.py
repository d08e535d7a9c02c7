"""Opening TensorFlow Datasets splits offline, with an error that says what is missing and where."""

from __future__ import annotations

import os

import tensorflow as tf


def load_split(name: str, split: str, data_dir: str | os.PathLike | None, download: bool) -> tf.data.Dataset:
    """`tfds.load(name, split=...)` in file order; a clear FileNotFoundError when the data is not prepared."""
    import tensorflow_datasets as tfds

    try:
        return tfds.load(
            name,
            split=split,
            data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            shuffle_files=False,
            read_config=tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1),
        )
    except ModuleNotFoundError:
        raise
    except Exception as error:  # tfds raises AssertionError or DatasetNotFoundError depending on the version
        where = (
            data_dir if data_dir is not None else "the default TFDS folder (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        )
        raise FileNotFoundError(
            f"TFDS dataset '{name}' (split '{split}') is not prepared in {where}. Expected the folder that "
            f"`tfds build {name.split('/')[0]}` (or tfds.load(..., download=True) on a machine with network) writes; "
            f"pass its parent as data_dir=, or download=True. ({type(error).__name__}: {str(error)[:200]})"
        ) from error
