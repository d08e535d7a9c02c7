"""QM9 (paper §5.1, Table 1): 11 regression targets on an MPNN with set2set pooling.

    python examples/paper/qm9.py --aggregator BayesAgg --seeds 3 [--data-dir ~/tensorflow_datasets]
    python examples/paper/qm9.py --smoke          # mock data, tiny network, seconds

QM9 is not in the SPEC table: learning rate, batch size and epochs follow Navon et al. (2022),
whose protocol the paper uses; BayesAgg's γ and s_reg are its defaults. MAEs are in the original
units (energies in eV). Needs pandas (the TFDS qm9 builder imports it).
"""

from __future__ import annotations

import argparse
import pathlib

import paper_common as common

import keras_bayesagg as kb

DEFAULTS = {
    "lr": 1e-3, "weight_decay": 0.0, "epochs": 300, "batch_size": 120, "warmup_epochs": 1,
    "prior_variance": 0.005, "regression_power": 0.3, "seeds": 3, "baseline": "single-task",
}  # fmt: skip


def load(args: argparse.Namespace) -> kb.datasets.MultiTaskData:
    return kb.datasets.qm9(batch_size=args.batch_size, data_dir=args.source)


def load_smoke(args: argparse.Namespace, scratch: pathlib.Path) -> kb.datasets.MultiTaskData:
    return common.mock_tfds_data(lambda: kb.datasets.qm9(batch_size=args.batch_size), num_examples=32)


BENCHMARK = common.Benchmark(
    name="qm9",
    defaults=DEFAULTS,
    load=load,
    load_smoke=load_smoke,
    trunk=lambda smoke: kb.models.qm9_mpnn(units=8, dim=8) if smoke else kb.models.qm9_mpnn(),
)


def main(argv: list[str] | None = None) -> dict:
    return common.run(BENCHMARK, argv)


if __name__ == "__main__":
    main()
