"""GradVac, GradDrop, SDMGrad, MoDo, MoCo and ExcessMTL: equality with the anchors' own outputs (TorchJD 0.18.0,
LibMTL's MoCo) on the committed fixtures, their hand-checkable properties, state written only in `commit`,
seeded draws, training a mixed-task model at both levels, XLA and `.keras` round trips.

The shared property tests (tests/test_aggregators_gradient.py) cover finiteness, scale and identical gradients.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators import ExcessMTL, GradDrop, GradVac, MoCo, MoDo, SDMGrad
from keras_bayesagg.aggregators.base import AggregatorInputs, TaskLayout
from keras_bayesagg.aggregators.graddrop import graddrop_direction
from keras_bayesagg.aggregators.gradvac import gradvac_weights, visiting_orders
from keras_bayesagg.aggregators.pcgrad import pcgrad_weights
from tests.conftest import applied, make_mixed_model, mixed_dataset

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "stochastic_aggregators_anchors.json").read_text())
JACOBIANS = [np.array(matrix) for matrix in FIXTURE["jacobians"]]  # [K, N] per step, float64
NUM_TASKS, WIDTH = JACOBIANS[0].shape


def parameter_layout(num_tasks: int = NUM_TASKS, width: int = WIDTH) -> TaskLayout:
    return TaskLayout({f"t{k}": kb.tasks.Regression() for k in range(num_tasks)}, 4, parameter_count=width)


def parameter_inputs(matrix: np.ndarray, losses: np.ndarray | None = None) -> AggregatorInputs:
    num_tasks = matrix.shape[0]
    losses = np.ones(num_tasks) if losses is None else losses
    return AggregatorInputs(
        losses=tf.constant(losses, tf.float32),
        representation=tf.zeros([2, 4]),
        task_gradients=None,
        labels={},
        head_weights={},
        parameter_gradients=tf.constant(matrix, tf.float32),
    )


def run_steps(aggregator: kb.interface.Aggregator, losses: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fixture's Jacobians fed as parameter gradients, one applied step each: (weights, directions)."""
    aggregator.build_for(parameter_layout())
    weights, directions = [], []
    for step, matrix in enumerate(JACOBIANS):
        result = applied(aggregator, parameter_inputs(matrix, None if losses is None else np.array(losses[step])))
        weights.append(result.task_weights.numpy())
        directions.append(result.parameter_gradient.numpy())
    return np.array(weights), np.array(directions)


