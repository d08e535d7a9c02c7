"""UPGrad, DualProj, ConFIG, FairGrad, Krum, TrimmedMean, PCD and the CRMOGM wrapper: equality with TorchJD 0.18
on committed fixtures, their own properties, state (fault rule, `.keras` round trip), XLA and training.

The shared properties (finite outputs, permutation invariance, identical and opposite gradients, both levels,
XLA compiling once) of the Gram-only four are in test_aggregators_gradient.py; their hand-derived directions on
the fixed Jacobian in test_aggregator_conventions.py.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.aggregators import (
    CRMOGM,
    MGDA,
    PCD,
    ConFIG,
    DualProj,
    FairGrad,
    Krum,
    TrimmedMean,
    UPGrad,
)
from keras_bayesagg.aggregators._solvers import nonnegative_quadratic_minimizers
from keras_bayesagg.aggregators.base import Aggregator, AggregatorInputs, TaskLayout
from tests.conftest import applied, make_mixed_model, mixed_dataset

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "torchjd_projection.json").read_text())
LEVELS = ("parameters", "representation")


def layout(num_tasks: int, dim: int) -> TaskLayout:
    return TaskLayout({f"t{k}": kb.tasks.Regression() for k in range(num_tasks)}, dim)


def built(aggregator: Aggregator, num_tasks: int, dim: int) -> Aggregator:
    aggregator.build_for(layout(num_tasks, dim))
    return aggregator


def inputs_for(level: str, jacobian: np.ndarray | tf.Tensor) -> AggregatorInputs:
    """Task gradients `jacobian` [K, N] at `level` (representation: one sample, so they are the rows themselves)."""
    gradients = tf.convert_to_tensor(jacobian, tf.float32)
    representation = level == "representation"
    return AggregatorInputs(
        losses=tf.zeros([gradients.shape[0]]),
        representation=tf.zeros([1, gradients.shape[1]]),
        task_gradients=gradients[None] if representation else None,
        parameter_gradients=None if representation else gradients,
        labels={},
        head_weights={},
    )


def step(aggregator: Aggregator, jacobian: np.ndarray, graph: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One applied step at the aggregator's level: (direction [N], task weights [K]); eagerly, or as a tf.function
    (`graph`, kept on the aggregator: MGDA's 500-step solver is slow eagerly)."""

    def run(gradients: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        result = applied(aggregator, inputs_for(aggregator.level, gradients))
        representation = aggregator.level == "representation"
        return result.representation_gradient[0] if representation else result.parameter_gradient, result.task_weights

    if graph:
        if not hasattr(aggregator, "test_step"):
            aggregator.test_step = tf.function(run)
        run = aggregator.test_step
    direction, weights = run(tf.constant(jacobian, tf.float32))
    return direction.numpy().astype("float64"), weights.numpy().astype("float64")


# ---------------------------------------------------------------------- TorchJD 0.18 fixtures
def fixture_aggregator(case: str, options: dict[str, Any], level: str) -> Aggregator:
    method = case.split("_")[0]
    if method == "CRMOGM":
        inner = {"UPGrad": UPGrad, "MGDA": MGDA}[options["method"]](level=level)
        return CRMOGM(inner, alpha=options["alpha"])
    makers: dict[str, Callable[..., Aggregator]] = {
        "UPGrad": UPGrad,
        "DualProj": DualProj,
        "ConFIG": ConFIG,
        "FairGrad": FairGrad,
        "Krum": Krum,
        "TrimmedMean": TrimmedMean,
        "PCD": PCD,
    }
    return makers[method](level=level, **options)


def run_fixture(case: str, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Our directions and TorchJD's outputs over the case's Jacobians, one instance per task count (in order)."""
    data = FIXTURE["cases"][case]
    ours, aggregator = [], None
    for jacobian in map(np.array, data["jacobians"]):
        if aggregator is None or aggregator.layout.num_units != len(jacobian):
            aggregator = built(fixture_aggregator(case, data["options"], level), *jacobian.shape)
        ours.append(step(aggregator, jacobian, graph="MGDA" in case)[0])
    return ours, [np.array(output) for output in data["outputs"]]


def relative_errors(ours: list[np.ndarray], theirs: list[np.ndarray]) -> np.ndarray:
    return np.array([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(ours, theirs)])


# Ours take float32 gradients (their Gram matrix is float32: ~1e-6 relative); TorchJD ran in float64. Its defaults that are inexact: quadprog on M/tr(M) + 1e-4·I (UPGrad, DualProj), MGDA's Frank-Wolfe (run
# there to 1e5 steps, still ~5e-5 off the min-norm point our solver reaches); Krum_f2_m1 is compared below.
TOLERANCE = {"UPGrad": 3e-2, "DualProj": 3e-2, "CRMOGM_MGDA_alpha_0.9": 2e-4}
EXACT_CASES = [case for case in FIXTURE["cases"] if case not in ("Krum_f2_m1", "Krum_f1_m1_scores_differ")]


def test_the_fixture_says_which_anchor_made_it():
    assert FIXTURE["anchor"] == "torchjd 0.18.0" and len(FIXTURE["cases"]) == 18


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", EXACT_CASES)
def test_equals_torchjd_on_the_fixture(case, level):
    ours, theirs = run_fixture(case, level)
    assert np.all(relative_errors(ours, theirs) < TOLERANCE.get(case, 2e-5))


@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_torchjd_default_projection_is_off_by_its_ridge_and_ours_is_the_exact_one(method):
    ours, default = run_fixture(method, "parameters")
    _, exact = run_fixture(f"{method}_reg_eps_1e-12", "parameters")
    assert np.all(relative_errors(ours, exact) < 2e-6)
    assert relative_errors(ours, default).max() > 1e-3  # the 1e-4 ridge shows at this size
    for jacobian, direction in zip(map(np.array, FIXTURE["cases"][method]["jacobians"]), ours):
        assert np.all(jacobian @ direction >= -1e-6 * np.max(np.sum(jacobian**2, axis=1)))


def krum_scores(jacobian: np.ndarray, n_byzantine: int, power: float) -> np.ndarray:
    """Σ over the K - f - 2 nearest other rows of ‖g_i - g_j‖^power (power 2: the paper; 1: TorchJD 0.18)."""
    distances = np.linalg.norm(jacobian[:, None] - jacobian[None], axis=2) ** power
    return np.sort(distances, axis=1)[:, 1 : len(jacobian) - n_byzantine - 1].sum(axis=1)


def test_krum_sums_squared_distances_as_the_paper_where_torchjd_sums_distances():
    (jacobian,) = map(np.array, FIXTURE["cases"]["Krum_f1_m1_scores_differ"]["jacobians"])
    (ours,), (theirs,) = run_fixture("Krum_f1_m1_scores_differ", "parameters")
    np.testing.assert_allclose(ours, jacobian[np.argmin(krum_scores(jacobian, 1, 2.0))], rtol=1e-6)
    np.testing.assert_allclose(theirs, jacobian[np.argmin(krum_scores(jacobian, 1, 1.0))], rtol=1e-12)
    assert not np.allclose(ours, theirs)


def test_krum_with_one_neighbour_picks_one_of_the_tied_rows():
    """f = K - 3 leaves one neighbour per score, so mutual nearest neighbours tie: TorchJD's topk may pick
    either, ours the earlier task; both pick a row of the smallest score."""
    ours, theirs = run_fixture("Krum_f2_m1", "parameters")
    for jacobian, mine, anchor in zip(map(np.array, FIXTURE["cases"]["Krum_f2_m1"]["jacobians"]), ours, theirs):
        scores = krum_scores(jacobian, 2, 2.0)
        best = np.flatnonzero(np.isclose(scores, scores.min(), rtol=1e-9))
        assert any(np.allclose(mine, jacobian[i], rtol=1e-6) for i in best)
        assert any(np.allclose(anchor, jacobian[i], rtol=1e-12) for i in best)


# ---------------------------------------------------------------------- properties
def conflicting(seed: int, num_tasks: int, dim: int = 9, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    jacobian = rng.normal(size=(num_tasks, dim))
    jacobian[1:] -= 0.9 * jacobian[:1]
    return (jacobian * scale * 10.0 ** rng.uniform(-1, 1, size=(num_tasks, 1))).astype("float32")


DRAWS = [(seed, num_tasks, scale) for seed, num_tasks, scale in [(0, 2, 1.0), (1, 3, 1e-5), (2, 4, 1e5), (3, 5, 1.0)]]


@pytest.mark.parametrize(("seed", "num_tasks", "scale"), DRAWS)
def test_upgrad_and_dualproj_conflict_with_no_task(seed, num_tasks, scale):
    jacobian = conflicting(seed, num_tasks, scale=scale).astype("float64")
    largest = np.max(np.sum(jacobian**2, axis=1))
    for make in (UPGrad, DualProj):
        direction, weights = step(built(make(level="parameters"), num_tasks, 9), jacobian)
        assert np.all(jacobian @ direction >= -1e-5 * largest)
        assert np.all(weights >= 1.0 / num_tasks - 1e-6)  # v ≥ u: a projection only adds to each weight


def test_dualproj_leaves_a_non_conflicting_mean_alone_and_upgrad_is_then_the_mean():
    jacobian = np.abs(conflicting(4, 3)).astype("float64")  # positive entries: no pair conflicts
    for make in (UPGrad, DualProj):
        direction, _ = step(built(make(level="parameters"), 3, 9), jacobian)
        np.testing.assert_allclose(direction, jacobian.mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize(("seed", "num_tasks", "scale"), DRAWS)
def test_config_is_equally_inclined_to_every_task_with_the_summed_projection(seed, num_tasks, scale):
    jacobian = conflicting(seed, num_tasks, scale=scale).astype("float64")
    direction, _ = step(built(ConFIG(level="parameters"), num_tasks, 9), jacobian)
    cosines = jacobian @ direction / (np.linalg.norm(jacobian, axis=1) * np.linalg.norm(direction))
    np.testing.assert_allclose(cosines, cosines.mean(), rtol=1e-4)
    assert cosines.min() > 0
    unit = direction / np.linalg.norm(direction)
    assert np.linalg.norm(direction) == pytest.approx(np.sum(jacobian @ unit), rel=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("seed", "num_tasks", "scale"), DRAWS[1:])
def test_fairgrad_solves_the_alpha_fair_condition(alpha, seed, num_tasks, scale):
    jacobian = conflicting(seed, num_tasks, scale=scale).astype("float64")
    _, weights = step(built(FairGrad(alpha=alpha, level="parameters"), num_tasks, 9), jacobian)
    gains = jacobian @ jacobian.T @ weights
    np.testing.assert_allclose(gains, weights ** (-1.0 / alpha), rtol=2e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("norm", [1e-3, 1.0, 1e3])
def test_fairgrad_identical_gradients_give_the_closed_form(alpha, norm):
    """K copies of g: w = (K‖g‖²)^{-α/(α+1)}·1, so d = K^{1/(α+1)} ‖g‖^{-2α/(α+1)} g."""
    g = np.random.default_rng(0).normal(size=6)
    g *= norm / np.linalg.norm(g)
    direction, _ = step(built(FairGrad(alpha=alpha, level="parameters"), 3, 6), np.tile(g, (3, 1)))
    factor = 3 ** (1 / (alpha + 1)) * norm ** (-2 * alpha / (alpha + 1))
    np.testing.assert_allclose(direction, factor * g, rtol=1e-4)


def test_fairgrad_alpha_zero_is_the_average():
    jacobian = conflicting(0, 3).astype("float64")
    direction, _ = step(built(FairGrad(alpha=0.0, level="parameters"), 3, 9), jacobian)
    np.testing.assert_allclose(direction, jacobian.mean(axis=0), rtol=1e-5)


def outlier_jacobian(num_tasks: int = 5, outlier: int = 2) -> np.ndarray:
    rng = np.random.default_rng(5)
    jacobian = 1.0 + 0.1 * rng.normal(size=(num_tasks, 9))
    jacobian[outlier] = -1e3 * jacobian[outlier]
    return jacobian


def test_krum_and_trimmed_mean_are_not_moved_by_an_outlier():
    jacobian = outlier_jacobian()
    honest = np.delete(jacobian, 2, axis=0)
    krum_direction, krum_weights = step(built(Krum(n_byzantine=1, level="parameters"), 5, 9), jacobian)
    assert krum_weights[2] == 0 and np.sum(krum_weights) == pytest.approx(1.0)
    assert any(np.allclose(krum_direction, row, rtol=1e-6) for row in honest)
    multi_direction, multi_weights = step(built(Krum(n_byzantine=1, n_selected=3, level="parameters"), 5, 9), jacobian)
    assert multi_weights[2] == 0 and np.count_nonzero(multi_weights) == 3
    np.testing.assert_allclose(multi_direction, multi_weights @ jacobian, rtol=1e-5)
    direction, shares = step(built(TrimmedMean(trim_number=1, level="parameters"), 5, 9), jacobian)
    expected = np.sort(jacobian, axis=0)[1:-1].mean(axis=0)
    np.testing.assert_allclose(direction, expected, rtol=1e-6)
    assert np.abs(direction - honest.mean(axis=0)).max() < 0.2
    assert shares.sum() == pytest.approx(1.0) and shares[2] == pytest.approx(0.0)  # always trimmed


def test_krum_and_trimmed_mean_permute_with_the_tasks():
    jacobian = outlier_jacobian()
    permutation = np.array([3, 0, 4, 2, 1])
    for make in (lambda: Krum(n_byzantine=1, level="parameters"), lambda: TrimmedMean(level="parameters")):
        direction, weights = step(built(make(), 5, 9), jacobian)
        permuted_direction, permuted_weights = step(built(make(), 5, 9), jacobian[permutation])
        np.testing.assert_allclose(permuted_direction, direction, rtol=1e-6)
        np.testing.assert_allclose(permuted_weights, weights[permutation], rtol=1e-6)


def test_pcd_follows_the_primary_task_within_the_constraints():
    jacobian = conflicting(7, 4).astype("float64")
    aggregator = built(PCD(tau=0.3, level="parameters"), 4, 9)
    direction, _ = step(aggregator, jacobian)
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)  # first step: g̃_i = g_i/‖g_i‖ (up to ε)
    assert np.linalg.norm(direction) == pytest.approx(np.linalg.norm(jacobian[0]), rel=1e-5)
    # The KKT point of the program in the unit vectors, from the solver on its own, satisfies the constraints:
    multipliers = nonnegative_quadratic_minimizers(units[1:] @ units[1:].T, (units[1:] @ units[0] - 0.3)[None]).numpy()[
        0
    ]
    exact = units[0] + multipliers @ units[1:]
    assert np.all(units[1:] @ exact >= 0.3 - 1e-9)
    np.testing.assert_allclose(direction, np.linalg.norm(jacobian[0]) * exact / np.linalg.norm(exact), rtol=1e-4)


def test_pcd_drops_infeasible_constraints_and_follows_the_primary_gradient():
    """Two anti-parallel secondary gradients cannot both gain: d = g_1."""
    jacobian = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [0.0, -2.0, -2.0]])
    direction, weights = step(built(PCD(level="parameters"), 3, 3), jacobian)
    np.testing.assert_allclose(direction, jacobian[0], rtol=1e-6)
    np.testing.assert_allclose(weights, [1.0, 0.0, 0.0], atol=1e-7)


def test_crmogm_smooths_the_weights_of_the_wrapped_method():
    draws = [conflicting(seed, 3) for seed in range(4)]
    alone = built(MGDA(level="parameters"), 3, 9)
    proposed = [step(alone, jacobian, graph=True)[1] for jacobian in draws]
    wrapped = built(CRMOGM(MGDA(level="parameters"), alpha=0.6), 3, 9)
    smoothed = proposed[0]
    for jacobian, fresh in zip(draws, proposed):
        smoothed = 0.6 * smoothed + 0.4 * fresh  # λ_0 = λ̂_1: the first step is the method's own
        direction, weights = step(wrapped, jacobian, graph=True)
        np.testing.assert_allclose(weights, smoothed, rtol=1e-5)
        np.testing.assert_allclose(direction, smoothed @ jacobian, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(wrapped.method.last_task_weights.numpy(), proposed[-1], rtol=1e-5)
    frozen = built(CRMOGM(MGDA(level="parameters"), alpha=1.0), 3, 9)
    assert all(np.allclose(step(frozen, jacobian, graph=True)[1], proposed[0], rtol=1e-5) for jacobian in draws)


def test_invalid_arguments_are_rejected_clearly():
    for make, match in [
        (lambda: FairGrad(alpha=-1.0), "alpha"),
        (lambda: Krum(n_byzantine=-1), "n_byzantine"),
        (lambda: Krum(n_selected=0), "n_selected"),
        (lambda: TrimmedMean(trim_number=-1), "trim_number"),
        (lambda: PCD(tau=1.5), "tau"),
        (lambda: PCD(beta=1.0), "beta"),
        (lambda: CRMOGM(MGDA(), alpha=2.0), "alpha"),
        (lambda: CRMOGM(TrimmedMean()), "method"),
        (lambda: CRMOGM("MGDA"), "method"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(ValueError, match=r"Krum.*at least 4 task units"):
        built(Krum(n_byzantine=1), 3, 4)
    with pytest.raises(ValueError, match=r"TrimmedMean.*at least 5 task units"):
        built(TrimmedMean(trim_number=2), 4, 4)


# ---------------------------------------------------------------------- missing labels, state, XLA
@pytest.mark.parametrize("make", [UPGrad, TrimmedMean, lambda: Krum(n_byzantine=1)], ids=["upgrad", "tm", "krum"])
def test_presence_weights_scale_each_task_gradient_by_its_count(make):
    """With presence (0 = missing) the methods combine G[:, k]/n_k: the same as fully
    labelled inputs whose per-sample gradients are pre-scaled by B/n_k."""
    rng = np.random.default_rng(3)
    gradients = rng.normal(size=(4, 5, 3)).astype("float32")
    # 0/1 presence: a missing label only changes its unit's count (weights > 1 also change the rows' inner
    # products, a repetition count; that rule is tests/test_sample_weights_aggregators.py's).
    present = np.array([[1, 0, 1, 1, 1], [1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 0, 1]], "float32")
    gradients = gradients * (present > 0)[:, :, None]
    counts = present.sum(axis=0)

    def representation_gradient(g: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        aggregator = built(make(), 5, 3)
        result = aggregator.aggregate(
            AggregatorInputs(
                tf.zeros([5]), tf.zeros([4, 3]), tf.constant(g), {}, {}, present=None if mask is None else mask
            )
        )
        return result.representation_gradient.numpy()

    with_presence = representation_gradient(gradients, tf.constant(present))
    prescaled = representation_gradient(gradients * (4 / counts)[None, :, None], None)
    np.testing.assert_allclose(with_presence, prescaled, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [PCD, lambda: CRMOGM(PCD())], ids=["pcd", "crmogm"])
def test_state_changes_only_in_commit(make):
    aggregator = built(make(), 3, 9)
    before = [variable.numpy().copy() for variable in aggregator.weights]
    aggregation = aggregator.aggregate(inputs_for("representation", conflicting(0, 3)))
    for variable, value in zip(aggregator.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    aggregator.commit(aggregation)
    changed = [not np.array_equal(v.numpy(), b) for v, b in zip(aggregator.weights, before)]
    assert sum(changed) >= 3  # the moving average and the step count (and, wrapped, λ and its flag)


def test_xla_compiles_once_and_equals_graph_mode():
    """Krum, TrimmedMean, PCD and CRMOGM(ConFIG) in one function (one compilation); the Gram-only methods are
    XLA-tested in test_aggregators_gradient.py."""
    makers = [
        lambda: Krum(n_byzantine=1),
        lambda: TrimmedMean(trim_number=1),
        lambda: PCD(tau=0.2),
        lambda: CRMOGM(ConFIG(), alpha=0.5),
    ]
    draws = [conflicting(seed, 5, dim=12).reshape(5, 4, 3).transpose(1, 0, 2) for seed in range(3)]
    results = {}
    for jit_compile in (False, True):
        aggregators = [built(make(), 5, 3) for make in makers]

        @tf.function(jit_compile=jit_compile)
        def run(gradients: tf.Tensor, aggregators: list = aggregators) -> list[tf.Tensor]:
            inputs = AggregatorInputs(tf.zeros([5]), tf.zeros([4, 3]), gradients, {}, {})
            return [applied(aggregator, inputs).representation_gradient for aggregator in aggregators]

        outputs = [run(tf.constant(draws[0]))]
        started = time.perf_counter()
        outputs += [run(tf.constant(g)) for g in draws[1:]]
        if jit_compile:
            assert time.perf_counter() - started < 0.3  # no recompilation for new values
        results[jit_compile] = np.array([[output.numpy() for output in step] for step in outputs])
    scale = np.abs(results[False]).max()
    np.testing.assert_allclose(results[True], results[False], rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------------- training, saving, TaskWeightHistory
TRAINING = {
    "upgrad": lambda: UPGrad(),
    "dualproj": lambda: DualProj(),
    "config": lambda: ConFIG(),
    "fairgrad": lambda: FairGrad(alpha=2.0),
    "krum": lambda: Krum(n_byzantine=1, n_selected=2),
    "trimmed_mean": lambda: TrimmedMean(),
    "pcd": lambda: PCD(tau=0.1),
    "crmogm_pcd": lambda: CRMOGM(PCD()),
    "upgrad_parameters": lambda: UPGrad(level="parameters"),
    "trimmed_mean_parameters": lambda: TrimmedMean(level="parameters"),
    "crmogm_parameters": lambda: CRMOGM(DualProj(level="parameters"), alpha=0.5),
    "config_parameters": lambda: ConFIG(level="parameters"),
    "fairgrad_parameters": lambda: FairGrad(level="parameters"),
    "krum_parameters": lambda: Krum(n_selected=3, level="parameters"),
    "pcd_parameters": lambda: PCD(level="parameters"),
}
# One fast fit per level: this one (parameters) and `trained_wrapper` below (representation, CRMOGM(PCD)); every
# method at both levels also trains in test_missing_labels.py::test_every_aggregator_trains_on_partly_labelled_data.
FAST_TRAINING = ("crmogm_parameters",)


def fit(make: Callable[[], Aggregator], jit_compile: bool = False, **options: Any) -> tuple[kb.MultiTaskModel, list]:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), aggregator=make(), jit_compile=jit_compile)
    history = model.fit(mixed_dataset(num_samples=256), epochs=3, verbose=0, **options)
    return model, history


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=() if case in FAST_TRAINING else pytest.mark.slow) for case in TRAINING]
)
def test_trains_a_mixed_task_model(case):
    model, history = fit(TRAINING[case])
    losses = history.history["loss"]
    # Krum follows a few task gradients' average (K/m times shorter than the sum): it falls more slowly.
    assert np.all(np.isfinite(losses)) and losses[-1] < (0.95 if case.startswith("krum") else 0.9) * losses[0]
    weights = model.aggregator.last_task_weights.numpy()
    assert weights.shape == (5,) and np.all(np.isfinite(weights))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["upgrad", "trimmed_mean_parameters", "crmogm_pcd", "krum"])
def test_trains_under_xla(case):
    _, history = fit(TRAINING[case], jit_compile=True)
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]


@pytest.fixture(scope="module")
def trained_wrapper() -> kb.MultiTaskModel:
    """CRMOGM(PCD()) after a short fit, with a TaskWeightHistory: wrapper and wrapped state are both non-trivial."""
    recorder = kb.callbacks.TaskWeightHistory()
    model, history = fit(lambda: CRMOGM(PCD(tau=0.1), alpha=0.8), callbacks=[recorder])
    model.recorder, model.losses_seen = recorder, history.history["loss"]
    return model


def test_the_wrapper_trains_a_mixed_task_model_at_the_representation_level(trained_wrapper):
    losses = trained_wrapper.losses_seen
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]


def test_keras_round_trip_keeps_the_wrapper_the_method_and_their_state(trained_wrapper, tmp_path):
    model = trained_wrapper
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.aggregator) is CRMOGM and type(restored.aggregator.method) is PCD
    assert restored.aggregator.get_config() == model.aggregator.get_config()
    assert restored.aggregator.method.tau == 0.1 and restored.aggregator.alpha == 0.8
    saved = {
        "smoothed": model.aggregator.smoothed_weights,
        "average": model.aggregator.method.squared_norm_average,
        "steps": model.aggregator.method.step_count,
    }
    loaded = {
        "smoothed": restored.aggregator.smoothed_weights,
        "average": restored.aggregator.method.squared_norm_average,
        "steps": restored.aggregator.method.step_count,
    }
    assert float(saved["steps"].numpy()) == 12.0  # 3 epochs of 4 batches
    for key in saved:
        np.testing.assert_array_equal(loaded[key].numpy(), saved[key].numpy(), err_msg=key)
    restored.fit(mixed_dataset(num_samples=128), epochs=1, verbose=0)
    assert float(restored.aggregator.method.step_count.numpy()) == 14.0


@pytest.mark.parametrize(
    "aggregator",
    [
        UPGrad(level="parameters"),
        DualProj(),
        ConFIG(),
        FairGrad(alpha=2.5, max_iterations=30),
        Krum(n_byzantine=2, n_selected=3, level="parameters"),
        TrimmedMean(trim_number=2),
        PCD(tau=0.3, beta=0.9, epsilon=0.0, level="parameters"),
        CRMOGM(FairGrad(alpha=3.0, level="parameters"), alpha=0.25),
    ],
    ids=lambda aggregator: type(aggregator).__name__,
)
def test_config_round_trips_through_keras_serialization(aggregator):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(aggregator))
    assert type(restored) is type(aggregator) and restored.get_config() == aggregator.get_config()
    assert restored.level == aggregator.level


def test_task_weight_history_records_the_smoothed_weights(trained_wrapper):
    recorder = trained_wrapper.recorder
    units = ["value", "flags[0]", "flags[1]", "flags[2]", "kind"]
    assert list(recorder.history) == units and recorder.epochs == [0, 1, 2]
    assert all(np.all(np.isfinite(recorder.history[unit])) for unit in units)
    # PCD's primary task (the first unit) keeps a coefficient of the order of the others' (relative weights).
    assert recorder.history["value"][-1] > 0
