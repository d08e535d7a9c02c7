"""Per-part FLOP model of BayesAgg's step against this machine's matmul rate, measured in the same run.

    python benchmarks/flop_model.py                  # CIFAR-MTL, UTKFace (D=256, 512), ChestX-ray14 heads
    python benchmarks/flop_model.py --steps 10

For each head shape every part of the classification step runs alone as an XLA function on fixed inputs
(the code BayesAgg runs: `bayes/classification.py`, `bayes/exact_moments.py`, `bayes/linalg.py`), timed as the
median of `--steps` calls; its arithmetic is counted from the shapes (multiply-add = 2 FLOP, Cholesky n³/3,
triangular solve n²·rhs, triangular inverse n³/3). The ratio of achieved GFLOP/s to the measured float32
matmul rate says how far a part is from its arithmetic floor: a part far below is dominated by dispatch,
memory traffic or a slow kernel, not by arithmetic. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_bayesagg.bayes import classification, exact_moments, linalg  # noqa: E402

QUADRATURE_NODES = 64
SHAPES = {  # name: (batch, D, binary outputs, multiclass heads' classes)
    "CIFAR-MTL (20 binary)": (128, 160, 20, ()),
    "UTKFace D=256 (2- and 5-class)": (128, 256, 0, (2, 5)),
    "UTKFace D=512 (2- and 5-class)": (128, 512, 0, (2, 5)),
    "ChestX-ray14 (14 binary)": (256, 512, 14, ()),
}


def seconds(function: Callable[[], object], steps: int) -> float:
    tf.nest.map_structure(lambda t: t.numpy(), function())  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(steps: int) -> float:
    """GFLOP/s of a 1024³ float32 matmul under XLA on this machine, now."""
    a = tf.random.normal([1024, 1024])

    @tf.function(jit_compile=True)
    def product():
        return tf.matmul(a, a)

    return 2 * 1024**3 / seconds(product, steps) / 1e9


def binary_parts(batch: int, dim: int, outputs: int, num_samples: int):
    width = dim + 1
    rng = np.random.default_rng(0)
    h = tf.constant(rng.normal(size=(batch, dim)) / np.sqrt(dim), tf.float32)
    y = tf.constant((rng.random((batch, outputs)) > 0.5).astype("float32"))
    w = tf.constant(rng.normal(size=(outputs, width)) * 0.1, tf.float32)
    prior = tf.eye(width, batch_shape=[outputs]) * 200.0 + 0.0
    curvature = classification.binary_curvature(h, y, w)
    posterior = classification.newton_posterior(curvature, w, prior, tf.zeros_like(w))
    parts = {
        "curvature (GGN blocks)": (
            lambda: classification.binary_curvature(h, y, w),
            2 * outputs * batch * width**2,
        ),
        "factorization (Cholesky)": (lambda: linalg.safe_cholesky(curvature.ggn + prior), outputs * width**3 / 3),
        "Newton step (solve)": (
            lambda: classification.newton_posterior(curvature, w, prior, tf.zeros_like(w)).mean,
            outputs * (width**3 / 3 + 2 * width**2 + 2 * width**2),
        ),
        "exact moments (Σh̃, diag Σ, quadrature)": (
            lambda: exact_moments.binary_gradient_moments_exact(posterior, h, y, QUADRATURE_NODES),
            outputs * (2 * 2 * width**2 * batch + width**3 / 3 + width**3 + batch * QUADRATURE_NODES * 30),
        ),
        f"Monte Carlo moments (S={num_samples})": (
            lambda: classification.binary_gradient_moments(posterior, h, y, num_samples, tf.constant([1, 2])),
            outputs * (width**2 * num_samples + 2 * batch * width * num_samples + 2 * 2 * batch * dim * num_samples),
        ),
    }
    return parts


def multiclass_parts(batch: int, dim: int, classes: int, num_samples: int):
    width, size = dim + 1, classes * (dim + 1)
    pairs = classes * (classes + 1) // 2
    rng = np.random.default_rng(1)
    h = tf.constant(rng.normal(size=(batch, dim)) / np.sqrt(dim), tf.float32)
    y = tf.one_hot(rng.integers(0, classes, batch), classes)
    w = tf.constant(rng.normal(size=(classes, width)) * 0.1, tf.float32)
    flat = tf.reshape(w, [1, -1])
    prior = tf.eye(size, batch_shape=[1]) * 200.0
    curvature = classification.multiclass_curvature(h, y, w)
    posterior = classification.newton_posterior(curvature, flat, prior, tf.zeros_like(flat))
    parts = {
        "curvature (full GGN)": (
            lambda: classification.multiclass_curvature(h, y, w),
            2 * classes * batch * width**2 + 2 * batch * size**2,
        ),
        "factorization (Cholesky)": (lambda: linalg.safe_cholesky(curvature.ggn + prior), size**3 / 3),
    }
    if classes == 2:
        parts["exact moments (2-class)"] = (
            lambda: exact_moments.two_class_gradient_moments_exact(posterior, h, y, QUADRATURE_NODES),
            2 * size**2 * width + 2 * batch * width**2 + batch * QUADRATURE_NODES * 30,
        )
    else:
        parts[f"Monte Carlo moments (S={num_samples})"] = (
            lambda: classification.multiclass_gradient_moments(posterior, h, y, num_samples, tf.constant([1, 2])),
            size**2 * num_samples
            + 2 * batch * size * num_samples
            + 2 * batch * classes * dim * num_samples
            + 2 * batch * pairs * dim * num_samples,
        )
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1024)
    args = parser.parse_args()
    rate = matmul_rate(args.steps)
    print(f"# float32 matmul (1024³, XLA): {rate:.1f} GFLOP/s on {os.cpu_count()} cores, measured now")
    print(f"{'shape / part':52} {'GFLOP':>8} {'ms':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for name, (batch, dim, outputs, heads) in SHAPES.items():
        print(f"{name} — B={batch}, D={dim}")
        groups = []
        if outputs:
            groups.append(("", binary_parts(batch, dim, outputs, args.num_samples)))
        groups += [(f"{c}-class: ", multiclass_parts(batch, dim, c, args.num_samples)) for c in heads]
        total_flop = total_seconds = 0.0
        for prefix, parts in groups:
            for part, (function, flop) in parts.items():
                elapsed = seconds(tf.function(function, jit_compile=True, autograph=False), args.steps)
                achieved = flop / elapsed / 1e9
                total_flop, total_seconds = total_flop + flop, total_seconds + elapsed
                print(
                    f"  {prefix + part:50} {flop / 1e9:8.3f} {1e3 * elapsed:8.2f} {achieved:8.1f} {achieved / rate:7.0%}",
                    flush=True,
                )
        print(f"  {'sum of parts':50} {total_flop / 1e9:8.3f} {1e3 * total_seconds:8.2f}")


if __name__ == "__main__":
    main()
