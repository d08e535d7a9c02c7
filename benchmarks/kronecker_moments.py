"""Cost and Monte Carlo noise of the Kronecker posterior's moments, against this machine's matmul rate.

    python benchmarks/kronecker_moments.py                       # C=1000/D=256 and C=100/D=64, B=128
    python benchmarks/kronecker_moments.py --shapes 1000:256 --draws 8,16,32 --reuse 1,4,8,16

A many-class head on synthetic features (a fixed random teacher head W, features with a decaying spectrum,
4096 rows for the full-data prior, γ = 0.005 as BayesAgg's default), its batch posterior of B rows, then
for each S (`--draws`) and K (`--reuse`, draws per rotated noise matrix; K = 1 is the paper's estimator):
the per-step time in graph mode (posterior + moments, the code `KroneckerGroup.moments` runs), the arithmetic
counted from the shapes, the achieved rate against a 1024³ float32 matmul measured in the same run, and the
noise of the moments: relative RMS error over `--seeds` seeds of E[g] and Var[g] against a reference of
`--reference` draws in independent antithetic pairs (K = 2: the linear part of the noise cancels). Then what the
trunk receives: the head's moments combined with those of a regression task on the same features (exact moments of
a Bayesian linear head, target h·v + N(0, 1), γ = 0.005; its loss scaled by each of `--task-scales`, which moves the
head's weight α and its part of the result) by BayesAgg's rule (`inverse_variance_aggregate`, s_reg 0.3, s_cls 0.1):
"agg ×c" is the relative RMS error of the per-row aggregated gradient [B, D] against the same rule on the reference
moments, "·√ms" that error × √(step ms), which compares K at equal time (at fixed K the Monte Carlo error falls as
1/√S and the time grows as S). `--full` also compares, on a head small enough for the full GGN, the Kronecker
moments (both estimators) with the full path's. The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from flop_model import matmul_rate  # noqa: E402

from keras_bayesagg.bayes import classification, kronecker, kronecker_draws, regression  # noqa: E402
from keras_bayesagg.bayes.aggregation import inverse_variance_aggregate  # noqa: E402

GAMMA = 0.005
POWERS = (0.3, 0.1)  # BayesAgg's s_reg, s_cls: the regression task first, then the head


def head_problem(classes: int, dim: int, batch: int, dtype: tf.DType = tf.float32, rows: int = 4096, seed: int = 0):
    """Features, labels, head and the Kronecker full-data prior of a synthetic many-class task."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(dim))
    h = rng.normal(size=(rows + batch, dim)) * spectrum + 0.3
    w = rng.normal(size=(classes, dim + 1)) * 0.5 / np.sqrt(dim)
    logits = np.concatenate([h, np.ones((len(h), 1))], 1) @ w.T
    y = np.argmax(logits + rng.gumbel(size=logits.shape), 1)
    h, labels, w = tf.constant(h, dtype), tf.one_hot(y, classes, dtype=dtype), tf.constant(w, dtype)
    factors = kronecker.kronecker_factors(h[:rows], labels[:rows], w)
    basis = kronecker.kronecker_basis(factors)
    curvature = kronecker.eigenbasis_curvature(h[:rows], w, basis)
    prior = kronecker.full_data_posterior(factors, curvature, basis, w, GAMMA)
    return h[rows:], labels[rows:], w, basis, prior, (h[:rows], labels[:rows])


