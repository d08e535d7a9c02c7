"""Gradient-based aggregators (MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL): properties
over random task gradients at scales 1e-6..1e6, hand-worked answers, training a mixed-task model
(graph and XLA), and `.keras` round trips."""

from __future__ import annotations

import functools
import time
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_bayesagg as kb
from keras_bayesagg.aggregators import (
    DBMTL,
    IMTL,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradVac,
    MoCo,
    MoDo,
    NashMTL,
    PCGrad,
    SDMGrad,
    UPGrad,
)
from keras_bayesagg.aggregators.aligned_mtl import balance_transformation
from keras_bayesagg.interface import AggregatorInputs, TaskLayout
from tests.conftest import applied, make_mixed_model, mixed_dataset

BATCH, DIM = 4, 5

FACTORIES: dict[str, Callable[..., kb.interface.Aggregator]] = {
    "mgda": MGDA,
    "pcgrad": functools.partial(PCGrad, seed=1),
    "cagrad": CAGrad,
    "imtlg": IMTLG,
    "nash": functools.partial(NashMTL, max_norm=None),  # the properties below are of the unclipped direction
    "aligned": AlignedMTL,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "config": ConFIG,
    "fairgrad": FairGrad,
    "gradvac": functools.partial(GradVac, seed=1),
    "sdmgrad": SDMGrad,
    "modo": MoDo,
    "moco": functools.partial(MoCo, loss_normalization=False),  # the harness's losses are 0
    "excess_mtl": ExcessMTL,
    "imtl": IMTL,  # log-scales at 0: IMTL-G's direction
    "dbmtl": functools.partial(DBMTL, beta=0.0),  # no memory: the properties of one step's balancing
}
# Keep state across steps (one `compiled` instance serves many draws): no same-input comparisons across instances.
STATEFUL = {"gradvac", "sdmgrad", "modo", "moco", "excess_mtl"}
# The direction a method gives for K identical gradients g, as a multiple of g.
IDENTICAL_GRADIENTS_FACTOR: dict[str, Callable[[int], float]] = {
    "mgda": lambda k: 1.0,  # the average
    "imtlg": lambda k: 1.0,
    "cagrad": lambda k: 1.0 + 0.4,  # (1 + c)·average before rescaling, divided by 1 + c² by default
    "pcgrad": lambda k: float(k),  # the sum: nothing conflicts
    "nash": lambda k: float(k),
    "aligned": lambda k: float(k),
    "upgrad": lambda k: 1.0,  # nothing conflicts: the average of the (unchanged) gradients
    "dualproj": lambda k: 1.0,
    "config": lambda k: float(k),  # the length Σ_i ⟨g_i, ĝ⟩ = K‖g‖
    # FairGrad's factor depends on ‖g‖ (K^{1/(α+1)}/‖g‖^{2α/(α+1)}): tested in test_aggregators_projection.py
    "gradvac": lambda k: float(k),  # cosine 1 is above every target: the sum
    "sdmgrad": lambda k: 1.0,  # weights on the simplex: the average
    "modo": lambda k: 1.0,
    "moco": lambda k: 1.0,
    "excess_mtl": lambda k: 1.0,
    "imtl": lambda k: 1.0,
    "dbmtl": lambda k: float(k),  # losses 1: the log-loss gradients are the gradients, all already the largest
}

settings.register_profile("gradient_aggregators", max_examples=20, deadline=None, derandomize=True)


def layout(num_tasks: int, dim: int = DIM) -> TaskLayout:
    return TaskLayout({f"t{k}": kb.tasks.Regression() for k in range(num_tasks)}, dim)


