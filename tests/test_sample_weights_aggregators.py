"""The repetition rule at the aggregator level, for every method `kb.aggregators` exports (no model, no fit).

A sample weight is a repetition count (issue 17): weight 2 on a row must mean two copies of it, weight 0 leaving it
out. For each method (both levels where it has `level`) we build the engine's `AggregatorInputs` twice from the same
rows through the engine's own functions (engine/gradients.py): once with integer weights 0/1/2 in `present`
(gradient rows w_ik ∂ℓ_ik/∂h_i, losses Σ w ℓ / Σ w), once with the weight-0 rows dropped, the weight-2 rows repeated
and `present` = 1. Two steps (with the first step's state writes committed in between) must give the same trunk
gradient (the representation gradient mapped back onto the original rows, a repeated row's gradient being the sum of
its copies'; or the parameter gradient), the same objective and the same task weights.

GradDrop draws one random sign-dropout mask per coordinate of the flattened B·D gradient at the representation level,
so the repeated batch (more rows) cannot match it draw for draw: for it we check what must hold anyway (a weight-0 row
gets exactly zero gradient, weights all 1 change nothing). PCGrad and RandomLossWeighting draw over the K tasks only,
so with the same seed they match draw for draw and get the full check.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.engine import gradients as engine
from keras_bayesagg.interface import AggregatorInputs, ObjectiveAggregation, ParameterAggregation, TaskLayout

B, INPUT_DIM, D = 9, 3, 4
WEIGHTS = np.resize(np.array([0.0, 1.0, 2.0], "float32"), B)  # 0, 1, 2 three times each
TASKS = {"size": kb.tasks.Regression(2), "flags": kb.tasks.Binary(2), "kind": kb.tasks.Multiclass(3)}
SEEDED = {"seed": 3}
# Eager solver loops are slow; a shorter budget proves the same point (both batches run the same iterations).
FASTER = {"MGDA": {"max_iterations": 100}}
# Methods whose draws are per coordinate of the batch: only the draw-free properties are checked.
ROW_RANDOM = {("GradDrop", "representation")}


def _cases() -> list[tuple[str, str | None]]:
    cases = []
    for name in kb.aggregators.__all__:
        parameters = inspect.signature(getattr(kb.aggregators, name)).parameters
        levels = ("representation", "parameters") if "level" in parameters else (None,)
        cases += [(name, level) for level in levels]
    return cases


def _make(name: str, level: str | None):
    cls = getattr(kb.aggregators, name)
    parameters = inspect.signature(cls).parameters
    kwargs = {"level": level} if level else {}
    kwargs.update(FASTER.get(name, {}))
    if "seed" in parameters:
        kwargs.update(SEEDED)
    if "warmup_epochs" in parameters:
        kwargs["warmup_epochs"] = 0
    return cls(**kwargs)


def _problem(seed: int = 0) -> dict:
    """Rows of one batch: trunk inputs x, linear trunk A (h = x A, θ = A), labels and linear heads."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, INPUT_DIM)).astype("float32")
    labels = {
        "size": rng.normal(size=(B, 2)).astype("float32"),
        "flags": (rng.random((B, 2)) > 0.5).astype("float32"),
        "kind": np.eye(3, dtype="float32")[rng.integers(0, 3, B)],
    }
    heads = {
        "size": rng.normal(size=(D + 1, 2)).astype("float32"),
        "flags": rng.normal(size=(D + 1, 2)).astype("float32"),
        "kind": rng.normal(size=(D + 1, 3)).astype("float32"),
    }
    trunk = rng.normal(size=(INPUT_DIM, D)).astype("float32")
    return {"x": x, "labels": labels, "heads": heads, "trunk": trunk}


