"""Loss-weighting aggregators: properties at loss scales 1e-6..1e6, hand-worked answers, training
a mixed-task model (eager and XLA), `.keras` round trips, and the observable task weights."""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_bayesagg as kb
from keras_bayesagg.aggregators import (
    COSMOS,
    FAMO,
    IMTLL,
    PBI,
    STCH,
    DynamicWeightAverage,
    GeometricLoss,
    GradNorm,
    RandomLossWeighting,
    ScaleInvariant,
    UncertaintyWeighting,
)
from keras_bayesagg.interface import AggregatorInputs, TaskLayout
from tests.conftest import applied, make_mixed_model, mixed_dataset

BATCH, DIM = 3, 2

FACTORIES: dict[str, Callable[[], kb.interface.Aggregator]] = {
    "scale_invariant": lambda: ScaleInvariant(),
    "random_loss_weighting": lambda: RandomLossWeighting(seed=3),
    "dynamic_weight_average": lambda: DynamicWeightAverage(),
    "uncertainty_kendall": lambda: UncertaintyWeighting("kendall"),
    "uncertainty_simplified": lambda: UncertaintyWeighting("simplified"),
    "uncertainty_log1p": lambda: UncertaintyWeighting("log1p"),
    "famo": lambda: FAMO(),
    "gradnorm": lambda: GradNorm(),
    "geometric_loss": lambda: GeometricLoss(),
    "imtll": lambda: IMTLL(),
    "stch": lambda: STCH(mu=0.5),
    "cosmos": lambda: COSMOS(),
    "pbi": lambda: PBI(),
}
# Methods whose weights depend only on the losses (and task gradients), not on task kinds or draws.
SYMMETRIC = [
    "scale_invariant",
    "dynamic_weight_average",
    "uncertainty_kendall",
    "uncertainty_simplified",
    "uncertainty_log1p",
    "famo",
    "gradnorm",
    "geometric_loss",
    "imtll",
    "stch",
    "cosmos",
    "pbi",
]

loss_scales = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def binary_layout(units: int) -> TaskLayout:
    return TaskLayout({"flags": kb.tasks.Binary(units)}, DIM)


def mixed_layout() -> TaskLayout:
    return TaskLayout(
        {"value": kb.tasks.Regression(), "flags": kb.tasks.Binary(3), "kind": kb.tasks.Multiclass(4)}, DIM
    )


def built(aggregator: kb.interface.Aggregator, layout: TaskLayout) -> kb.interface.Aggregator:
    aggregator.build_for(layout)
    return aggregator


def inputs_for(losses, task_gradients=None) -> AggregatorInputs:
    losses = tf.constant(losses, tf.float32)
    k = int(losses.shape[0])
    if task_gradients is None:
        task_gradients = tf.ones((BATCH, k, DIM)) * tf.sqrt(losses)[None, :, None]
    return AggregatorInputs(
        losses=losses,
        representation=tf.zeros((BATCH, DIM)),
        task_gradients=tf.constant(task_gradients, tf.float32),
        labels={},
        head_weights={},
    )


def run(aggregator: kb.interface.Aggregator, losses, task_gradients=None):
    """One step: the objective, its gradient w.r.t. the losses, and the task weights."""
    inputs = inputs_for(losses, task_gradients)
    with tf.GradientTape() as tape:
        tape.watch(inputs.losses)
        aggregation = applied(aggregator, inputs)
    return aggregation.objective, tape.gradient(aggregation.objective, inputs.losses), aggregation.task_weights


# ---------------------------------------------------------------- properties at any loss scale
@pytest.mark.parametrize("method", list(FACTORIES))
@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.lists(loss_scales, min_size=4, max_size=4), min_size=3, max_size=3))
def test_finite_outputs_of_the_right_shape(method: str, steps: list[list[float]]) -> None:
    aggregator = built(FACTORIES[method](), binary_layout(4))
    for losses in steps:
        objective, gradient, weights = run(aggregator, losses)
        assert objective.shape == () and np.isfinite(objective.numpy())
        assert weights.shape == (4,) and np.all(np.isfinite(weights.numpy()))
        assert np.all(np.isfinite(gradient.numpy()))
        if isinstance(aggregator, DynamicWeightAverage):
            aggregator.end_epoch({})