def step_flop(classes: int, dim: int, batch: int, draws: int, reuse: int) -> float:
    """Multiply-adds ×2 of `rotated_batch_posterior` + `draw_moments` (dominant products only)."""
    n = dim + 1
    posterior = 2 * batch * n * n + 4 * classes * n * n + 2 * batch * n * classes + 6 * batch * classes**2
    posterior += 2 * 2 * batch * classes * n + 2 * 2 * classes**2 * n
    forward = 2 * batch * classes * n * (draws if reuse == 1 else draws // 2 + 1)  # antithetic logits are free
    moments = (draws // reuse) * 2 * classes**2 * n + forward + draws * (2 * batch * classes * n + 2 * batch * n * dim)
    return posterior + moments


def regression_moments(batch: tf.Tensor, rows: tf.Tensor, seed: int = 1) -> regression.GradientMoments:
    """Exact gradient moments [B, 1, D] of a regression task on the same features (BayesAgg's regression rule)."""
    rng = np.random.default_rng(seed)
    direction = tf.constant(rng.normal(size=(batch.shape[1], 1)) / np.sqrt(batch.shape[1]), batch.dtype)
    target_rows, targets = (x @ direction + tf.constant(rng.normal(size=(len(x), 1)), x.dtype) for x in (rows, batch))
    prior = regression.full_data_posterior(
        tf.matmul(rows, rows, transpose_a=True), tf.matmul(rows, target_rows, transpose_a=True), GAMMA
    )
    posterior = regression.batch_posterior(
        prior.precision, tf.matmul(prior.precision, prior.mean, transpose_b=True), batch, targets
    )
    return regression.gradient_moments(posterior, batch, targets)


def aggregate(task: regression.GradientMoments, head: regression.GradientMoments) -> tuple[np.ndarray, float, float]:
    """BayesAgg's per-row trunk gradient [B, D] from the two tasks' moments, the head's mean weight and the
    head's part of the gradient's norm (‖α·E[g]‖ / ‖gradient‖)."""
    means = tf.concat([task.mean, head.mean], 1)
    combined = inverse_variance_aggregate(means, tf.concat([task.variance, head.variance], 1), tf.constant(POWERS))
    part = tf.norm(combined.weights[:, 1] * head.mean[:, 0]) / tf.norm(combined.gradient)
    return combined.gradient.numpy(), float(tf.reduce_mean(combined.weights[:, 1])), float(part)


def relative_rms(estimates: list[np.ndarray], reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean([np.sum((e - reference) ** 2) for e in estimates]) / np.sum(reference**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1000:256,100:64", help="C:D pairs")
    parser.add_argument("--draws", default="8,16,32")
    parser.add_argument("--reuse", default="1,2,8,16")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--reference", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--task-scales", default="0.01,0.1,1,10", help="sizes of the regression task's loss (×c: mean ×c, Var ×c²)"
    )
    parser.add_argument("--full", action="store_true", help="also compare with the full GGN on C=20, D=16")
    parser.add_argument("--precision", action="store_true", help="also float32 against float64 at each shape")
    args = parser.parse_args()
    scales = [float(c) for c in args.task_scales.split(",")]
    tf.config.threading.set_inter_op_parallelism_threads(2)
    rate = matmul_rate(10)
    print(f"# float32 matmul (1024³, XLA): {rate:.1f} GFLOP/s, {os.cpu_count()} cores; load {os.getloadavg()}")
    for shape in args.shapes.split(","):
        classes, dim = (int(v) for v in shape.split(":"))
        h, y, w, basis, prior, (rows, _) = head_problem(classes, dim, args.batch)
        task = regression_moments(h, rows)
        tasks = [regression.GradientMoments(c * task.mean, c * c * task.variance) for c in scales]
        inputs = (h, y, w, basis.classes, basis.features, prior.precision, prior.mean, None)
        mean, precision, _ = kronecker_draws.rotated_batch_posterior(*inputs)
        scale = tf.math.rsqrt(precision)

        def moments(draws: int, reuse: int, seed: int):
            return kronecker_draws.draw_moments(
                mean, scale, basis.classes, basis.features, h, y, draws, tf.constant([seed, 17]), reuse
            )

        if args.precision:
            compare_precision(classes, dim, args.batch, args.reference)
        reference, second = moments(args.reference, 2, 999), moments(args.reference, 2, 998)
        print(
            f"C={classes}, D={dim}, B={args.batch}; reference: {args.reference} draws in independent antithetic pairs"
        )
        references = [aggregate(task, reference) for task in tasks]
        for c, task, (gradient, share, part) in zip(scales, tasks, references):
            floor = relative_rms([aggregate(task, second)[0]], gradient)
            print(
                f"aggregate with the regression task ×{c:g}: head's α {share:.3f}, head's part of the norm {part:.3f}; "
                f"a second reference differs by {floor:.4f}"
            )
        columns = "".join(f" {f'agg ×{c:g}':>9} {'·√ms':>6}" for c in scales)
        print(
            f"{'S':>5} {'K':>4} {'GFLOP':>7} {'ms':>8} {'GFLOP/s':>8} {'of peak':>7} {'err E[g]':>9} {'err Var':>8}"
            + columns
        )
        for draws in (int(v) for v in args.draws.split(",")):
            for reuse in (int(v) for v in args.reuse.split(",")):
                if draws % reuse:
                    continue

                @tf.function(autograph=False)
                def step(seed, draws=draws, reuse=reuse):
                    m, p, _ = kronecker_draws.rotated_batch_posterior(*inputs)
                    return kronecker_draws.draw_moments(
                        m, tf.math.rsqrt(p), basis.classes, basis.features, h, y, draws, seed, reuse
                    )

                step(tf.constant([0, 1])).mean.numpy()
                times = []
                for index in range(args.steps):
                    start = time.perf_counter()
                    step(tf.constant([index, 1])).mean.numpy()
                    times.append(time.perf_counter() - start)
                elapsed = statistics.median(times)
                estimates = [moments(draws, reuse, seed) for seed in range(args.seeds)]
                error_mean = relative_rms([e.mean.numpy() for e in estimates], reference.mean.numpy())
                error_variance = relative_rms([e.variance.numpy() for e in estimates], reference.variance.numpy())
                errors = "".join(
                    f" {error:9.4f} {error * np.sqrt(1e3 * elapsed):6.3f}"
                    for error in (
                        relative_rms([aggregate(task, e)[0] for e in estimates], gradient)
                        for task, (gradient, _, _) in zip(tasks, references)
                    )
                )
                flop = step_flop(classes, dim, args.batch, draws, reuse)
                achieved = flop / elapsed / 1e9
                print(
                    f"{draws:5d} {reuse:4d} {flop / 1e9:7.2f} {1e3 * elapsed:8.1f} {achieved:8.1f} {achieved / rate:7.0%} "
                    f"{error_mean:9.4f} {error_variance:8.4f}" + errors,
                    flush=True,
                )
    if args.full:
        compare_with_full()


def compare_precision(classes: int, dim: int, batch: int, draws: int) -> None:
    """The whole chain (factors, eigenbases, prior, batch posterior, moments) in float32 against float64."""
    results = {}
    for dtype in (tf.float64, tf.float32):
        h, y, w, basis, prior, _ = head_problem(classes, dim, batch, dtype)
        inputs = (h, y, w, basis.classes, basis.features, prior.precision, prior.mean, None)
        mean, precision, _ = kronecker_draws.rotated_batch_posterior(*inputs)
        head = tf.matmul(mean, basis.features, transpose_b=True)  # the batch mean in the original basis
        draws_of = [
            kronecker_draws.draw_moments(
                mean, tf.math.rsqrt(precision), basis.classes, basis.features, h, y, draws, tf.constant([s, 3]), 2
            )
            for s in (0, 1)
        ]
        results[dtype] = (head.numpy(), precision.numpy(), [m.mean.numpy() for m in draws_of])
    (head64, precision64, moments64), (head32, precision32, moments32) = results[tf.float64], results[tf.float32]
    print(
        f"# float32 vs float64: batch mean {relative_rms([head32], head64):.1e}, precision "
        f"{relative_rms([precision32], precision64):.1e}, E[g] ({draws} draws) {relative_rms([moments32[0]], moments64[0]):.4f} "
        f"against Monte Carlo noise (two float64 seeds) {relative_rms([moments64[1]], moments64[0]):.4f}"
    )


def compare_with_full(classes: int = 20, dim: int = 16, batch: int = 32, draws: int = 2**15) -> None:
    """Moments of the full GGN posterior vs the Kronecker one (both estimators), float64, many draws."""
    h, y, w, basis, prior, rows = head_problem(classes, dim, batch, tf.float64, rows=2048)
    full_curvature = classification.multiclass_curvature(rows[0], rows[1], w)
    full_prior = classification.newton_posterior(
        full_curvature,
        tf.reshape(w, [1, -1]),
        *classification.isotropic_prior(1, w.shape[0] * w.shape[1], GAMMA, tf.float64),
    )
    batch_curvature = classification.multiclass_curvature(h, y, w)
    full = classification.newton_posterior(
        batch_curvature, tf.reshape(w, [1, -1]), full_prior.precision, full_prior.mean
    )
    reference = classification.multiclass_gradient_moments(full, h, y, draws, tf.constant([5, 6]))
    posterior = kronecker.batch_posterior(h, y, w, basis, prior.precision, prior.mean)
    print(f"# full GGN vs Kronecker on C={classes}, D={dim}, B={batch}, {draws} draws each (relative error)")
    for reuse in (1, 8, 32):
        estimate = kronecker.gradient_moments(posterior, basis, h, y, draws, tf.constant([7, 8]), reuse)
        print(
            f"K={reuse:3d}: E[g] {relative_rms([estimate.mean.numpy()], reference.mean.numpy()):.4f}  "
            f"Var[g] {relative_rms([estimate.variance.numpy()], reference.variance.numpy()):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