def _inputs(problem: dict, rows: np.ndarray, weights: np.ndarray | None, tape: tf.GradientTape, h: tf.Variable):
    """The engine's AggregatorInputs for the batch `rows` of the problem with per-row weights (as engine/gradients.py
    builds them), and θ-gradients of the weighted-mean losses for h = x A (∂L_k/∂A = xᵀ ∂L_k/∂h)."""
    labels = {name: tf.constant(value[rows]) for name, value in problem["labels"].items()}
    kernels = {name: tf.constant(value[:D]) for name, value in problem["heads"].items()}
    ones = np.ones(rows.size, "float32")
    present = tf.constant(np.repeat((ones if weights is None else weights)[:, None], 5, axis=1))  # K = 2 + 2 + 1
    with tape:
        logits = {name: tf.matmul(h, kernels[name]) + problem["heads"][name][D] for name in TASKS}
        losses = engine.masked_mean_losses(engine.per_sample_unit_losses(TASKS, labels, logits, present), present)
    task_gradients = engine.per_sample_task_gradients(TASKS, labels, logits, kernels, present)
    loss_gradients = task_gradients / engine.weight_totals(present)[None, :, None]
    parameter_gradients = tf.reshape(tf.einsum("bi,bkd->kid", problem["x"][rows], loss_gradients), [5, -1])
    return AggregatorInputs(
        losses=losses,
        representation=tf.stop_gradient(h),
        task_gradients=task_gradients,
        labels=labels,
        head_weights={name: tf.constant(value.T) for name, value in problem["heads"].items()},
        parameter_gradients=parameter_gradients,
        present=None if weights is None else present,
    )


def _trunk_gradient(aggregation, tape: tf.GradientTape, h: tf.Variable) -> np.ndarray:
    """What reaches the trunk: ∂objective/∂h, the representation gradient [B, D] or the parameter gradient [P]."""
    if isinstance(aggregation, ObjectiveAggregation):
        return tape.gradient(aggregation.objective, h).numpy()
    if isinstance(aggregation, ParameterAggregation):
        return aggregation.parameter_gradient.numpy()
    return aggregation.representation_gradient.numpy()


def _run(aggregator, problem: dict, rows: np.ndarray, weights: np.ndarray | None, steps: int = 2) -> list[dict]:
    """`steps` aggregations on the same batch, each step's state writes committed before the next."""
    aggregator.build_for(TaskLayout(TASKS, representation_dim=D, parameter_count=INPUT_DIM * D))
    outcomes = []
    for _ in range(steps):
        h = tf.Variable(problem["x"][rows] @ problem["trunk"])
        tape = tf.GradientTape(persistent=True)
        inputs = _inputs(problem, rows, weights, tape, h)
        with tape:
            aggregation = aggregator.aggregate(inputs)
        weights_out = aggregation.task_weights
        outcomes.append(
            {
                "objective": float(aggregation.objective),
                "trunk": _trunk_gradient(aggregation, tape, h),
                "task_weights": None if weights_out is None else np.asarray(weights_out, "float64"),
                "kind": type(aggregation).__name__,
            }
        )
        aggregator.commit(aggregation)
    return outcomes


def _back_onto_rows(gradient: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """A repeated batch's [N, D] representation gradient summed over each original row's copies: [B, D]."""
    summed = np.zeros((B, gradient.shape[1]), gradient.dtype)
    np.add.at(summed, copies, gradient)
    return summed


CASES = _cases()


@pytest.mark.parametrize(("name", "level"), CASES, ids=[f"{n}-{lv}" if lv else n for n, lv in CASES])
def test_weights_are_repetitions(name, level):
    problem = _problem()
    if (name, level or "representation") in ROW_RANDOM:
        weighted = _run(_make(name, level), problem, np.arange(B), WEIGHTS)
        unweighted = _run(_make(name, level), problem, np.arange(B), np.ones(B, "float32"))
        plain = _run(_make(name, level), problem, np.arange(B), None)  # hand-made inputs: `present` None
        for step in weighted:
            np.testing.assert_array_equal(step["trunk"][WEIGHTS == 0], 0.0)
        for one, other in zip(unweighted, plain):
            np.testing.assert_allclose(one["trunk"], other["trunk"], rtol=1e-6)
        return
    copies = np.repeat(np.arange(B), WEIGHTS.astype(int))
    weighted = _run(_make(name, level), problem, np.arange(B), WEIGHTS)
    repeated = _run(_make(name, level), problem, copies, np.ones(copies.size, "float32"))
    for step, (one, other) in enumerate(zip(weighted, repeated)):
        where = f"{name}(level={level}) step {step + 1}"
        assert one["kind"] == other["kind"], where
        np.testing.assert_allclose(one["objective"], other["objective"], rtol=1e-5, atol=1e-6, err_msg=where)
        expected = other["trunk"] if one["kind"] == "ParameterAggregation" else _back_onto_rows(other["trunk"], copies)
        np.testing.assert_allclose(one["trunk"], expected, rtol=1e-4, atol=1e-6, err_msg=where)
        if one["task_weights"] is not None or other["task_weights"] is not None:
            np.testing.assert_allclose(one["task_weights"], other["task_weights"], rtol=1e-4, atol=1e-6, err_msg=where)
