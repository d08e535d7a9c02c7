"""CIFAR-MTL (paper §5.2, Table 2): 20 one-vs-rest superclass tasks on a 3-layer CNN.

    python examples/paper/cifar_mtl.py --aggregator BayesAgg --seeds 3 [--data-dir ~/tensorflow_datasets]
    python examples/paper/cifar_mtl.py --smoke       # mock data, tiny network, seconds

Reports class-assignment accuracy (argmax over the 20 outputs, the paper's number) and mean AUC.
The data set is one `Binary(20)` task, so the Δm baseline is linear scalarization by default
(`single-task` would train that same one-entry model).
"""

from __future__ import annotations

import argparse
import pathlib

import paper_common as common

import keras_bayesagg as kb

DEFAULTS = {  # SPEC table: CIFAR-MTL
    "lr": 1e-3, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128, "warmup_epochs": 3,
    "prior_variance": 5e-4, "classification_power": 5e-4, "seeds": 3, "baseline": "LinearScalarization",
}  # fmt: skip


def load(args: argparse.Namespace) -> kb.datasets.MultiTaskData:
    return kb.datasets.cifar_mtl(batch_size=args.batch_size, data_dir=args.source)


def load_smoke(args: argparse.Namespace, scratch: pathlib.Path) -> kb.datasets.MultiTaskData:
    return common.mock_tfds_data(lambda: kb.datasets.cifar_mtl(batch_size=args.batch_size), num_examples=48)


BENCHMARK = common.Benchmark(
    name="cifar_mtl",
    defaults=DEFAULTS,
    load=load,
    load_smoke=load_smoke,
    trunk=lambda smoke: kb.models.cifar_mtl_cnn(filters=8 if smoke else 160),
)


def main(argv: list[str] | None = None) -> dict:
    return common.run(BENCHMARK, argv)


if __name__ == "__main__":
    main()
