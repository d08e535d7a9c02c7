"""Shared machinery of the paper's experiment scripts: arguments, training runs, results table, weight plot.

Each script describes its benchmark as a `Benchmark` and calls `run(benchmark)`. A run trains the
baseline (single-task or linear scalarization) and the chosen aggregator for every seed, writes
`results.md` / `results.csv` (per-task test metrics, mean ± std over seeds, Δm% against the
baseline's mean), TensorBoard logs with per-task weights, and `task_weights.png` (Fig. 3 style).

Differences from the authors' training loop, on purpose or for now: weight decay is Keras's
decoupled `Adam(weight_decay=...)`; the per-group gradient clipping (10 on heads, 5 on the trunk
after warm-up) is not applied; the tested weights are those of the epoch with the lowest
validation loss (`--no-select-best` tests the last epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_bayesagg as kb

SINGLE_TASK = "single-task"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """What differs between the paper's experiments."""

    name: str
    defaults: dict[
        str, Any
    ]  # lr, weight_decay, epochs, batch_size, warmup_epochs, prior_variance, powers, seeds, baseline
    load: Callable[[argparse.Namespace], kb.datasets.MultiTaskData]
    load_smoke: Callable[[argparse.Namespace, pathlib.Path], kb.datasets.MultiTaskData]  # mock/generated data, tiny
    trunk: Callable[[bool], keras.Model]  # smoke → a tiny version of the paper's trunk
    source: str = "--data-dir"  # or "--directory" for folder datasets
    source_help: str = "TFDS data_dir holding the prepared dataset"