@pytest.mark.parametrize("method", SYMMETRIC)
@settings(max_examples=10, deadline=None)
@given(
    steps=st.lists(st.lists(loss_scales, min_size=4, max_size=4), min_size=3, max_size=3),
    permutation=st.permutations(range(4)),
)
def test_permuting_tasks_permutes_weights(method: str, steps: list[list[float]], permutation: list[int]) -> None:
    original = built(FACTORIES[method](), binary_layout(4))
    permuted = built(FACTORIES[method](), binary_layout(4))
    for losses in steps:
        losses = np.asarray(losses, np.float32)
        objective, gradient, weights = run(original, losses)
        objective_p, gradient_p, weights_p = run(permuted, losses[permutation])
        np.testing.assert_allclose(
            objective_p.numpy(), objective.numpy(), rtol=1e-4, atol=1e-6 * abs(objective.numpy())
        )
        np.testing.assert_allclose(weights_p.numpy(), weights.numpy()[permutation], rtol=1e-4)
        np.testing.assert_allclose(gradient_p.numpy(), gradient.numpy()[permutation], rtol=1e-4)
        if isinstance(original, DynamicWeightAverage):
            original.end_epoch({})
            permuted.end_epoch({})


@settings(max_examples=30, deadline=None)
@given(losses=st.lists(loss_scales, min_size=3, max_size=3), scale=st.floats(min_value=1e-3, max_value=1e3))
def test_scale_invariant_gradient_ignores_loss_scales(losses: list[float], scale: float) -> None:
    aggregator = built(ScaleInvariant(epsilon=0.0), binary_layout(3))
    objective, gradient, weights = run(aggregator, losses)
    scaled_objective, scaled_gradient, _ = run(aggregator, [scale * v for v in losses])
    # ∂/∂θ Σ log L_k = Σ ∇L_k / L_k: each task's gradient enters with weight 1/L_k.
    np.testing.assert_allclose((gradient * tf.constant(losses)).numpy(), np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(weights.numpy(), gradient.numpy(), rtol=1e-6)
    np.testing.assert_allclose(scaled_objective - objective, 3 * math.log(scale), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose((scaled_gradient * scale).numpy(), gradient.numpy(), rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(first=st.lists(loss_scales, min_size=3, max_size=3), second=st.lists(loss_scales, min_size=3, max_size=3))
def test_dwa_is_the_plain_sum_for_the_first_two_epochs(first: list[float], second: list[float]) -> None:
    aggregator = built(DynamicWeightAverage(), binary_layout(3))
    for losses in (first, second):
        objective, gradient, weights = run(aggregator, losses)
        assert objective.numpy() == pytest.approx(np.sum(np.float32(losses)), rel=1e-6)
        np.testing.assert_array_equal(weights.numpy(), np.ones(3))
        aggregator.end_epoch({})


@settings(max_examples=20, deadline=None)
@given(losses=st.lists(loss_scales, min_size=5, max_size=5))
def test_simplified_uncertainty_weighting_starts_as_the_plain_sum(losses: list[float]) -> None:
    aggregator = built(UncertaintyWeighting("simplified"), mixed_layout())
    objective, gradient, weights = run(aggregator, losses)
    assert objective.numpy() == pytest.approx(np.sum(np.float32(losses)), rel=1e-6)
    np.testing.assert_array_equal(gradient.numpy(), np.ones(5))


@settings(max_examples=20, deadline=None)
@given(losses=st.lists(loss_scales, min_size=4, max_size=4))
def test_gradnorm_first_step_is_the_plain_sum(losses: list[float]) -> None:
    aggregator = built(GradNorm(), binary_layout(4))
    objective, gradient, weights = run(aggregator, losses)
    assert objective.numpy() == pytest.approx(np.sum(np.float32(losses)), rel=1e-6)
    np.testing.assert_array_equal(weights.numpy(), np.ones(4))
    assert np.sum(aggregator.task_weights.numpy()) == pytest.approx(4.0, rel=1e-5)
    assert np.all(aggregator.task_weights.numpy() > 0)


@settings(max_examples=20, deadline=None)
@given(losses=st.lists(loss_scales, min_size=4, max_size=4))
def test_famo_first_step_weights_each_task_by_its_inverse_loss(losses: list[float]) -> None:
    aggregator = built(FAMO(), binary_layout(4))
    objective, gradient, weights = run(aggregator, losses)
    inverse = 1.0 / (np.float64(losses) + 1e-8)
    np.testing.assert_allclose(weights.numpy(), inverse / inverse.sum(), rtol=1e-4)
    np.testing.assert_allclose(gradient.numpy(), weights.numpy(), rtol=1e-4)


# ---------------------------------------------------------------- hand-worked answers
def test_scale_invariant_known_answer() -> None:
    objective, gradient, weights = run(built(ScaleInvariant(), binary_layout(3)), [1.0, math.e, math.e**2])
    assert objective.numpy() == pytest.approx(3.0, rel=1e-6)
    np.testing.assert_allclose(weights.numpy(), [1.0, math.exp(-1), math.exp(-2)], rtol=1e-6)


def test_rlw_weights_are_a_seeded_softmax_of_normal_draws() -> None:
    first = built(RandomLossWeighting(seed=7), binary_layout(4))
    second = built(RandomLossWeighting(seed=7), binary_layout(4))
    draws = []
    for _ in range(200):
        objective, gradient, weights = run(first, [1.0, 2.0, 3.0, 4.0])
        _, _, weights_again = run(second, [1.0, 2.0, 3.0, 4.0])
        np.testing.assert_array_equal(weights.numpy(), weights_again.numpy())
        assert weights.numpy().sum() == pytest.approx(1.0, rel=1e-6) and np.all(weights.numpy() > 0)
        assert objective.numpy() == pytest.approx(float(np.dot(weights.numpy(), [1.0, 2.0, 3.0, 4.0])), rel=1e-5)
        draws.append(weights.numpy())
    draws = np.asarray(draws)
    assert len({tuple(row) for row in draws}) == 200
    # log-ratios of softmax weights are differences of two N(0, 1) draws: variance 2.
    log_ratios = np.log(draws[:, 0] / draws[:, 1])
    assert abs(log_ratios.mean()) < 0.35 and 1.4 < log_ratios.var() < 2.8


def test_dwa_known_answer() -> None:
    aggregator = built(DynamicWeightAverage(temperature=2.0), binary_layout(2))
    for epoch_losses in ([[3.0, 2.0], [1.0, 2.0]], [[1.0, 2.0], [1.0, 2.0]]):  # averages [2, 2] then [1, 2]
        for losses in epoch_losses:
            run(aggregator, losses)
        aggregator.end_epoch({})
    objective, gradient, weights = run(aggregator, [4.0, 1.0])
    ratio = np.array([0.5, 1.0])
    expected = 2 * np.exp(ratio / 2) / np.exp(ratio / 2).sum()  # [0.8757, 1.1243]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5)
    assert objective.numpy() == pytest.approx(4.0 * expected[0] + expected[1], rel=1e-5)


def test_dwa_rolls_over_through_fit_and_starts_weighting_in_epoch_three() -> None:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=DynamicWeightAverage())
    history = kb.callbacks.TaskWeightHistory()
    model.fit(mixed_dataset(), epochs=3, verbose=0, callbacks=[history])
    aggregator = model.aggregator
    assert int(aggregator.completed_epochs.numpy()) == 3
    assert history.history["value"][:2] == [1.0, 1.0]
    assert history.history["value"][2] != 1.0
    assert sum(history.history[unit.name][2] for unit in aggregator.layout.units) == pytest.approx(5.0, rel=1e-5)


def test_uncertainty_weighting_known_answers() -> None:
    losses = [2.0, 1.0, 1.0, 1.0, 3.0]  # value (regression), flags[0..2] (binary), kind (multiclass)
    kendall = built(UncertaintyWeighting("kendall"), mixed_layout())
    objective, gradient, weights = run(kendall, losses)
    assert objective.numpy() == pytest.approx(0.5 * 2.0 + 1.0 + 1.0 + 1.0 + 3.0)
    np.testing.assert_allclose(weights.numpy(), [0.5, 1, 1, 1, 1])

    log1p = built(UncertaintyWeighting("log1p"), mixed_layout())
    objective, _, weights = run(log1p, losses)
    assert objective.numpy() == pytest.approx(0.5 * sum(losses) + 5 * math.log(2.0), rel=1e-6)

    # Optimum of c·e^{-s}L + ½s is e^{s} = 2cL: the gradient w.r.t. s vanishes there.
    optimum = np.log(2 * np.array([0.5, 1, 1, 1, 1]) * np.array(losses)).astype("float32")
    kendall.log_variances.assign(optimum)
    with tf.GradientTape() as tape:
        objective = kendall.aggregate(inputs_for(losses)).objective
    np.testing.assert_allclose(tape.gradient(objective, kendall.log_variances.value).numpy(), np.zeros(5), atol=1e-6)


def test_famo_logit_update_known_answer() -> None:
    aggregator = built(FAMO(learning_rate=0.025, weight_decay=1e-3), binary_layout(2))
    run(aggregator, [1.0, 1.0])
    # δ = [log 2, 0]; z = [½, ½]; ∂(zᵀδ)/∂ξ = z(δ - zᵀδ) = [+, -]; Adam's first step is ∓lr.
    _, _, weights = run(aggregator, [0.5, 1.0])
    np.testing.assert_allclose(aggregator.task_logits.numpy(), [-0.025, 0.025], atol=1e-6)
    z = np.exp([-0.025, 0.025]) / np.exp([-0.025, 0.025]).sum()
    inverse = z / np.array([0.5, 1.0])
    np.testing.assert_allclose(weights.numpy(), inverse / inverse.sum(), rtol=1e-5)


def test_famo_moves_weight_to_the_task_whose_loss_stalls() -> None:
    aggregator = built(FAMO(), binary_layout(3))
    for step in range(5):
        run(aggregator, [1.0, 0.5**step, 1e-3 * 0.5**step])
    z = tf.nn.softmax(aggregator.task_logits.value).numpy()
    assert z[0] > 1 / 3 and z[0] > z[1] and z[0] > z[2]
    assert z[1] == pytest.approx(z[2], rel=1e-3)  # the same relative fall at any scale


def test_gradnorm_known_answer() -> None:
    aggregator = built(GradNorm(alpha=1.5, learning_rate=0.025), binary_layout(2))
    # ‖∂L_k/∂H‖_F = sqrt(Σ_i G[i,k]²)/B; entries a·√B in one dimension give norm a: norms [2, 1].
    gradients = np.zeros((BATCH, 2, DIM), np.float32)
    gradients[:, 0, 0] = 2.0 * BATCH / math.sqrt(BATCH)
    gradients[:, 1, 0] = 1.0 * BATCH / math.sqrt(BATCH)
    _, _, weights = run(aggregator, [1.0, 1.0], gradients)
    np.testing.assert_array_equal(weights.numpy(), [1.0, 1.0])
    # G = [2, 1], Ḡ = 1.5, r = [1, 1]: sign(G - 1.5) = [+, -], Adam's first step ∓lr; sum already 2.
    np.testing.assert_allclose(aggregator.task_weights.numpy(), [0.975, 1.025], rtol=1e-6)


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slowest() -> None:
    aggregator = built(GradNorm(), binary_layout(2))
    gradients = np.ones((BATCH, 2, DIM), np.float32)
    run(aggregator, [1.0, 1.0], gradients)
    run(aggregator, [0.9, 0.5], gradients)  # equal gradient norms; task 0 lags behind
    weights = aggregator.task_weights.numpy()
    assert weights[0] > 1.0 > weights[1]
    assert weights.sum() == pytest.approx(2.0, rel=1e-6)


def test_invalid_arguments_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        UncertaintyWeighting("homoscedastic")
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        DynamicWeightAverage(temperature=0.0)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        FAMO(learning_rate=0.0)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        GradNorm(alpha=-1.0)


# ---------------------------------------------------------------- training and saving
@pytest.mark.parametrize(
    ("method", "jit_compile"),
    [pytest.param(method, False, id=f"{method}-eager_graph") for method in FACTORIES]
    # Under XLA one method in `make test`, the others in `make test-slow` (each compiles a whole train step).
    + [
        pytest.param(method, True, id=f"{method}-xla", marks=() if method == "famo" else pytest.mark.slow)
        for method in FACTORIES
    ],
)
def test_trains_a_mixed_task_model(method: str, jit_compile: bool) -> None:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=FACTORIES[method](), jit_compile=jit_compile)
    losses = model.fit(mixed_dataset(), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    weights = model.aggregator.last_task_weights.numpy()
    assert weights.shape == (5,) and np.all(np.isfinite(weights)) and np.any(weights != 1.0)


def test_uncertainty_weighting_learns_its_log_variances() -> None:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=UncertaintyWeighting())
    model.fit(mixed_dataset(), epochs=2, verbose=0)
    log_variances = model.aggregator.log_variances
    assert log_variances.trainable
    assert np.all(log_variances.numpy() != 0.0)


# Stateless methods whose config has only numbers: their round trip runs in `make test-slow`.
SLOW_ROUND_TRIP = {"geometric_loss", "cosmos", "pbi"}


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow if m in SLOW_ROUND_TRIP else ()) for m in FACTORIES]
)
def test_keras_round_trip_restores_config_and_state(method: str, tmp_path) -> None:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=FACTORIES[method]())
    model.fit(mixed_dataset(), epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.aggregator) is type(model.aggregator)
    assert loaded.aggregator.get_config() == model.aggregator.get_config()
    saved, restored = model.aggregator.variables, loaded.aggregator.variables
    assert [v.name for v in restored] == [v.name for v in saved] and saved
    for before, after in zip(saved, restored):
        np.testing.assert_array_equal(after.numpy(), before.numpy(), err_msg=before.name)
    x = next(iter(mixed_dataset()))[0]
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["value"], model.predict(x, verbose=0)["value"], rtol=1e-6)


# ---------------------------------------------------------------- observable weights
def test_task_weight_history_records_per_unit_epoch_means() -> None:
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=ScaleInvariant())
    recorder = kb.callbacks.TaskWeightHistory()

    class LastWeights(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(self.model.aggregator.last_task_weights.numpy())

    last = LastWeights()
    history = model.fit(mixed_dataset(), epochs=2, verbose=0, callbacks=[last, recorder]).history
    units = ["value", "flags[0]", "flags[1]", "flags[2]", "kind"]
    assert list(recorder.history) == units and recorder.epochs == [0, 1]
    # Relative weights: each step's weights divided by their mean (they sum to K = 5).
    expected = np.mean([w / w.mean() for w in last.seen], axis=0)
    np.testing.assert_allclose([recorder.history[u][1] for u in units], expected, rtol=1e-6)
    np.testing.assert_allclose([history[f"weight/{u}"][1] for u in units], expected, rtol=1e-6)
