"""Many-class heads with BayesAgg(multiclass_posterior="kronecker"): step time against linear scalarization
(same run) and end metrics of the full and the Kronecker posterior on a many-class task trained here.

    python benchmarks/many_classes.py --steps 10 --repeats 3     # step times, C=100/D=64 and C=1000/D=256
    python benchmarks/many_classes.py --metrics --seeds 2         # end metrics, full vs Kronecker (C=40)

Step times: the small conv trunk of `step_time.py` (32×32×3 inputs, representation D), a regression task and
one `Multiclass(C)` head, batch 128, median of `--steps` compiled steps, repeated `--repeats` times with the
ratio taken within each repeat (the machine is shared). The full posterior is refused at these shapes
(`memory_limit_gb=4`), so it is not timed. Monte Carlo draws cost O(S/K·C²·D + S·B·C·D) per step (K draws per
class rotation of the noise, `kronecker_draws_per_rotation`): S and K are printed.

End metrics: a synthetic task with signal (a teacher network): inputs x ∈ R^20, y_reg = teacher regression
output + noise, y_cls = argmax of C teacher logits + Gumbel noise; a two-layer ELU trunk (D=32); Adam, 8
epochs, warm-up 1; held-out accuracy, negative log-likelihood and regression MSE, for the full GGN posterior
and the Kronecker one (with K = 1 and 16 draws per class rotation), and linear scalarization as the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from step_time import Preset, time_train_steps  # noqa: E402

import keras_bayesagg as kb  # noqa: E402

# classes, D, draws S, draws per class rotation K (docs/benchmarks.md: S and K against cost and moment noise)
SHAPES = {"C=100, D=64": (100, 64, 64, 2), "C=1000, D=256": (1000, 256, 16, 16)}


def step_times(steps: int, repeats: int) -> None:
    print(f"# median seconds per step over {steps} steps, {repeats} repeats; conv trunk, B=128; {os.cpu_count()} cores")
    print(f"{'shape':16} {'S':>5} {'K':>3} {'LS':>8} {'kronecker':>10} {'ratio':>6}")
    for label, (classes, dim, draws, reuse) in SHAPES.items():
        preset = Preset(128, dim, f"reg:1,mc:{classes}", trunk="conv", xla=False)
        ratios, linear_times, kronecker_times = [], [], []
        for _ in range(repeats):
            linear = time_train_steps(kb.aggregators.LinearScalarization(), preset, steps, False)
            aggregator = kb.BayesAgg(
                warmup_epochs=0,
                num_samples=draws,
                seed=0,
                multiclass_posterior="kronecker",
                kronecker_draws_per_rotation=reuse,
            )
            kronecker = time_train_steps(aggregator, preset, steps, False)
            ratios.append(kronecker / linear)
            linear_times.append(linear)
            kronecker_times.append(kronecker)
        print(
            f"{label:16} {draws:5d} {reuse:3d} {statistics.median(linear_times):8.4f} {statistics.median(kronecker_times):10.4f} "
            f"{statistics.median(ratios):6.2f}   (ratios per repeat: {', '.join(f'{r:.2f}' for r in ratios)})",
            flush=True,
        )


def teacher_data(classes: int, rows: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1234)  # the same teacher for every split and seed
    hidden = rng.normal(size=(20, 32)) / np.sqrt(20)
    readout = rng.normal(size=(32, classes + 1)) * 1.5
    data_rng = np.random.default_rng(seed)
    x = data_rng.normal(size=(rows, 20)).astype("float32")
    z = np.tanh(x @ hidden) @ readout
    labels = {
        "value": (z[:, 0] + 0.5 * data_rng.normal(size=rows)).astype("float32"),
        "kind": np.argmax(z[:, 1:] + data_rng.gumbel(size=(rows, classes)), axis=1).astype("int32"),
    }
    return x, labels


VARIANTS = ("linear scalarization", "BayesAgg full", "BayesAgg kronecker", "BayesAgg kronecker K=16")


def end_metrics(classes: int, seeds: int, epochs: int, draws: int, variants: tuple[str, ...] = VARIANTS) -> None:
    x_train, y_train = teacher_data(classes, 4096, seed=0)
    x_test, y_test = teacher_data(classes, 2048, seed=1)
    print(f"# C={classes}, D=32, 4096 training rows, {epochs} epochs, S={draws}; medians over {seeds} seeds")
    print(f"{'aggregator':22} {'accuracy':>9} {'NLL':>8} {'MSE':>8} {'s/epoch':>8}")
    for label in variants:
        accuracy, nll, mse, seconds = [], [], [], []
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            trunk = keras.Sequential(
                [keras.Input((20,)), keras.layers.Dense(64, activation="elu"), keras.layers.Dense(32, activation="elu")]
            )
            model = kb.MultiTaskModel(trunk, {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(classes)})
            if label == "linear scalarization":
                aggregator = kb.aggregators.LinearScalarization()
            else:
                posterior, *reuse = label.split()[1:]
                aggregator = kb.BayesAgg(
                    warmup_epochs=1,
                    num_samples=draws,
                    seed=seed,
                    multiclass_posterior=posterior,
                    memory_limit_gb=None,
                    kronecker_draws_per_rotation=int(reuse[0][2:]) if reuse else 1,
                )
            model.compile(optimizer=keras.optimizers.Adam(1e-3), aggregator=aggregator)
            start = time.perf_counter()
            model.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=0, shuffle=True)
            seconds.append((time.perf_counter() - start) / epochs)
            predictions = model.predict(x_test, batch_size=512, verbose=0)
            probabilities = np.clip(predictions["kind"], 1e-7, 1.0)
            accuracy.append(float(np.mean(np.argmax(probabilities, 1) == y_test["kind"])))
            nll.append(float(-np.mean(np.log(probabilities[np.arange(len(x_test)), y_test["kind"]]))))
            mse.append(float(np.mean((predictions["value"][:, 0] - y_test["value"]) ** 2)))
        print(
            f"{label:22} {statistics.median(accuracy):9.4f} {statistics.median(nll):8.4f} "
            f"{statistics.median(mse):8.4f} {statistics.median(seconds):8.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", action="store_true", help="end metrics instead of step times")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(2)
    if args.metrics:
        end_metrics(args.classes, args.seeds, args.epochs, args.num_samples, tuple(args.variants.split(",")))
    else:
        step_times(args.steps, args.repeats)


if __name__ == "__main__":
    main()