# ---------------------------------------------------------------------- the anchors' outputs
def test_gradvac_equals_torchjd_over_steps_with_its_orders():
    case, targets = FIXTURE["gradvac"], tf.zeros([NUM_TASKS, NUM_TASKS], tf.float64)
    for matrix, orders, expected in zip(JACOBIANS, case["orders"], case["directions"]):
        weights, targets = gradvac_weights(tf.constant(matrix @ matrix.T), targets, tf.constant(orders), 0.5, 1e-8)
        # 1e-6: our ε is relative to the trace-normalized Gram matrix, TorchJD's to the raw norms
        np.testing.assert_allclose(matrix.T @ weights.numpy(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["graddrop", "graddrop_leak"])
def test_graddrop_equals_torchjd_on_the_same_uniform_draws(case):
    fixture = FIXTURE[case]
    leak = tf.constant(fixture["leak"] or [0.0] * NUM_TASKS, tf.float64)
    for matrix, uniforms, expected in zip(JACOBIANS, fixture["uniforms"], fixture["directions"]):
        direction, _ = graddrop_direction(tf.constant(matrix), tf.constant(uniforms, tf.float64), leak)
        np.testing.assert_allclose(direction.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_sdmgrad_equals_torchjd_over_steps():
    weights, directions = run_steps(
        SDMGrad(preference_weight=0.3, learning_rate=10.0, momentum=0.5, iterations=20, level="parameters")
    )
    np.testing.assert_allclose(weights, FIXTURE["sdmgrad"]["weights"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(directions, np.einsum("sk,skn->sn", weights, np.array(JACOBIANS)), rtol=1e-5, atol=1e-5)


def test_modo_equals_torchjd_over_steps():
    weights, _ = run_steps(MoDo(learning_rate=0.1, regularization=0.1, level="parameters"))
    np.testing.assert_allclose(weights, FIXTURE["modo"]["weights"], rtol=2e-5, atol=1e-6)


def test_excess_mtl_equals_torchjd_over_steps_after_its_warmup():
    weights, _ = run_steps(ExcessMTL(robust_step_size=1.0, warmup_steps=2, level="parameters"))
    np.testing.assert_allclose(weights, FIXTURE["excess_mtl"]["weights"], rtol=2e-5, atol=1e-6)


def test_moco_with_the_softmax_map_equals_the_authors_code_in_libmtl():
    case = FIXTURE["moco"]
    aggregator = MoCo(simplex_map="softmax", level="parameters")
    weights, directions = run_steps(aggregator, losses=case["losses"])
    np.testing.assert_allclose(weights, case["weights"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(directions, case["directions"], rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------------- properties
def test_gradvac_first_step_is_pcgrad_in_the_same_orders():
    """With targets 0 the vaccine lifts exactly the negative cosines to 0: PCGrad's projection."""
    matrix = JACOBIANS[0]
    orders = visiting_orders(tf.constant([3, 4]), NUM_TASKS)
    weights, _ = gradvac_weights(tf.constant(matrix @ matrix.T), tf.zeros([3, 3], tf.float64), orders, 0.5, 0.0)
    with_self = tf.concat([orders, tf.range(NUM_TASKS)[:, None]], axis=1)  # PCGrad leaves g_i alone against itself
    np.testing.assert_allclose(weights.numpy(), pcgrad_weights(tf.constant(matrix @ matrix.T), with_self), rtol=1e-9)


def test_graddrop_keeps_consistent_coordinates_and_leak_one_is_the_sum():
    rng = np.random.default_rng(0)
    matrix = np.abs(rng.normal(size=(3, 6))) * np.sign(rng.normal(size=(1, 6)))  # one sign per coordinate
    uniforms = tf.constant(rng.uniform(size=6))
    direction, kept = graddrop_direction(tf.constant(matrix), uniforms, tf.zeros([3], tf.float64))
    np.testing.assert_allclose(direction.numpy(), matrix.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(kept.numpy(), 1.0)
    conflicting = rng.normal(size=(3, 6))
    direction, kept = graddrop_direction(tf.constant(conflicting), uniforms, tf.ones([3], tf.float64))
    np.testing.assert_allclose(direction.numpy(), conflicting.sum(axis=0), rtol=1e-12)
    direction, _ = graddrop_direction(tf.constant(conflicting), uniforms, tf.zeros([3], tf.float64))
    signs = np.sign(conflicting)  # without leak each coordinate keeps the components of one sign only
    kept_components = conflicting * (np.sign(direction.numpy())[None] == signs)
    np.testing.assert_allclose(direction.numpy(), kept_components.sum(axis=0), rtol=1e-12)


def test_moco_at_representation_level_tracks_the_gram_matrix():
    aggregator = MoCo(loss_normalization=False)
    aggregator.build_for(TaskLayout({"a": kb.tasks.Regression(), "b": kb.tasks.Regression()}, 3))
    gradients = tf.constant(np.random.default_rng(1).normal(size=(2, 2, 3)), tf.float32)  # [B, K, D]
    inputs = AggregatorInputs(tf.ones([2]), tf.zeros([2, 3]), gradients, {}, {})
    applied(aggregator, inputs)
    flat = np.transpose(gradients.numpy(), (1, 0, 2)).reshape(2, -1) / 2
    np.testing.assert_allclose(aggregator.tracked.numpy(), 0.5 * flat @ flat.T, rtol=1e-5)  # β_1 = 0.5 from 0


def test_excess_mtl_moves_weight_to_the_task_whose_excess_risk_stays_high():
    """Task 0's gradient keeps its size while task 1's shrinks: task 0 is further from its optimum."""
    aggregator = ExcessMTL(level="parameters")
    aggregator.build_for(parameter_layout(2, 4))
    direction = np.array([1.0, 0.5, -0.2, 0.3])
    for step in range(6):
        matrix = np.stack([direction, direction[::-1] * 0.5**step])
        weights = applied(aggregator, parameter_inputs(matrix)).task_weights.numpy()
    assert weights[0] > 0.6 and abs(weights.sum() - 1.0) < 1e-6


# ---------------------------------------------------------------------- state, seeds and the fault rule
STATEFUL: dict[str, Callable[[], kb.interface.Aggregator]] = {
    "gradvac": lambda: GradVac(seed=3, level="parameters"),
    "graddrop": lambda: GradDrop(seed=3, level="parameters"),
    "sdmgrad": lambda: SDMGrad(level="parameters"),
    "modo": lambda: MoDo(level="parameters"),
    "moco": lambda: MoCo(level="parameters"),
    "excess_mtl": lambda: ExcessMTL(level="parameters"),
}


def state_of(aggregator: kb.interface.Aggregator) -> list[np.ndarray]:
    return [v.numpy().copy() for v in aggregator.weights] + [
        g.state.numpy().copy() for g in aggregator._seed_generators
    ]


@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_changes_only_in_commit_and_a_replayed_step_repeats(name):
    aggregator = STATEFUL[name]()
    aggregator.build_for(parameter_layout())
    applied(aggregator, parameter_inputs(JACOBIANS[0]))
    before = state_of(aggregator)
    uncommitted = aggregator.aggregate(parameter_inputs(JACOBIANS[1]))
    for old, new in zip(before, state_of(aggregator)):
        np.testing.assert_array_equal(old, new)
    aggregator.commit(uncommitted)
    assert any(not np.array_equal(old, new) for old, new in zip(before, state_of(aggregator)))
    fresh = STATEFUL[name]()
    fresh.build_for(parameter_layout())
    applied(fresh, parameter_inputs(JACOBIANS[0]))
    again = applied(fresh, parameter_inputs(JACOBIANS[1]))  # the skipped attempt left no trace
    np.testing.assert_allclose(again.parameter_gradient.numpy(), uncommitted.parameter_gradient.numpy(), rtol=1e-6)


def test_graddrop_draws_anew_each_step_and_the_seed_reproduces_them():
    def directions(seed: int) -> list[np.ndarray]:
        aggregator = GradDrop(seed=seed, level="parameters")
        aggregator.build_for(parameter_layout())
        return [applied(aggregator, parameter_inputs(JACOBIANS[0])).parameter_gradient.numpy() for _ in range(4)]

    first = directions(5)
    np.testing.assert_array_equal(first, directions(5))
    assert len({tuple(np.round(d, 5)) for d in first}) > 1


def test_state_sized_per_parameter_needs_the_parameter_count_and_leak_must_fit():
    with pytest.raises(ValueError, match="parameter_count"):
        MoCo(level="parameters").build_for(TaskLayout({"a": kb.tasks.Regression()}, 3))
    with pytest.raises(ValueError, match="leak has 2 values"):
        GradDrop(leak=[0.1, 0.2]).build_for(parameter_layout())
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=1.5)
    with pytest.raises(ValueError, match="simplex_map"):
        MoCo(simplex_map="exp")
    with pytest.raises(ValueError, match="preference"):
        SDMGrad(preference=[0.5, 0.6])
    with pytest.raises(ValueError, match="beta"):
        GradVac(beta=2.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        ExcessMTL(warmup_steps=-1)


def test_graddrop_compiles_once_under_xla():
    aggregator = GradDrop(seed=0)
    aggregator.build_for(TaskLayout({f"t{k}": kb.tasks.Regression() for k in range(3)}, 5))
    step = tf.function(
        lambda g: applied(aggregator, AggregatorInputs(tf.zeros([3]), tf.zeros([4, 5]), g, {}, {})).task_weights,
        jit_compile=True,
    )
    for seed in range(3):
        step(tf.constant(np.random.default_rng(seed).normal(size=(4, 3, 5)), tf.float32))
    assert step.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------------- training
TRAINING = {
    "gradvac": lambda level: GradVac(seed=1, level=level),
    "graddrop": lambda level: GradDrop(seed=1, level=level),
    "sdmgrad": lambda level: SDMGrad(level=level),
    "modo": lambda level: MoDo(level=level),
    "moco": lambda level: MoCo(level=level),
    "excess_mtl": lambda level: ExcessMTL(level=level),
}
CASES = [(name, level) for name in TRAINING for level in ("representation", "parameters")]
# In `make test`: every method at the default level, and the two whose state is per trunk parameter at that level.
FAST = {(name, "representation") for name in TRAINING} | {("moco", "parameters"), ("excess_mtl", "parameters")}


def fast_or_slow(cases: list[tuple[str, str]], fast: set[tuple[str, str]]) -> list:
    return [pytest.param(*case, marks=() if case in fast else pytest.mark.slow) for case in cases]


_trained: dict[tuple[str, str], tuple[kb.MultiTaskModel, list[float], kb.callbacks.TaskWeightHistory]] = {}


def trained(name: str, level: str) -> tuple[kb.MultiTaskModel, list[float], kb.callbacks.TaskWeightHistory]:
    """One short fit per (method, level), shared by the training and round-trip tests."""
    if (name, level) not in _trained:
        model = make_mixed_model()
        model.compile(optimizer=keras.optimizers.Adam(0.01), aggregator=TRAINING[name](level))
        recorder = kb.callbacks.TaskWeightHistory()
        history = model.fit(mixed_dataset(num_samples=256), epochs=3, verbose=0, callbacks=[recorder])
        _trained[name, level] = model, history.history["loss"], recorder
    return _trained[name, level]


@pytest.mark.parametrize(("name", "level"), fast_or_slow(CASES, FAST))
def test_trains_a_mixed_task_model_and_records_task_weights(name, level):
    model, losses, recorder = trained(name, level)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
    units = ["value", "flags[0]", "flags[1]", "flags[2]", "kind"]
    assert list(recorder.history) == units and recorder.epochs == [0, 1, 2]
    assert all(np.isfinite(recorder.history[unit]).all() for unit in units)


@pytest.mark.slow  # XLA end to end: once per family in test_aggregators_gradient.py; the math in the unit tests
@pytest.mark.parametrize(("name", "level"), CASES)
def test_trains_under_xla(name, level):
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), aggregator=TRAINING[name](level), jit_compile=True)
    losses = model.fit(mixed_dataset(num_samples=256), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]


ROUND_TRIPS = [(name, "representation") for name in TRAINING] + [("moco", "parameters"), ("excess_mtl", "parameters")]


@pytest.mark.parametrize(
    ("name", "level"),
    fast_or_slow(
        ROUND_TRIPS, {("gradvac", "representation"), ("moco", "parameters"), ("excess_mtl", "representation")}
    ),
)
def test_keras_round_trip_keeps_config_and_state(name, level, tmp_path):
    model, _, _ = trained(name, level)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.aggregator) is type(model.aggregator)
    assert restored.aggregator.get_config() == model.aggregator.get_config()
    for original, loaded in zip(state_of(model.aggregator), state_of(restored.aggregator)):
        np.testing.assert_array_equal(loaded, original)
    restored.fit(mixed_dataset(num_samples=64), epochs=1, verbose=0)
