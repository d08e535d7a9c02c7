"""Step-time ratios robust to a shared, loaded machine: the models' compiled steps run interleaved.

    python benchmarks/interleaved.py --preset cifar-mtl-cnn --rounds 15
    python benchmarks/interleaved.py --preset utkface-heads --rounds 10
    python benchmarks/interleaved.py --classes 1000 --dim 256 --num-samples 16 --draws-per-rotation 1,16

`step_time.py` times one model after the other, so a change of load between them shows as a ratio. Here
every round runs `--steps` steps of each variant back to back (LS; BayesAgg with its Bayesian part as one XLA
cluster; BayesAgg without it) and the ratio to LS is taken within the round (`--general-path` adds BayesAgg with
binary sets through the general factorization, not the prior's cached inverse factor: `prior_whitening.py`); the
median over rounds is printed with the quartiles, and each variant's first fit (tracing and compilation, one
step, the refresh, three steps). `--classes` times a regression task plus one `Multiclass(C)` head with the
Kronecker posterior on the conv trunk instead of a preset, one BayesAgg variant per `--draws-per-rotation` K (each with
and without the cluster). The float32 matmul rate (`flop_model.py`) and the load average are printed before and
after the rounds.
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
import tensorflow as tf  # noqa: E402
from flop_model import matmul_rate  # noqa: E402
from step_time import PRESETS, Preset, make_trunk, parse_tasks  # noqa: E402

import keras_bayesagg as kb  # noqa: E402
from keras_bayesagg.aggregators.bayesagg.prior_whitening import PriorWhitening  # noqa: E402
from keras_bayesagg.data import random_task_batch  # noqa: E402


def compiled_step(aggregator: kb.interface.Aggregator, preset: Preset, jit_compile: bool, cluster: bool):
    """A warmed-up train function of a fresh model (BayesAgg past its warm-up) and its input iterator."""
    keras.utils.set_random_seed(0)
    tasks = parse_tasks(preset.tasks)
    trunk, input_shape = make_trunk(preset.trunk, preset.dim)
    model = kb.MultiTaskModel(trunk, tasks)
    kb.BayesAgg.compile_bayesian_part = cluster  # read while the step is traced
    model.compile(optimizer="adam", aggregator=aggregator, jit_compile=jit_compile)
    x, labels = random_task_batch(tasks, preset.batch, input_shape)
    start = time.perf_counter()
    model.fit(x, labels, batch_size=preset.batch, epochs=1, verbose=0)
    train_function = model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors((x, labels)).repeat())
    for _ in range(3):
        train_function(iterator)
    first_seconds = time.perf_counter() - start  # tracing and compilation, one step, the refresh, 3 steps
    kb.BayesAgg.compile_bayesian_part = False  # the default
    return (lambda: float(train_function(iterator)["loss"])), first_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cifar-mtl-cnn")
    parser.add_argument("--classes", type=int, help="time reg:1,mc:C with the Kronecker posterior instead")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument(
        "--draws-per-rotation", default="auto", help='with --classes: comma-separated K values ("auto": the default)'
    )
    parser.add_argument("--no-cluster", action="store_true", help="time BayesAgg without the XLA cluster only")
    parser.add_argument(
        "--general-path", action="store_true", help="also time binary sets without the whitened prior (same run)"
    )
    args = parser.parse_args()
    print(f"# before: float32 matmul {matmul_rate(10):.1f} GFLOP/s, load average {os.getloadavg()}", flush=True)
    options = dict(warmup_epochs=0, seed=0, num_samples=args.num_samples)
    if args.classes:
        preset = Preset(128, args.dim, f"reg:1,mc:{args.classes}", trunk="conv", xla=False)
        options["multiclass_posterior"] = "kronecker"
        name = f"conv trunk, B=128, D={args.dim}, reg:1 + Multiclass({args.classes}) Kronecker"
    else:
        preset, name = PRESETS[args.preset], args.preset
    jit = preset.xla
    variants = {"LS": compiled_step(kb.aggregators.LinearScalarization(), preset, jit, True)}
    reuses = [k if k == "auto" else int(k) for k in args.draws_per_rotation.split(",")] if args.classes else [None]
    for reuse in reuses:
        tag = "" if reuse is None else f" K={reuse}"
        given = options if reuse is None else {**options, "kronecker_draws_per_rotation": reuse}
        if not jit:  # under a jit-compiled model the cluster makes no difference
            # First: its first fit compiles the XLA factorizations the cluster (compiled whole) does not reuse.
            variants[f"BayesAgg{tag} (no cluster)"] = compiled_step(kb.BayesAgg(**given), preset, jit, False)
        if args.general_path and not jit:  # the binary step without the prior's cached inverse factor
            PriorWhitening.enabled = False  # read while the step is traced
            variants[f"BayesAgg{tag} (general path)"] = compiled_step(kb.BayesAgg(**given), preset, jit, False)
            PriorWhitening.enabled = True
        if not args.no_cluster:
            variants[f"BayesAgg{tag} (XLA cluster)"] = compiled_step(kb.BayesAgg(**given), preset, jit, True)
    first_seconds = {key: first for key, (_, first) in variants.items()}
    variants = {key: step for key, (step, _) in variants.items()}
    seconds: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[key].append((time.perf_counter() - start) / args.steps)
    print(f"# {name}; jit_compile={jit}; S={args.num_samples}; {args.rounds} rounds of {args.steps} steps each")
    print("# the machine is shared: ratios are taken within each round (median [quartiles])")
    for key, times in seconds.items():
        ratios = sorted(t / ls for t, ls in zip(times, seconds["LS"]))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"{key:24} {statistics.median(times):8.4f} s/step   ratio to LS {quartiles[1]:5.2f} "
            f"[{quartiles[0]:.2f}, {quartiles[2]:.2f}]   first fit {first_seconds[key]:5.1f} s (trace, compile)",
            flush=True,
        )
    print(f"# after: float32 matmul {matmul_rate(10):.1f} GFLOP/s, load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
