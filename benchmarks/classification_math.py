"""Median time of BayesAgg's per-step classification math alone (no model), XLA-compiled.

    python benchmarks/classification_math.py            # UTKFace, CIFAR-MTL and ChestX-ray14 heads
    python benchmarks/classification_math.py --samples 1024 --repeats 9

For each shape it times one step's batch posterior (GGN assembly, safe Cholesky, Newton step) and
Monte Carlo gradient moments with S draws, per task group, as `BayesAgg` runs them. No profiler:
wall-clock medians after one compiled warm-up call. The machine's other load shows up in the
figures, so compare rows measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from exact_moments import problem  # noqa: E402  (this folder; the same random problem)

from keras_bayesagg.bayes import classification  # noqa: E402

SHAPES = {
    # name: (batch, dim, kind, outputs or classes)
    "utkface gender (multiclass 2)": (128, 512, "multiclass", 2),
    "utkface ethnicity (multiclass 5)": (128, 512, "multiclass", 5),
    "cifar-mtl (20 binary)": (128, 64, "binary", 20),
    "chestxray (14 binary)": (256, 512, "binary", 14),
    "chestxray (1 binary)": (256, 512, "binary", 1),
}


def step_function(kind: str, samples: int):
    curvature_fn = classification.binary_curvature if kind == "binary" else classification.multiclass_curvature
    moments_fn = (
        classification.binary_gradient_moments if kind == "binary" else classification.multiclass_gradient_moments
    )

    @tf.function(jit_compile=True)
    def step(features, labels, weights, flat_weights, prior_precision, prior_mean, seed):
        posterior = classification.newton_posterior(
            curvature_fn(features, labels, weights), flat_weights, prior_precision, prior_mean
        )
        return moments_fn(posterior, features, labels, samples, seed)

    return step


def time_shape(batch: int, dim: int, kind: str, units: int, samples: int, repeats: int) -> float:
    features, labels, weights, flat, *prior, seed = problem(batch, dim, kind, units)
    step = step_function(kind, samples)
    step(features, labels, weights, flat, *prior, seed)[0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(features, labels, weights, flat, *prior, seed)[0].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"# median seconds of one step's classification posterior + moments, S={args.samples}, XLA")
    for name, (batch, dim, kind, units) in SHAPES.items():
        seconds = time_shape(batch, dim, kind, units, args.samples, args.repeats)
        print(f"{name:34s} B={batch:4d} D={dim:4d}  {seconds:.4f}")


if __name__ == "__main__":
    main()
