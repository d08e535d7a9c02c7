"""ChestX-ray14 (paper §5.2, Table 2): 14 binary findings on ResNet-34, patient-wise 70/10/20 split.

    python examples/paper/chestxray14.py --directory ~/data/nih --aggregator BayesAgg --seeds 3
    python examples/paper/chestxray14.py --smoke   # generated images, tiny network, seconds

`--directory` holds Data_Entry_2017.csv and the PNGs (any subfolders). Δm% uses the per-finding
test AUC-ROC against single-task models (14 of them per seed), as in the paper.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import paper_common as common

import keras_bayesagg as kb

DEFAULTS = {  # SPEC table: ChestX-ray14
    "lr": 1e-3, "weight_decay": 0.0, "epochs": 100, "batch_size": 256, "warmup_epochs": 1,
    "prior_variance": 0.005, "classification_power": 5e-4, "seeds": 3, "baseline": "single-task",
}  # fmt: skip


def load(args: argparse.Namespace) -> kb.datasets.MultiTaskData:
    return kb.datasets.chestxray14(args.source, batch_size=args.batch_size)


def load_smoke(args: argparse.Namespace, scratch: pathlib.Path) -> kb.datasets.MultiTaskData:
    findings = kb.datasets.CHESTXRAY14_FINDINGS
    rows = []
    for i in range(36):
        name = f"{i // 2 + 1:08d}_{i % 2:03d}.png"
        common.write_image(scratch / "images_001" / "images" / name, seed=i, png=True)
        labels = "|".join(f for k, f in enumerate(findings) if (i + k) % 2 == 0)  # each patient: every finding once
        rows.append([name, labels, i % 2, i // 2 + 1])
    with (scratch / "Data_Entry_2017.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["Image Index", "Finding Labels", "Follow-up #", "Patient ID"], *rows])
    return kb.datasets.chestxray14(scratch, batch_size=args.batch_size, resize=36, image_size=32)


BENCHMARK = common.Benchmark(
    name="chestxray14",
    defaults=DEFAULTS,
    load=load,
    load_smoke=load_smoke,
    trunk=lambda smoke: (
        kb.models.resnet_encoder(34, dim=16, input_shape=(32, 32, 3), width=4)
        if smoke
        else kb.models.resnet_encoder(34, dim=256, input_shape=(224, 224, 3))
    ),
    source="--directory",
    source_help="the NIH folder with Data_Entry_2017.csv and the images",
)


def main(argv: list[str] | None = None) -> dict:
    return common.run(BENCHMARK, argv)


if __name__ == "__main__":
    main()
