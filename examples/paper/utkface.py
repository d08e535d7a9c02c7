"""UTKFace (paper §5.3, Table 3): age regression, gender and ethnicity classification on ResNet-18.

    python examples/paper/utkface.py --directory ~/data/UTKFace --aggregator BayesAgg --seeds 8
    python examples/paper/utkface.py --smoke       # generated images, tiny network, seconds

Age MAE is reported in years (the z-scored labels are scaled back with the training std).
"""

from __future__ import annotations

import argparse
import pathlib

import paper_common as common

import keras_bayesagg as kb

DEFAULTS = {  # SPEC table: UTKFace; the paper reports 8 seeds
    "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100, "batch_size": 128, "warmup_epochs": 10,
    "prior_variance": 0.005, "regression_power": 0.3, "classification_power": 0.1, "seeds": 8, "baseline": "single-task",
}  # fmt: skip


def load(args: argparse.Namespace) -> kb.datasets.MultiTaskData:
    return kb.datasets.utkface(args.source, batch_size=args.batch_size)


def load_smoke(args: argparse.Namespace, scratch: pathlib.Path) -> kb.datasets.MultiTaskData:
    for i in range(40):
        common.write_image(scratch / f"{1 + 2 * i}_{i % 2}_{i % 5}_20170109{i:09d}.jpg.chip.jpg", seed=i)
    return kb.datasets.utkface(scratch, batch_size=args.batch_size, resize=36, image_size=32)


BENCHMARK = common.Benchmark(
    name="utkface",
    defaults=DEFAULTS,
    load=load,
    load_smoke=load_smoke,
    trunk=lambda smoke: (
        kb.models.resnet_encoder(18, dim=16, input_shape=(32, 32, 3), width=4)
        if smoke
        else kb.models.resnet_encoder(18, dim=256)
    ),
    source="--directory",
    source_help="the UTKFace folder of [age]_[gender]_[race]_[date].jpg images",
)


def main(argv: list[str] | None = None) -> dict:
    return common.run(BENCHMARK, argv)


if __name__ == "__main__":
    main()