def parse_args(benchmark: Benchmark, argv: list[str] | None) -> argparse.Namespace:
    d = benchmark.defaults
    parser = argparse.ArgumentParser(description=f"BayesAgg-MTL paper experiment: {benchmark.name}")
    parser.add_argument("--aggregator", default="BayesAgg", help=f"a class name in kb.aggregators, or '{SINGLE_TASK}'")
    parser.add_argument(
        "--baseline", default=d["baseline"], help=f"Δm reference: '{SINGLE_TASK}', an aggregator, or 'none'"
    )
    parser.add_argument("--seeds", type=int, default=d["seeds"], help="number of seeds (0, 1, …)")
    parser.add_argument("--epochs", type=int, default=d["epochs"])
    parser.add_argument("--batch-size", type=int, default=d["batch_size"])
    parser.add_argument("--lr", type=float, default=d["lr"])
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    parser.add_argument(
        "--warmup-epochs", type=int, default=d["warmup_epochs"], help="BayesAgg's linear-scalarization warm-up"
    )
    parser.add_argument("--prior-variance", type=float, default=d["prior_variance"], help="BayesAgg's γ")
    parser.add_argument("--regression-power", type=float, default=d.get("regression_power", 0.3))
    parser.add_argument("--classification-power", type=float, default=d.get("classification_power", 0.1))
    parser.add_argument("--num-samples", type=int, default=1024, help="BayesAgg's Monte Carlo samples S")
    parser.add_argument(benchmark.source, dest="source", default=None, help=benchmark.source_help)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(f"runs/{benchmark.name}"))
    parser.add_argument(
        "--select-best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test the weights of the epoch with the lowest validation loss (the paper early-stops on validation)",
    )
    parser.add_argument("--smoke", action="store_true", help="the whole path on mock/generated data in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds, args.batch_size, args.num_samples = 2, 1, 32, 16
        args.warmup_epochs = min(args.warmup_epochs, 1)
        if "--baseline" not in (argv or sys.argv[1:]):
            args.baseline = "LinearScalarization"
    elif args.source is None and benchmark.source == "--directory":
        parser.error("--directory is required (the dataset's folder); use --smoke to try the script on generated data")
    return args


def make_aggregator(name: str, args: argparse.Namespace, seed: int) -> kb.interface.Aggregator:
    """An aggregator by class name; BayesAgg gets the benchmark's hyper-parameters."""
    if name not in kb.aggregators.__all__:  # methods only: the interface lives in kb.interface
        raise SystemExit(f"Unknown aggregator {name!r}; choose one of {kb.aggregators.__all__} or '{SINGLE_TASK}'.")
    cls = getattr(kb.aggregators, name)
    if cls is kb.aggregators.BayesAgg:
        return cls(
            prior_variance=args.prior_variance,
            regression_power=args.regression_power,
            classification_power=args.classification_power,
            num_samples=args.num_samples,
            warmup_epochs=args.warmup_epochs,
            seed=seed,
        )
    return cls()


def _select(dataset: tf.data.Dataset, names: list[str]) -> tf.data.Dataset:
    return dataset.map(lambda x, y: (x, {n: y[n] for n in names}))


def train_and_test(
    benchmark: Benchmark,
    data: Any,
    names: list[str],
    aggregator: Any,
    args: argparse.Namespace,
    seed: int,
    log_dir: pathlib.Path,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Train one model on tasks `names`; test metrics {task: {metric: value}} (original units) and weight history."""
    keras.utils.set_random_seed(seed)
    model = kb.MultiTaskModel(benchmark.trunk(args.smoke), {n: data.tasks[n] for n in names})
    metrics = {n: m for n, m in data.metrics().items() if n in names}
    optimizer = keras.optimizers.Adam(args.lr, weight_decay=args.weight_decay or None)
    model.compile(optimizer=optimizer, aggregator=aggregator, metrics=metrics, run_eagerly=args.smoke)
    weights = kb.callbacks.TaskWeightHistory()
    callbacks = [weights, keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)]
    if args.select_best:
        callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=args.epochs, restore_best_weights=True))
    model.fit(
        _select(data.train, names),
        validation_data=_select(data.validation, names),
        epochs=args.epochs,
        verbose=0,
        callbacks=callbacks,
        shuffle=False,  # the training pipeline shuffles itself, reproducibly from the seed
    )
    logs = model.evaluate(_select(data.test, names), return_dict=True, verbose=0)
    scores: dict[str, dict[str, float]] = {}
    for name in names:
        for metric in metrics[name]:
            key = f"{name}_{metric.name}"
            value = float(logs[key if key in logs else metric.name])  # Keras drops the prefix for one output
            if name in data.target_scale and metric.name == "mae":
                value *= data.target_scale[name][1]  # MAE of z-scores × std = MAE in the original units
            scores.setdefault(name, {})[metric.name] = value
    return scores, weights.history


def run_method(benchmark: Benchmark, data: Any, method: str, args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    logs = args.out / "tensorboard" / method / f"seed{seed}"
    if method != SINGLE_TASK:
        return train_and_test(benchmark, data, list(data.tasks), make_aggregator(method, args, seed), args, seed, logs)
    scores: dict[str, dict[str, float]] = {}
    for name in data.tasks:
        part, _ = train_and_test(benchmark, data, [name], kb.aggregators.LinearScalarization(), args, seed, logs / name)
        scores.update(part)
    return scores, {}


def mock_tfds_data(load: Callable[[], Any], num_examples: int) -> Any:
    """A TFDS loader's MultiTaskData on mock examples (no download), its splits cached so that
    later passes over them do not need the mock any more."""
    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load()
        cached = {split: getattr(data, split).cache() for split in ("train", "validation", "test")}
        return kb.datasets.MultiTaskData(**{**vars(data), **cached})


def write_image(path: pathlib.Path, seed: int, size: int = 40, png: bool = False) -> None:
    """A small random RGB image file, for the smoke runs' generated folders."""
    pixels = tf.random.stateless_uniform((size, size, 3), seed=(seed, 0), maxval=256, dtype=tf.int32)
    encoded = (tf.io.encode_png if png else tf.io.encode_jpeg)(tf.cast(pixels, tf.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.numpy())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_results(results: dict[str, list[dict]], data: Any, args: argparse.Namespace) -> list[list[str]]:
    """results.md and results.csv: per-task metric mean ± std over seeds and Δm% against the baseline's mean."""
    columns = [(task, metric) for task, metrics in next(iter(results.values()))[0].items() for metric in metrics]
    baseline = results.get(args.baseline)
    reference = (
        None
        if baseline is None
        else {t: {m: _mean_std([r[t][m] for r in baseline])[0] for m in ms} for t, ms in baseline[0].items()}
    )
    rows, csv_rows = [], []
    for method, runs in results.items():
        cells = []
        for task, metric in columns:
            mean, std = _mean_std([r[task][metric] for r in runs])
            cells.append(f"{mean:.4g} ± {std:.2g}")
            csv_rows.append([method, task, metric, mean, std, len(runs)])
        delta = "—"
        if reference is not None and method != args.baseline:
            try:
                mean, std = _mean_std([kb.metrics.delta_m(r, reference, data.higher_is_better) for r in runs])
            except ValueError as error:  # e.g. an AUC of 0 on a split without positives
                delta = f"n/a ({error})"
            else:
                delta = f"{mean:+.2f} ± {std:.2f}"
                csv_rows.append([method, "all", "delta_m_percent", mean, std, len(runs)])
        rows.append([method, *cells, delta])
    header = ["method", *[f"{t} {m}" for t, m in columns], f"Δm% vs {args.baseline} (↓)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    with (args.out / "results.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["method", "task", "metric", "mean", "std", "seeds"], *csv_rows])
    return [header, *rows]


def plot_weights(history: dict[str, list[float]], title: str, path: pathlib.Path) -> pathlib.Path | None:
    """Per-task weights over training (the paper's Fig. 3 view); needs the `plots` extra (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("task_weights.png skipped: matplotlib is missing; pip install 'keras-bayesagg[plots]'.", file=sys.stderr)
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for unit, values in history.items():
        axes.plot(range(1, len(values) + 1), values, label=unit)
    axes.set(xlabel="epoch", ylabel="mean task weight", title=title)
    if len(history) <= 20:
        axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run(benchmark: Benchmark, argv: list[str] | None = None) -> dict[str, Any]:
    """The whole experiment; returns the results per method and seed, and the files written."""
    args = parse_args(benchmark, argv)
    started = time.perf_counter()
    methods = [m for m in dict.fromkeys([args.baseline, args.aggregator]) if m != "none"]
    for method in methods:  # an unknown name stops here, before any data is read
        if method != SINGLE_TASK:
            make_aggregator(method, args, 0)
    with contextlib.ExitStack() as stack:
        if args.smoke:
            scratch = pathlib.Path(stack.enter_context(__import__("tempfile").TemporaryDirectory()))
            data = benchmark.load_smoke(args, scratch)
        else:
            data = benchmark.load(args)
        results: dict[str, list[dict]] = {m: [] for m in methods}
        histories: dict[str, dict[str, list[float]]] = {}
        for seed in range(args.seeds):
            for method in methods:
                scores, history = run_method(benchmark, data, method, args, seed)
                results[method].append(scores)
                histories.setdefault(method, history)
    table = write_results(results, data, args)
    history = histories.get(args.aggregator)
    plot = (
        plot_weights(history, f"{benchmark.name}: {args.aggregator}", args.out / "task_weights.png")
        if history
        else None
    )
    print((args.out / "results.md").read_text() + f"({time.perf_counter() - started:.0f} s; files in {args.out})")
    return {"results": results, "table": table, "plot": plot, "out": args.out, "histories": histories}
