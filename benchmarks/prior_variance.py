"""BayesAgg with the paper's fixed prior variance γ=0.005 vs γ="auto" (evidence), against linear scalarization.

For each data set and method (mean over seeds) it prints the held-out metrics, Δm% and, for BayesAgg, the
cosine between BayesAgg's representation gradient ∂/∂h [B, D] and linear scalarization's (Σ_k G[:, k] / B)
on held-out batches, right after warm-up (after the last warm-up epoch's prior refresh) and at the end of
training. Both gradients come from the same trained model on the same batch: only the aggregation differs.

Data sets: the embedded penguins data (the demo's tasks, trunk, optimizer and warm-up) and synthetic
multi-task data (a random 2-layer teacher, 2 regression targets with noise variance 1, 4 binary tasks) with
N training rows. Prints figures only.

    python benchmarks/prior_variance.py [--seeds 3] [--penguin-epochs 80] [--sizes 500,2000,10000,50000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # predict's retracing notes (one model per run)

import keras_bayesagg as kb  # noqa: E402
from keras_bayesagg.aggregators.base import AggregatorInputs, sum_of_losses_gradient  # noqa: E402
from keras_bayesagg.data import load_penguins  # noqa: E402
from keras_bayesagg.engine import gradients  # noqa: E402
from keras_bayesagg.labels import prepare_labels  # noqa: E402

LS, FIXED, AUTO = "linear scalarization", "BayesAgg (γ=0.005)", "BayesAgg (γ=auto)"
NUM_SAMPLES = 64
# Synthetic data: epochs per training-set size (a fixed budget; fewer epochs for larger N).
SYNTHETIC_EPOCHS = {500: 60, 2000: 30, 10000: 12, 50000: 5}
SYNTHETIC_WARMUP, SYNTHETIC_BATCH, SYNTHETIC_TEST_ROWS, SYNTHETIC_FEATURES = 2, 128, 4096, 16


@dataclass(frozen=True)
class Problem:
    """One data set: arrays, task kinds, how to score the test split, and the training setup."""

    name: str
    x_train: np.ndarray
    y_train: dict[str, np.ndarray]
    x_test: np.ndarray
    y_test: dict[str, np.ndarray]
    tasks: dict[str, Callable[[], kb.tasks.Task]]
    higher_is_better: dict[str, bool]
    units: dict[str, str]
    score: Callable[[dict[str, np.ndarray]], dict[str, float]]
    epochs: int
    warmup_epochs: int
    batch_size: int


@dataclass
class RunResult:
    """Test scores, cosines (BayesAgg only) and the chosen γ (auto only) of one training run."""

    scores: dict[str, float]
    cosine_warmup: float | None = None
    cosine_end: float | None = None
    chosen: dict[str, float] | None = None


# ---------------------------------------------------------------------------------------------------- data
def penguins_problem(epochs: int) -> Problem:
    """The demo's problem: species (3 classes), sex (binary), body mass and flipper length (regression)."""
    data = load_penguins()

    def score(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        truth, scores = data.y_test, {}
        for name, predicted in predictions.items():  # the tasks of the model (one for single-task)
            if name == "species":
                scores[name] = float(np.mean(np.argmax(predicted, axis=1) == truth[name]))
            elif name == "sex":
                scores[name] = float(np.mean((predicted[:, 0] > 0.5) == (truth[name] > 0.5)))
            else:
                std = data.target_scale[name][1]
                scores[name] = float(np.sqrt(np.mean((predicted[:, 0] - truth[name]) ** 2)) * std)
        return scores

    return Problem(
        name=f"Palmer penguins ({len(data.x_train)} train / {len(data.x_test)} test rows)",
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        tasks={
            "species": lambda: kb.tasks.Multiclass(3),
            "sex": lambda: kb.tasks.Binary(1),
            "body_mass": lambda: kb.tasks.Regression(),
            "flipper_length": lambda: kb.tasks.Regression(),
        },
        higher_is_better={"species": True, "sex": True, "body_mass": False, "flipper_length": False},
        units={"species": "acc", "sex": "acc", "body_mass": "RMSE g", "flipper_length": "RMSE mm"},
        score=score,
        epochs=epochs,
        warmup_epochs=10,
        batch_size=32,
    )


def synthetic_pool(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [rows, 16] ~ N(0, I); a random teacher 16 → 32 (tanh) → 6 gives 2 regression targets (signal scaled to
    unit variance, plus N(0, 1) noise) and 4 binary labels ~ Bernoulli(sigmoid(2·standardized logit))."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(SYNTHETIC_FEATURES, 32)) / np.sqrt(SYNTHETIC_FEATURES)
    b1 = rng.normal(size=32) * 0.5
    w2 = rng.normal(size=(32, 6)) / np.sqrt(32)
    x = rng.normal(size=(rows, SYNTHETIC_FEATURES))
    out = np.tanh(x @ w1 + b1) @ w2
    out = (out - out.mean(axis=0)) / out.std(axis=0)
    regression = out[:, :2] + rng.normal(size=(rows, 2))
    binary = (rng.random((rows, 4)) < 1.0 / (1.0 + np.exp(-2.0 * out[:, 2:]))).astype("float32")
    return x.astype("float32"), regression.astype("float32"), binary


def synthetic_problem(rows: int, pool: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Problem:
    """The first `rows` rows of the pool for training, its last SYNTHETIC_TEST_ROWS rows for testing."""
    x, regression, binary = pool
    test = slice(len(x) - SYNTHETIC_TEST_ROWS, len(x))

    def labels(part: slice) -> dict[str, np.ndarray]:
        return {"regression": regression[part], "binary": binary[part]}

    truth = labels(test)

    def score(predictions: dict[str, np.ndarray]) -> dict[str, float]:
        scores = {
            f"reg{k}": float(np.sqrt(np.mean((predictions["regression"][:, k] - truth["regression"][:, k]) ** 2)))
            for k in range(2)
        }
        for k in range(4):
            scores[f"bin{k}"] = float(np.mean((predictions["binary"][:, k] > 0.5) == (truth["binary"][:, k] > 0.5)))
        return scores

    names = [f"reg{k}" for k in range(2)] + [f"bin{k}" for k in range(4)]
    return Problem(
        name=f"Synthetic, N={rows} training rows ({SYNTHETIC_TEST_ROWS} test rows)",
        x_train=x[:rows],
        y_train=labels(slice(0, rows)),
        x_test=x[test],
        y_test=truth,
        tasks={"regression": lambda: kb.tasks.Regression(2), "binary": lambda: kb.tasks.Binary(4)},
        higher_is_better={name: name.startswith("bin") for name in names},
        units={name: "RMSE" if name.startswith("reg") else "acc" for name in names},
        score=score,
        epochs=SYNTHETIC_EPOCHS[rows],
        warmup_epochs=SYNTHETIC_WARMUP,
        batch_size=SYNTHETIC_BATCH,
    )


# ---------------------------------------------------------------------------------------------------- training
def build_model(problem: Problem, seed: int) -> kb.MultiTaskModel:
    """The demo's trunk Dense(64, elu) → Dense(32, elu) and one linear head per task."""
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential(
        [
            keras.Input((problem.x_train.shape[1],)),
            keras.layers.Dense(64, activation="elu"),
            keras.layers.Dense(32, activation="elu"),
        ],
        name="trunk",
    )
    return kb.MultiTaskModel(trunk, {name: make() for name, make in problem.tasks.items()})


def bayesagg(prior_variance: float | str, warmup_epochs: int) -> kb.BayesAgg:
    """The demo's (paper's UTKFace) settings with the given γ."""
    return kb.BayesAgg(
        prior_variance=prior_variance,
        regression_power=0.3,
        classification_power=0.1,
        num_samples=NUM_SAMPLES,
        warmup_epochs=warmup_epochs,
        seed=0,
    )


def gradient_cosine(model: kb.MultiTaskModel, problem: Problem) -> float:
    """Mean over held-out batches (of the training batch size) of cos(BayesAgg's ∂/∂h, linear scalarization's)."""
    cosines = []
    for start in range(0, len(problem.x_test) - problem.batch_size + 1, problem.batch_size):
        part = slice(start, start + problem.batch_size)
        labels = prepare_labels(model.task_specs, {name: y[part] for name, y in problem.y_test.items()})
        h = tf.cast(model.trunk(problem.x_test[part], training=False), tf.float32)
        logits = {name: head(h) for name, head in model.heads.items()}
        kernels = {name: head.kernel_and_bias()[0] for name, head in model.heads.items()}
        inputs = AggregatorInputs(
            losses=tf.reduce_mean(gradients.per_sample_unit_losses(model.task_specs, labels, logits), axis=0),
            representation=h,
            task_gradients=gradients.per_sample_task_gradients(model.task_specs, labels, logits, kernels),
            labels=labels,
            head_weights=model.head_weights(),
        )
        bayes = tf.reshape(model.aggregator.aggregate(inputs).representation_gradient, [-1]).numpy()  # no commit
        linear = tf.reshape(sum_of_losses_gradient(inputs), [-1]).numpy()
        cosines.append(float(bayes @ linear / (np.linalg.norm(bayes) * np.linalg.norm(linear) + 1e-30)))
    return statistics.mean(cosines)


class CosineAfterWarmup(keras.callbacks.Callback):
    """Measures the cosine at the end of the last warm-up epoch, after the model's own epoch-end hooks (the
    prior refresh): `fit` runs those before user callbacks, so BayesAgg is live from here on."""

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem
        self.cosine: float | None = None

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch + 1 == self.problem.warmup_epochs:
            if int(self.model.aggregator.completed_epochs.numpy()) < self.problem.warmup_epochs:
                raise RuntimeError("BayesAgg is still in warm-up: the cosine would be 1 by construction.")
            self.cosine = gradient_cosine(self.model, self.problem)


def train(problem: Problem, task_names: list[str], method: str, seed: int) -> RunResult:
    """Train one model with `method` ("single-task" trains `task_names` with linear scalarization)."""
    sub = dataclasses.replace(problem, tasks={name: problem.tasks[name] for name in task_names})
    model = build_model(sub, seed)
    if method in (LS, "single-task"):
        aggregator: kb.interface.Aggregator = kb.aggregators.LinearScalarization()
    else:
        aggregator = bayesagg(0.005 if method == FIXED else "auto", problem.warmup_epochs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), aggregator=aggregator, jit_compile=False)
    labels = {name: problem.y_train[name] for name in task_names}
    dataset = (
        tf.data.Dataset.from_tensor_slices((problem.x_train, labels))
        .shuffle(len(problem.x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(problem.batch_size)
    )
    callbacks = [CosineAfterWarmup(sub)] if method in (FIXED, AUTO) else []
    model.fit(dataset, epochs=problem.epochs, verbose=0, shuffle=False, callbacks=callbacks)
    predictions = model.predict(problem.x_test, verbose=0, batch_size=1024)
    result = RunResult(scores=problem.score(predictions))
    if method in (FIXED, AUTO):
        result.cosine_warmup = callbacks[0].cosine
        result.cosine_end = gradient_cosine(model, sub)
    if method == AUTO:
        result.chosen = model.aggregator.chosen_prior_variances()
    return result


# ---------------------------------------------------------------------------------------------------- report
def run_problem(problem: Problem, seeds: int, single_task: bool) -> dict[str, list[RunResult]]:
    """All methods on one problem, `seeds` seeds each; prints one table."""
    started = time.perf_counter()
    task_names = list(problem.tasks)
    methods = (["single-task"] if single_task else []) + [LS, FIXED, AUTO]
    runs: dict[str, list[RunResult]] = {method: [] for method in methods}
    for seed in range(seeds):
        for method in methods:
            if method == "single-task":
                scores: dict[str, float] = {}
                for name in task_names:
                    scores.update(train(problem, [name], method, seed).scores)
                runs[method].append(RunResult(scores))
            else:
                runs[method].append(train(problem, task_names, method, seed))
    print_table(problem, runs, seeds, time.perf_counter() - started)
    return runs


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def print_table(problem: Problem, runs: dict[str, list[RunResult]], seeds: int, seconds: float) -> None:
    """Method, metrics, Δm% vs linear scalarization (and vs single-task when trained), cosines; then γ of auto."""
    metric_names = list(next(iter(runs.values()))[0].scores)
    mean = {m: {n: statistics.mean(r.scores[n] for r in rs) for n in metric_names} for m, rs in runs.items()}
    with_single = "single-task" in runs
    print(
        f"\n{problem.name}: mean over {seeds} seeds, {problem.epochs} epochs (warm-up {problem.warmup_epochs}), "
        f"batch {problem.batch_size}, {seconds:.0f} s"
    )
    labels = {n: f"{n} ({problem.units[n]})" for n in metric_names}
    width = max(len(label) for label in labels.values()) + 2
    header = f"{'method':22}" + "".join(f"{labels[n]:>{width}}" for n in metric_names)
    header += f"{'Δm% vs LS':>11}" + (f"{'Δm% vs ST':>11}" if with_single else "")
    header += f"{'cos warm-up':>13}{'cos end':>10}"
    print(header)
    print("-" * len(header))
    for method, scores in mean.items():
        row = f"{method:22}" + "".join(f"{scores[n]:{width}.4f}" for n in metric_names)
        versus_ls = kb.metrics.delta_m(scores, mean[LS], problem.higher_is_better)
        row += "" if method == "single-task" else f"{versus_ls:+11.2f}"
        row += f"{'':11}" if method == "single-task" else ""
        if with_single:
            versus_st = kb.metrics.delta_m(scores, mean["single-task"], problem.higher_is_better)
            row += f"{'':11}" if method == "single-task" else f"{versus_st:+11.2f}"
        cos_w = mean_or_none([r.cosine_warmup for r in runs[method]])
        cos_e = mean_or_none([r.cosine_end for r in runs[method]])
        row += f"{'—':>13}{'—':>10}" if cos_w is None else f"{cos_w:13.3f}{cos_e:10.3f}"
        print(row)
    cos_spread = [
        f"{m}: warm-up {[round(r.cosine_warmup, 3) for r in runs[m]]}, end {[round(r.cosine_end, 3) for r in runs[m]]}"
        for m in (FIXED, AUTO)
    ]
    print("  cosines per seed — " + "; ".join(cos_spread))
    chosen = [r.chosen for r in runs[AUTO]]
    groups = list(chosen[0])
    print(
        "  γ chosen by auto (mean over seeds [min, max]): "
        + ", ".join(
            f"{g} {statistics.mean(c[g] for c in chosen):.3g} [{min(c[g] for c in chosen):.3g}, "
            f"{max(c[g] for c in chosen):.3g}]"
            for g in groups
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--penguin-epochs", type=int, default=80)
    parser.add_argument("--sizes", default=",".join(str(n) for n in SYNTHETIC_EPOCHS), help="synthetic N values")
    parser.add_argument("--synthetic-epochs", default="", help='override epochs per N, e.g. "500:60,2000:30"')
    parser.add_argument("--skip-penguins", action="store_true")
    args = parser.parse_args()
    for item in filter(None, args.synthetic_epochs.split(",")):
        rows, epochs = item.split(":")
        SYNTHETIC_EPOCHS[int(rows)] = int(epochs)

    started = time.perf_counter()
    print(
        f"BayesAgg: s_reg=0.3, s_cls=0.1, num_samples={NUM_SAMPLES}, moments='exact', seed=0; Adam(3e-3); "
        "trunk Dense(64, elu) → Dense(32, elu); jit_compile=False. Cosine: held-out batches of the training batch "
        "size, BayesAgg's aggregate() vs Σ_k G[:, k]/B on the same model; Δm% lower is better."
    )
    if not args.skip_penguins:
        run_problem(penguins_problem(args.penguin_epochs), args.seeds, single_task=True)
    sizes = [int(n) for n in args.sizes.split(",") if n]
    if sizes:
        pool = synthetic_pool(max(SYNTHETIC_EPOCHS) + SYNTHETIC_TEST_ROWS)  # the same data whatever --sizes
        print(f"\nSynthetic epochs per N: { {n: SYNTHETIC_EPOCHS[n] for n in sizes} }")
        for rows in sizes:
            run_problem(synthetic_problem(rows, pool), args.seeds, single_task=False)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
