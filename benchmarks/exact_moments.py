"""Median time of one step's classification posterior + gradient moments: exact quadrature vs Monte Carlo.

    python benchmarks/exact_moments.py                  # S=1024, 15 repetitions
    python benchmarks/exact_moments.py --samples 1024 --repeats 15

Each timed call is XLA-compiled and includes the batch posterior (GGN assembly, safe Cholesky,
Newton step from random data; also timed alone, as the floor both methods share) and then the moments: `binary_gradient_moments_exact` (32 and 64
nodes) or `binary_gradient_moments` with S draws; for the 2-class head
`two_class_gradient_moments_exact` or `multiclass_gradient_moments`. Wall-clock medians after one
warm-up call, the methods taking turns call by call; the machine's other load still shows up, so
compare figures of the same run. Prints only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from keras_bayesagg.bayes import classification, exact_moments

SHAPES = {
    # name: (batch, dim, kind, outputs or classes)
    "chestxray (14 binary)": (256, 512, "binary", 14),
    "cifar-mtl (20 binary)": (128, 160, "binary", 20),
    "utkface gender (2-class)": (128, 512, "two_class", 2),
}


def step_function(kind: str, method: str, samples: int, nodes: int):
    curvature_fn = classification.binary_curvature if kind == "binary" else classification.multiclass_curvature
    if method == "posterior":

        def moments_fn(posterior, features, labels, seed):
            return posterior.mean, posterior.precision_factor
    elif method == "exact":
        exact_fn = (
            exact_moments.binary_gradient_moments_exact
            if kind == "binary"
            else exact_moments.two_class_gradient_moments_exact
        )

        def moments_fn(posterior, features, labels, seed):
            return exact_fn(posterior, features, labels, num_nodes=nodes)
    else:
        sampled_fn = (
            classification.binary_gradient_moments if kind == "binary" else classification.multiclass_gradient_moments
        )

        def moments_fn(posterior, features, labels, seed):
            return sampled_fn(posterior, features, labels, samples, seed)

    @tf.function(jit_compile=True)
    def step(features, labels, weights, flat_weights, prior_precision, prior_mean, seed):
        posterior = classification.newton_posterior(
            curvature_fn(features, labels, weights), flat_weights, prior_precision, prior_mean
        )
        return moments_fn(posterior, features, labels, seed)

    return step


def problem(batch: int, dim: int, kind: str, units: int) -> tuple[tf.Tensor, ...]:
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(batch, dim)), tf.float32)
    weights = tf.constant(0.05 * rng.normal(size=(units, dim + 1)), tf.float32)
    if kind == "binary":
        labels = tf.constant(rng.integers(0, 2, size=(batch, units)), tf.float32)
        flat, blocks = weights, units
    else:
        labels = tf.one_hot(rng.integers(0, units, size=batch), units)
        flat, blocks = tf.reshape(weights, [1, -1]), 1
    prior = classification.isotropic_prior(blocks, int(flat.shape[1]), 0.005, tf.float32)
    return features, labels, weights, flat, *prior, tf.constant([0, 1])


def interleaved_medians(steps: list, arguments: tuple[tf.Tensor, ...], repeats: int) -> list[tuple[float, float]]:
    """(median, min) seconds per step; the steps take turns, so a burst of load elsewhere hits all of them."""
    for step in steps:
        step(*arguments)[0].numpy()  # compile and warm up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step(*arguments)[0].numpy()
            record.append(time.perf_counter() - start)
    return [(statistics.median(record), min(record)) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"# seconds per step (posterior + moments), float32, XLA: median (min) of {args.repeats} interleaved calls")
    mc = f"MC S={args.samples}"
    print(
        f"{'shape':26s} {'B':>4s} {'D':>4s} {'posterior alone':>16s} {'exact 32 nodes':>16s} {'exact 64 nodes':>16s} {mc:>16s} {'MC/exact32':>10s}"
    )
    for name, (batch, dim, kind, units) in SHAPES.items():
        steps = [
            step_function(kind, "posterior", args.samples, 32),
            step_function(kind, "exact", args.samples, 32),
            step_function(kind, "exact", args.samples, 64),
            step_function(kind, "mc", args.samples, 32),
        ]
        (alone, fast_alone), (exact32, fast32), (exact64, fast64), (sampled, fast_sampled) = interleaved_medians(
            steps, problem(batch, dim, kind, units), args.repeats
        )
        cells = " ".join(
            f"{median:8.4f} ({fast:.3f})"
            for median, fast in ((alone, fast_alone), (exact32, fast32), (exact64, fast64), (sampled, fast_sampled))
        )
        print(f"{name:26s} {batch:4d} {dim:4d} {cells} {sampled / exact32:10.2f}")


if __name__ == "__main__":
    main()
