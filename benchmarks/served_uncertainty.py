"""Serving uncertainty of a many-class head: the dense and the Kronecker-factored served state (issue 19).

For each shape it builds a `MultiTaskModel` with one `Multiclass(C)` head on a linear trunk of width D, writes a
random posterior of the factored form into the head's served state (random orthogonal Q_C, Q_D, eigenvalues in
[0.01, 1]; serving cost does not depend on the values) and times the compiled uncertainty step on batches of B
rows: median seconds per batch over `--repeats` rounds, the two forms alternating within each round (the
machine is shared). Prints the served state's size in each form. The dense form is timed only where it fits
`--dense-limit-mb`; C=1000, D=256 needs (C·(D+1))² floats = 264 GB dense, 5.3 MB factored.

    python benchmarks/served_uncertainty.py [--repeats 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bayesagg as kb  # noqa: E402
from keras_bayesagg import serving  # noqa: E402
from keras_bayesagg.bayes import predictive  # noqa: E402
from keras_bayesagg.served_state import FORMS  # noqa: E402

SHAPES = ((20, 16), (50, 64), (100, 64), (1000, 256))  # classes C, representation D


def served_model(classes: int, dim: int, limit_mb: float, seed: int = 0) -> kb.MultiTaskModel:
    """A built model whose head serves a random factored posterior (dense state: its dense product)."""
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(dim)])
    model = kb.MultiTaskModel(trunk, {"kind": kb.tasks.Multiclass(classes)}, uncertainty_state_mb=limit_mb)
    model.build((None, dim))
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.normal(size=(n, n)))[0].astype("float32") for n in (classes, dim + 1)]
    eigenvalues = rng.uniform(0.01, 1.0, size=(classes, dim + 1)).astype("float32")
    model.heads["kind"].served.write(predictive.FactoredCovariance(*(tf.constant(a) for a in (*bases, eigenvalues))))
    return model


def seconds_per_batch(model: kb.MultiTaskModel, x: np.ndarray, steps: int) -> float:
    step = tf.function(lambda inputs: serving.uncertainty_outputs(model, inputs), jit_compile=False)
    step(x)["kind/probabilities"].numpy()  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        step(x)["kind/probabilities"].numpy()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dense-limit-mb", type=float, default=64.0)
    args = parser.parse_args()
    dense_form, factored_form = FORMS["multiclass"]
    print(f"# median seconds per batch of {args.batch}, {args.repeats} rounds of {args.steps}; load {os.getloadavg()}")
    print(f"{'C':>5} {'D':>4} {'dense MB':>10} {'factored MB':>12} {'dense s':>9} {'factored s':>11} {'ratio':>6}")
    for classes, dim in SHAPES:
        dense_mb = dense_form.size_in_bytes(classes, dim) / 1e6
        factored_mb = factored_form.size_in_bytes(classes, dim) / 1e6
        x = np.random.default_rng(1).normal(size=(args.batch, dim)).astype("float32")
        models = {"factored": served_model(classes, dim, limit_mb=factored_mb)}  # the dense form is over this limit
        if dense_mb <= args.dense_limit_mb:
            models["dense"] = served_model(classes, dim, limit_mb=dense_mb)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(seconds_per_batch(model, x, args.steps))
        factored = statistics.median(times["factored"])
        if "dense" in times:
            dense = statistics.median(times["dense"])
            ratios = [d / f for d, f in zip(times["dense"], times["factored"])]
            tail = f"{dense:9.4f} {factored:11.4f} {statistics.median(ratios):6.1f}"
        else:
            tail = f"{'-':>9} {factored:11.4f} {'-':>6}"
        print(f"{classes:5d} {dim:4d} {dense_mb:10.3g} {factored_mb:12.3g} {tail}", flush=True)


if __name__ == "__main__":
    main()