@functools.lru_cache(maxsize=None)
def compiled(name: str, num_tasks: int, level: str = "representation", dim: int = DIM, **options) -> Callable:
    """A built aggregator's `aggregate` as a tf.function: gradients [B, K, D] (or [K, P]) → (direction, weights)."""
    aggregator = FACTORIES[name](level=level, **options)
    aggregator.build_for(layout(num_tasks, dim))

    @tf.function
    def run(gradients: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        representation = level == "representation"
        result = applied(
            aggregator,
            AggregatorInputs(
                losses=tf.ones([num_tasks]),  # DB-MTL's log losses: ∇ log L = ∇L at L = 1
                representation=tf.zeros([BATCH, dim]),
                task_gradients=gradients if representation else None,
                parameter_gradients=None if representation else gradients,
                labels={},
                head_weights={},
            ),
        )
        direction = result.representation_gradient if representation else result.parameter_gradient
        return direction, result.task_weights

    return run


def flat_task_gradients(gradients: np.ndarray) -> np.ndarray:
    """[B, K, D] per-sample gradients → [K, B·D] task gradients G[:, k]/B (what the methods combine)."""
    return np.transpose(gradients, (1, 0, 2)).reshape(gradients.shape[1], -1) / gradients.shape[0]


def random_gradients(seed: int, num_tasks: int, log_scale: float, conflict: float) -> np.ndarray:
    """[B, K, D] float32: Gaussian task gradients at 10^log_scale (±1 decade per task), pulled
    against task 0 by `conflict` so that some pairs conflict."""
    rng = np.random.default_rng(seed)
    gradients = rng.normal(size=(BATCH, num_tasks, DIM))
    gradients[:, 1:] -= conflict * gradients[:, :1]
    gradients *= 10.0 ** (log_scale + rng.uniform(-1, 1, size=(1, num_tasks, 1)))
    return gradients.astype("float32")


gradient_draws = st.builds(
    random_gradients,
    seed=st.integers(0, 2**16),
    num_tasks=st.sampled_from([2, 3, 5]),
    log_scale=st.floats(-6, 6),
    conflict=st.floats(0, 1.5),
)


def direction_and_weights(name: str, gradients: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    direction, weights = compiled(name, gradients.shape[1], **options)(tf.constant(gradients))
    return direction.numpy().astype("float64"), weights.numpy().astype("float64")


# ---------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", list(FACTORIES))
@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_outputs_are_finite_with_the_right_shapes(name, gradients):
    direction, weights = direction_and_weights(name, gradients)
    assert direction.shape == (BATCH, DIM) and weights.shape == (gradients.shape[1],)
    assert np.all(np.isfinite(direction)) and np.all(np.isfinite(weights))
    # The direction is the reported combination of the task gradients.
    expected = np.einsum("k,bkd->bd", weights, gradients.astype("float64")) / BATCH
    np.testing.assert_allclose(direction, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize(
    "name",
    [
        "mgda",
        "cagrad",
        "imtlg",
        "nash",
        "aligned",
        "pcgrad",
        "upgrad",
        "dualproj",
        "config",
        "fairgrad",
        "imtl",
        "dbmtl",
    ],
)
@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws, permutation_seed=st.integers(0, 100))
def test_permuting_the_tasks_changes_nothing(name, gradients, permutation_seed):
    if name == "pcgrad":  # PCGrad's random order only matters from 3 tasks on
        gradients = gradients[:, :2]
    permutation = np.random.default_rng(permutation_seed).permutation(gradients.shape[1])
    direction, weights = direction_and_weights(name, gradients)
    permuted_direction, permuted_weights = direction_and_weights(name, gradients[:, permutation])
    scale = np.abs(direction).max() + np.abs(gradients).max() * 1e-6
    np.testing.assert_allclose(permuted_direction, direction, atol=2e-4 * scale)
    np.testing.assert_allclose(permuted_weights, weights[permutation], rtol=2e-3, atol=2e-4 * np.abs(weights).max())


def inner_products(name: str, gradients: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """⟨d, g_k⟩ for every task, the flattened direction d and the task gradients g_k."""
    direction, _ = direction_and_weights(name, gradients, **options)
    task_gradients = flat_task_gradients(gradients.astype("float64"))
    flat_direction = direction.reshape(-1)
    return task_gradients @ flat_direction, flat_direction, task_gradients


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_mgda_is_a_common_descent_direction(gradients):
    """KKT of the min-norm problem: ⟨d, g_k⟩ ≥ ‖d‖² for every task (Sener & Koltun 2018)."""
    dots, direction, task_gradients = inner_products("mgda", gradients)
    largest = np.max(np.sum(task_gradients**2, axis=1))
    assert np.all(dots >= direction @ direction - 1e-4 * largest)


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_nash_mtl_every_task_gains_and_the_bargaining_condition_holds(gradients):
    """⟨g_k, d⟩ = 1/α_k > 0 on the Frobenius-normalized Gram matrix (Navon et al. 2022, Eq. 3),
    up to the solver's ridge 1e-6·α_k², which only matters where gradients nearly cancel."""
    direction, weights = direction_and_weights("nash", gradients)
    task_gradients = flat_task_gradients(gradients.astype("float64"))
    dots = task_gradients @ direction.reshape(-1)
    gram_norm = np.linalg.norm(task_gradients @ task_gradients.T)
    assert np.all(weights > 0)
    assert np.all(dots >= -1e-4 * gram_norm)
    np.testing.assert_allclose(weights * (dots / gram_norm + 1e-6 * weights), 1.0, rtol=1e-3)


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_pcgrad_two_tasks_never_conflict_with_the_result(gradients):
    """With two tasks ⟨d, g_k⟩ ≥ 0 (Yu et al. 2020, Theorem 1's setting)."""
    dots, _, task_gradients = inner_products("pcgrad", gradients[:, :2])
    assert np.all(dots >= -1e-4 * np.max(np.sum(task_gradients**2, axis=1)))


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_cagrad_stays_in_the_ball_and_helps_the_worst_task_at_least_as_much_as_the_average(gradients):
    c = 0.4
    dots, direction, task_gradients = inner_products("cagrad", gradients, rescale="none")
    average = task_gradients.mean(axis=0)
    average_norm = np.linalg.norm(average)
    assert np.linalg.norm(direction - average) <= c * average_norm * (1 + 1e-3) + 1e-6 * np.abs(task_gradients).max()
    largest = np.max(np.sum(task_gradients**2, axis=1))
    assert dots.min() >= (task_gradients @ average).min() - 2e-3 * largest


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_imtlg_projects_equally_on_every_task_direction(gradients):
    dots, _, task_gradients = inner_products("imtlg", gradients)
    _, weights = direction_and_weights("imtlg", gradients)
    projections = dots / np.linalg.norm(task_gradients, axis=1)
    np.testing.assert_allclose(
        projections, projections.mean(), rtol=1e-3, atol=1e-4 * np.abs(task_gradients).max() * 1e-2
    )
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-4)


@settings(settings.get_profile("gradient_aggregators"))
@given(gradients=gradient_draws)
def test_aligned_mtl_gradients_are_orthogonal_with_equal_norms(gradients):
    task_gradients = flat_task_gradients(gradients.astype("float64"))
    gram = task_gradients @ task_gradients.T
    balance = balance_transformation(tf.constant(gram)).numpy()
    aligned_gram = balance.T @ (gram / np.trace(gram)) @ balance
    smallest = np.linalg.eigvalsh(gram / np.trace(gram))[0]
    np.testing.assert_allclose(aligned_gram, smallest * np.eye(len(gram)), atol=1e-6 * max(smallest, 1e-3))


@pytest.mark.parametrize("name", list(IDENTICAL_GRADIENTS_FACTOR))
@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("log_scale", [-6.0, 0.0, 6.0])
def test_identical_gradients_give_the_average_or_the_sum(name, num_tasks, log_scale):
    one = np.random.default_rng(7).normal(size=(BATCH, 1, DIM)) * 10.0**log_scale
    gradients = np.repeat(one, num_tasks, axis=1).astype("float32")
    direction, _ = direction_and_weights(name, gradients)
    factor = IDENTICAL_GRADIENTS_FACTOR[name](num_tasks)
    if name == "cagrad":
        factor /= 1.0 + 0.4**2
    np.testing.assert_allclose(direction, factor * one[:, 0] / BATCH, rtol=1e-3, atol=1e-5 * np.abs(one).max())


def test_cagrad_rescaled_by_one_plus_c_gives_the_average_of_identical_gradients():
    one = np.random.default_rng(3).normal(size=(BATCH, 1, DIM))
    direction, _ = direction_and_weights("cagrad", np.repeat(one, 3, axis=1).astype("float32"), rescale="one_plus_c")
    np.testing.assert_allclose(direction, one[:, 0] / BATCH, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------- hand-worked answers
def two_tasks(first: list[float], second: list[float]) -> np.ndarray:
    """One sample (B = 1), D = 2: the task gradients themselves."""
    return np.array([[first, second]], dtype="float32")


ORTHOGONAL = two_tasks([1.0, 0.0], [0.0, 2.0])  # ‖g1‖ = a = 1, ‖g2‖ = b = 2
HAND_WORKED_ORTHOGONAL = {
    # min ‖α g1 + (1-α) g2‖² = α² + 4(1-α)² → α = 4/5, d = (4/5, 2/5)
    "mgda": [0.8, 0.4],
    # no conflict: the sum
    "pcgrad": [1.0, 2.0],
    # equal projections α1·a = α2·b with α1 + α2 = 1 → α = (2/3, 1/3), d = (2/3, 2/3)
    "imtlg": [2 / 3, 2 / 3],
    # α_k² ‖g_k‖²/‖M‖_F = 1, ‖M‖_F = √(1 + 16) → α_k = 17^{1/4}/‖g_k‖
    "nash": [17**0.25, 17**0.25],
    # B = σ_min diag(1/a, 1/b), σ_min = 1 → weights (1, 1/2), d = (1, 1)
    "aligned": [1.0, 1.0],
}


@pytest.mark.parametrize("name", list(HAND_WORKED_ORTHOGONAL))
def test_orthogonal_gradients_hand_worked(name):
    direction, _ = direction_and_weights(name, ORTHOGONAL, dim=2)
    np.testing.assert_allclose(direction[0], HAND_WORKED_ORTHOGONAL[name], rtol=2e-4, atol=1e-6)


def test_cagrad_orthogonal_unit_gradients_hand_worked():
    """g1 ⊥ g2, unit norms: by symmetry w = (½, ½), g_w = g0, ‖g0‖ = 1/√2, so d = (1 + c)·g0 = 0.7·(1, 1)."""
    direction, _ = direction_and_weights("cagrad", two_tasks([1.0, 0.0], [0.0, 1.0]), dim=2, rescale="none")
    np.testing.assert_allclose(direction[0], [0.7, 0.7], rtol=1e-4)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_opposite_gradients_of_equal_norm_cancel(name):
    """g2 = -g1: the min-norm point, both PCGrad projections, the equal-projection point, the
    average (CAGrad's g0 = 0), the aligned sum and the bargaining point are all 0."""
    direction, _ = direction_and_weights(name, two_tasks([1.0, 0.0], [-1.0, 0.0]), dim=2)
    np.testing.assert_allclose(direction[0], [0.0, 0.0], atol=1e-5)


# g1 = (1, 0), g2 = -3·g1.
HAND_WORKED_OPPOSITE_UNEQUAL = {
    # min ‖(4α - 3) g1‖ → α = 3/4, d = 0
    "mgda": [0.0, 0.0],
    # g1' = g1 - (⟨g1, g2⟩/‖g2‖²) g2 = 0, g2' = g2 - (⟨g2, g1⟩/‖g1‖²) g1 = 0
    "pcgrad": [0.0, 0.0],
    # u2 = -u1, so equal projections ⟨d, u1⟩ = ⟨d, -u1⟩ force d = 0
    "imtlg": [0.0, 0.0],
    # g0 = -g1, ‖g0‖ = 1; g_w = (4w - 3) g1 and the dual -(4w-3) + 0.4|4w-3| is smallest at w = 1,
    # so d = g0 + 0.4·g1 = (-0.6, 0), divided by 1 + c² = 1.16
    "cagrad": [-0.6 / 1.16, 0.0],
    # rank 1: the balance transformation is the projection on the range, Ĝ = G, d = g1 + g2
    "aligned": [-2.0, 0.0],
}


@pytest.mark.parametrize("name", list(HAND_WORKED_OPPOSITE_UNEQUAL))
def test_opposite_gradients_of_unequal_norm_hand_worked(name):
    direction, _ = direction_and_weights(name, two_tasks([1.0, 0.0], [-3.0, 0.0]), dim=2)
    np.testing.assert_allclose(direction[0], HAND_WORKED_OPPOSITE_UNEQUAL[name], rtol=1e-4, atol=1e-5)


def test_nash_mtl_opposite_gradients_of_unequal_norm_stay_near_zero():
    """The bargaining problem has no solution here (α → ∞); the solver's ridge ε = 1e-6 bounds α
    at O(1/√ε) and leaves a direction of size O(√ε·‖g‖) (worked out: -0.006·g1)."""
    direction, weights = direction_and_weights("nash", two_tasks([1.0, 0.0], [-3.0, 0.0]), dim=2)
    assert np.all(np.isfinite(weights)) and np.all(weights < 1e4)
    np.testing.assert_allclose(direction[0], [0.0, 0.0], atol=1e-2)


def test_partly_conflicting_gradients_hand_worked():
    """g1 = (1, 0), g2 = (-1, 1), ⟨g1, g2⟩ = -1.
    PCGrad: g1' = g1 + ½g2 = (½, ½), g2' = g2 + g1 = (0, 1), d = (½, 3/2).
    MGDA: ‖α g1 + (1-α) g2‖² = (2α-1)² + (1-α)² is smallest at α = 3/5, d = (1/5, 2/5)."""
    gradients = two_tasks([1.0, 0.0], [-1.0, 1.0])
    np.testing.assert_allclose(direction_and_weights("pcgrad", gradients, dim=2)[0][0], [0.5, 1.5], rtol=1e-5)
    direction, weights = direction_and_weights("mgda", gradients, dim=2)
    np.testing.assert_allclose(direction[0], [0.2, 0.4], rtol=1e-4)
    np.testing.assert_allclose(weights, [0.6, 0.4], rtol=1e-4)


@pytest.mark.parametrize("name", [name for name in FACTORIES if name not in STATEFUL])
def test_parameter_level_combines_parameter_gradients_the_same_way(name):
    """With one sample the representation-level task gradients are the vectors themselves, so
    feeding them as [K, P] parameter gradients must give the same direction."""
    num_tasks = 2 if name == "pcgrad" else 3  # PCGrad's random order makes 3 tasks differ run to run
    gradients = random_gradients(seed=11, num_tasks=num_tasks, log_scale=0.0, conflict=0.8)[:1]
    representation_direction, _ = direction_and_weights(name, gradients)
    parameter_direction, _ = compiled(name, num_tasks, level="parameters")(tf.constant(gradients[0]))
    np.testing.assert_allclose(parameter_direction.numpy(), representation_direction[0], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- state and randomness
def test_nash_mtl_recomputes_weights_only_every_n_steps():
    aggregator = NashMTL(update_weights_every=3, max_norm=None)  # α itself; clipping rescales it per step
    aggregator.build_for(layout(3))

    @tf.function(jit_compile=True)
    def weights_for(gradients: tf.Tensor) -> tf.Tensor:
        inputs = AggregatorInputs(tf.zeros([3]), tf.zeros([BATCH, DIM]), gradients, {}, {})
        return applied(aggregator, inputs).task_weights

    draws = [random_gradients(seed, 3, 0.0, 0.5) for seed in range(5)]
    weights = [weights_for(tf.constant(g)).numpy() for g in draws]
    np.testing.assert_array_equal(weights[1], weights[0])
    np.testing.assert_array_equal(weights[2], weights[0])
    assert not np.allclose(weights[3], weights[0])
    np.testing.assert_allclose(weights[3], compiled("nash", 3)(tf.constant(draws[3]))[1].numpy(), rtol=1e-5)
    assert int(aggregator.step_counter.numpy()) == 5


def test_pcgrad_draws_a_new_task_order_each_step_reproducibly():
    # Three mutually conflicting tasks: the projection order changes the result.
    angles = np.array([0.0, 2.2, 4.1])
    gradients = np.stack([np.cos(angles), np.sin(angles) * np.array([1.0, 1.5, 0.7])], axis=1)[None].astype("float32")

    def run(seed: int) -> np.ndarray:
        aggregator = PCGrad(seed=seed)
        aggregator.build_for(layout(3, dim=2))
        step = tf.function(
            lambda g: applied(aggregator, AggregatorInputs(tf.zeros([3]), tf.zeros([1, 2]), g, {}, {})).task_weights
        )
        return np.stack([step(tf.constant(gradients)).numpy() for _ in range(12)])

    first, again = run(5), run(5)
    np.testing.assert_array_equal(first, again)
    assert len({tuple(np.round(row, 5)) for row in first}) > 1


@pytest.mark.parametrize("name", list(FACTORIES))
def test_xla_compiles_once_for_new_gradient_values(name):
    """Indexing at a computed position (x[i]) makes XLA treat the Gram matrix as a compile-time
    constant and recompile on every new value (~0.3 s a step); a compiled step takes ~1 ms."""
    aggregator = FACTORIES[name]()
    aggregator.build_for(layout(3))
    step = tf.function(
        lambda g: applied(aggregator, AggregatorInputs(tf.zeros([3]), tf.zeros([BATCH, DIM]), g, {}, {})).task_weights,
        jit_compile=True,
    )
    step(tf.constant(random_gradients(0, 3, 0.0, 0.5)))
    for seed in range(1, 4):
        started = time.perf_counter()
        step(tf.constant(random_gradients(seed, 3, 0.0, 0.5))).numpy()
        assert time.perf_counter() - started < 0.1


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="level"):
        MGDA(level="trunk")
    with pytest.raises(ValueError, match="rescale"):
        CAGrad(rescale="sometimes")
    with pytest.raises(ValueError, match="update_weights_every"):
        NashMTL(update_weights_every=0)


# ---------------------------------------------------------------------- training
TRAINING_CASES = {
    "mgda": lambda: MGDA(),
    "pcgrad": lambda: PCGrad(seed=2),
    "cagrad": lambda: CAGrad(),
    "imtlg": lambda: IMTLG(),
    "nash": lambda: NashMTL(update_weights_every=2),
    "aligned": lambda: AlignedMTL(),
    "mgda_parameters": lambda: MGDA(level="parameters"),
    "nash_parameters": lambda: NashMTL(level="parameters"),
    "imtl": lambda: IMTL(),
    "imtl_parameters": lambda: IMTL(level="parameters"),
    "dbmtl": lambda: DBMTL(),
    "dbmtl_parameters": lambda: DBMTL(level="parameters"),
}


def graph_and_xla(cases: list[str], fast_xla: str) -> list:
    """Every case in graph mode; under XLA one in `make test` (the rest in `make test-slow`: each compiles
    a whole train step, and `test_xla_compiles_once_for_new_gradient_values` covers every method's math)."""
    return [pytest.param(case, False, id=f"{case}-graph") for case in cases] + [
        pytest.param(case, True, id=f"{case}-xla", marks=() if case == fast_xla else pytest.mark.slow) for case in cases
    ]


@pytest.mark.parametrize(("case", "jit_compile"), graph_and_xla(list(TRAINING_CASES), fast_xla="mgda_parameters"))
def test_trains_a_mixed_task_model_with_finite_falling_loss(case, jit_compile):
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), aggregator=TRAINING_CASES[case](), jit_compile=jit_compile)
    history = model.fit(mixed_dataset(num_samples=256), epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0]
    weights = model.aggregator.last_task_weights.numpy()
    assert weights.shape == (5,) and np.all(np.isfinite(weights))


@pytest.mark.parametrize(
    "case", ["mgda", "pcgrad", "cagrad", "imtlg", "nash", "aligned", "nash_parameters", "imtl", "dbmtl_parameters"]
)
def test_keras_round_trip_keeps_the_aggregator(case, tmp_path):
    model = make_mixed_model()
    model.compile(optimizer="adam", aggregator=TRAINING_CASES[case]())
    dataset = mixed_dataset(num_samples=128)
    model.fit(dataset, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.aggregator) is type(model.aggregator)
    assert restored.aggregator.get_config() == model.aggregator.get_config()
    for original, loaded in zip(model.aggregator.weights, restored.aggregator.weights):
        np.testing.assert_array_equal(loaded.numpy(), original.numpy())
    x = next(iter(dataset))[0][:8]
    for task, values in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(restored.predict(x, verbose=0)[task], values, rtol=1e-6)
    restored.fit(dataset, epochs=1, verbose=0)
