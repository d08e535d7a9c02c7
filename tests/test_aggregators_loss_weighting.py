"""The loss weighting / scalarization methods of issue 18: GeometricLoss, IMTLL, IMTL, DBMTL, STCH, COSMOS, PBI.

Equality with the anchors' own implementations on the fixed inputs of tests/fixtures/loss_weighting_anchors.json
(TorchJD 0.18.0's scalarizers, LibMTL 1.1.5's GLS and IMTL, LibMTL's DB_MTL at commit 7b0f56a; produced by
tests/fixtures/make_loss_weighting_anchors.py), each method's defining property, missing labels and sample
weights, state writes only in `commit`, XLA, and TaskWeightHistory. Properties at any loss scale, training in a
mixed model and `.keras` round trips run in the shared tests (test_aggregators_weighting.py and
test_aggregators_gradient.py).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_bayesagg as kb
from keras_bayesagg.aggregators import COSMOS, DBMTL, IMTL, IMTLL, PBI, STCH, GeometricLoss
from keras_bayesagg.aggregators.base import AggregatorInputs, TaskLayout
from tests.conftest import applied, make_mixed_model, mixed_dataset

FIXTURE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "loss_weighting_anchors.json").read_text())
DIM = 4


def regression_layout(units: int, dim: int = DIM) -> TaskLayout:
    return TaskLayout({f"t{k}": kb.tasks.Regression() for k in range(units)}, dim)


def built(aggregator: kb.interface.Aggregator, units: int = 3) -> Any:
    aggregator.build_for(regression_layout(units))
    return aggregator


def loss_inputs(losses, present=None, task_gradients=None, parameter_gradients=None) -> AggregatorInputs:
    losses = tf.constant(losses, tf.float32)
    rows = 1 if task_gradients is None else int(np.shape(task_gradients)[0])
    return AggregatorInputs(
        losses=losses,
        representation=tf.zeros([rows, DIM]),
        task_gradients=None if task_gradients is None else tf.constant(task_gradients, tf.float32),
        labels={},
        head_weights={},
        parameter_gradients=None if parameter_gradients is None else tf.constant(parameter_gradients, tf.float32),
        present=None if present is None else tf.constant(present, tf.float32),
    )


# ---------------------------------------------------------------- equality with the anchors
SCALARIZERS: dict[str, Callable[..., kb.interface.Aggregator]] = {
    "GeometricLoss": lambda: GeometricLoss(epsilon=0.0),
    "IMTLL": lambda log_scales: IMTLL(),
    "STCH": STCH,
    "COSMOS": COSMOS,
    "PBI": PBI,
}


@pytest.mark.parametrize("case", list(FIXTURE["torchjd_scalarization"]))
def test_scalarizers_equal_torchjd(case: str) -> None:
    """Objective = TorchJD's scalarization, task weights = its gradient w.r.t. the losses (torch autograd)."""
    anchor = FIXTURE["torchjd_scalarization"][case]
    aggregator = built(SCALARIZERS[case.split("(")[0]](**anchor["options"]))
    if isinstance(aggregator, IMTLL):
        aggregator.log_scales.assign(anchor["options"]["log_scales"])
    for step in anchor["steps"]:
        aggregation = applied(aggregator, loss_inputs(step["losses"]))
        assert aggregation.objective.numpy() == pytest.approx(step["value"], rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(aggregation.task_weights.numpy(), step["gradient"], rtol=2e-5, atol=1e-6)


def test_geometric_loss_equals_libmtl_gls() -> None:
    """LibMTL's GLS trains on (Π L_k)^{1/K}: the same gradient. It *reports* L_k/(K Π L) as weights, which is
    not the derivative; ours reports the derivative, the factor each unit's gradient gets."""
    aggregator = built(GeometricLoss(epsilon=0.0))
    for step in FIXTURE["libmtl_gls"]:
        weights = applied(aggregator, loss_inputs(step["losses"])).task_weights.numpy()
        np.testing.assert_allclose(weights, step["gradient"], rtol=2e-5)


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_imtl_equals_libmtl(level: str) -> None:
    anchor = FIXTURE["libmtl_imtl"]
    aggregator = built(IMTL(level=level))
    aggregator.log_scales.assign(anchor["log_scales"])
    jacobian = np.asarray(anchor["parameter_gradients"], np.float32)
    if level == "parameters":
        inputs = loss_inputs(anchor["losses"], parameter_gradients=jacobian)
    else:  # one sample: the per-sample gradients are the task gradients themselves
        inputs = loss_inputs(anchor["losses"], task_gradients=jacobian[None])
    with tf.GradientTape() as tape:
        aggregation = applied(aggregator, inputs)
    direction = aggregation.parameter_gradient if level == "parameters" else aggregation.representation_gradient[0]
    np.testing.assert_allclose(direction.numpy(), anchor["shared_gradient"], rtol=1e-4, atol=1e-6)
    scale_gradient = tape.gradient(aggregation.objective, aggregator.log_scales.value)
    np.testing.assert_allclose(scale_gradient.numpy(), anchor["log_scale_gradient"], rtol=1e-5, atol=1e-6)
    expected_weights = np.asarray(anchor["alpha"]) * np.exp(anchor["log_scales"])  # on the unscaled gradients
    np.testing.assert_allclose(aggregation.task_weights.numpy(), expected_weights, rtol=1e-4)


@pytest.mark.parametrize("anchor", FIXTURE["libmtl_db_mtl"], ids=lambda a: f"beta_decay={a['beta_decay']}")
def test_dbmtl_equals_libmtl_up_to_its_moving_average_scale(anchor: dict) -> None:
    """Same gradients every step: LibMTL's update is c_t·ours, c_t = n̂_k/‖g_k‖ (its vector average is c_t·g_k)."""
    aggregator = built(DBMTL(level="parameters", beta=anchor["beta"], beta_decay=anchor["beta_decay"]))
    gradients = np.asarray(anchor["parameter_gradients"], np.float32)
    log_gradient_norms = np.linalg.norm(gradients, axis=1) / (np.asarray(anchor["losses"]) + 1e-8)
    for expected in anchor["shared_gradients"]:
        aggregation = applied(aggregator, loss_inputs(anchor["losses"], parameter_gradients=gradients))
        averaging = aggregator.norm_averages.numpy() / log_gradient_norms
        np.testing.assert_allclose(averaging, averaging[0], rtol=1e-5)
        np.testing.assert_allclose(averaging[0] * aggregation.parameter_gradient.numpy(), expected, rtol=1e-4)


# ---------------------------------------------------------------- each method's defining property
loss_scales = st.floats(min_value=1e-4, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=10, deadline=None)
@given(losses=st.lists(loss_scales, min_size=3, max_size=3))
def test_geometric_loss_weighs_every_unit_by_its_inverse_loss(losses: list[float]) -> None:
    """∂GLS/∂L_k = GLS/(K L_k): w_k L_k is the same for every unit, whatever the loss scales."""
    aggregation = applied(built(GeometricLoss()), loss_inputs(losses))
    geometric_mean = math.exp(np.mean(np.log(np.float64(losses))))
    assert aggregation.objective.numpy() == pytest.approx(geometric_mean, rel=1e-5)
    np.testing.assert_allclose(aggregation.task_weights.numpy() * np.float32(losses), geometric_mean / 3, rtol=1e-4)


def test_imtll_scales_every_loss_to_one_at_its_optimum() -> None:
    losses = [0.01, 1.0, 250.0]
    aggregator = built(IMTLL())
    aggregator.log_scales.assign(-np.log(losses).astype("float32"))  # e^{s_k} L_k = 1
    with tf.GradientTape() as tape:
        aggregation = applied(aggregator, loss_inputs(losses))
    np.testing.assert_allclose(tape.gradient(aggregation.objective, aggregator.log_scales.value), 0.0, atol=1e-5)
    np.testing.assert_allclose(aggregation.task_weights.numpy(), 1.0 / np.float32(losses), rtol=1e-5)
    assert aggregator.log_scales.trainable


def test_stch_is_within_mu_log_k_above_the_weighted_maximum() -> None:
    losses, preference, reference = np.float32([0.5, 3.0, 1.2]), [0.2, 0.5, 0.3], [0.1, 0.0, 0.2]
    worst = np.max(np.float32(preference) * (losses - np.float32(reference)))
    for mu in (1.0, 0.1, 1e-3):
        aggregation = applied(built(STCH(mu=mu, preference=preference, reference=reference)), loss_inputs(losses))
        assert worst - 1e-6 <= aggregation.objective.numpy() <= worst + mu * math.log(3) + 1e-6
    np.testing.assert_allclose(aggregation.task_weights.numpy(), [0.0, 0.5, 0.0], atol=1e-6)  # the worst unit alone


def test_cosmos_without_its_penalty_is_the_preference_weighted_sum() -> None:
    aggregation = applied(built(COSMOS(preference=[0.2, 0.5, 0.3], cosine_penalty=0.0)), loss_inputs([1.0, 2.0, 4.0]))
    assert aggregation.objective.numpy() == pytest.approx(0.2 + 1.0 + 1.2, rel=1e-6)
    np.testing.assert_allclose(aggregation.task_weights.numpy(), [0.2, 0.5, 0.3], rtol=1e-6)


def test_pbi_on_the_preference_ray_is_the_distance_along_it() -> None:
    """L = t·w: d_2 = 0, so PBI = ‖L‖ and the weights are ŵ (the penalty's gradient is 0 on the ray)."""
    preference = np.float32([1.0, 2.0, 2.0])
    aggregation = applied(built(PBI(preference=preference, perpendicular_penalty=5.0)), loss_inputs(0.5 * preference))
    assert aggregation.objective.numpy() == pytest.approx(1.5, abs=1e-5)
    np.testing.assert_allclose(aggregation.task_weights.numpy(), preference / 3.0, atol=1e-5)


# ---------------------------------------------------------------- missing labels and sample weights
WITH_PREFERENCE: dict[str, Callable[[list[float] | None], kb.interface.Aggregator]] = {
    "geometric_loss": lambda preference: GeometricLoss(),
    "imtll": lambda preference: IMTLL(),
    "stch": lambda preference: STCH(mu=0.5, preference=preference),
    "cosmos": lambda preference: COSMOS(preference=preference, cosine_penalty=2.0),
    "pbi": lambda preference: PBI(preference=preference),
}


@pytest.mark.parametrize("method", list(WITH_PREFERENCE))
def test_a_unit_without_labels_is_as_if_absent(method: str) -> None:
    """Unit 1 has no labels (loss 0): the objective and the other weights are those of the two labelled units;
    sample weights of 2 count like any positive weight for which units are labelled."""
    losses, preference = [0.8, 0.0, 2.5], [0.2, 0.5, 0.3]
    present = [[2.0, 0.0, 1.0], [0.0, 0.0, 2.0]]
    three = applied(built(WITH_PREFERENCE[method](preference)), loss_inputs(losses, present=present))
    two = applied(built(WITH_PREFERENCE[method]([0.2, 0.3]), 2), loss_inputs([0.8, 2.5]))
    assert np.isfinite(three.objective.numpy())
    assert three.objective.numpy() == pytest.approx(two.objective.numpy(), rel=1e-6)
    np.testing.assert_allclose(three.task_weights.numpy(), np.insert(two.task_weights.numpy(), 1, 0.0), rtol=1e-6)


@pytest.mark.parametrize("make", [IMTL, DBMTL], ids=["imtl", "dbmtl"])
def test_gradient_methods_give_an_unlabelled_unit_no_weight(make: Callable[[], Any]) -> None:
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(2, 3, DIM)).astype("float32")
    gradients[:, 1] = 0.0  # the engine's gradients are zero where a label is missing
    aggregator = built(make())
    inputs = loss_inputs([0.8, 0.0, 2.5], present=[[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], task_gradients=gradients)
    aggregation = applied(aggregator, inputs)
    assert np.isfinite(aggregation.objective.numpy())
    assert np.all(np.isfinite(aggregation.representation_gradient.numpy()))
    assert aggregation.task_weights.numpy()[1] == 0.0 and np.all(aggregation.task_weights.numpy()[[0, 2]] > 0)
    if isinstance(aggregator, DBMTL):
        assert aggregator.norm_averages.numpy()[1] == 0.0  # no gradient: its average is kept
    else:
        with tf.GradientTape() as tape:
            objective = aggregator.aggregate(inputs).objective
        assert tape.gradient(objective, aggregator.log_scales.value).numpy()[1] == 0.0  # s_1 is not pushed up
        # Impartial among the labelled units: equal projections of d on u_0 and u_2.
        direction = aggregation.representation_gradient.numpy().reshape(-1)
        units = [gradients[:, k].reshape(-1) / np.linalg.norm(gradients[:, k]) for k in (0, 2)]
        assert direction @ units[0] == pytest.approx(direction @ units[1], rel=1e-4)


def test_dbmtl_writes_its_state_only_in_commit() -> None:
    aggregator = built(DBMTL(level="parameters"))
    inputs = loss_inputs([1.0, 2.0, 3.0], parameter_gradients=np.eye(3, DIM, dtype="float32"))
    first = aggregator.aggregate(inputs)
    second = aggregator.aggregate(inputs)
    np.testing.assert_array_equal(aggregator.norm_averages.numpy(), 0.0)
    assert aggregator.steps.numpy() == 0.0
    np.testing.assert_array_equal(first.parameter_gradient.numpy(), second.parameter_gradient.numpy())
    aggregator.commit(first)
    assert aggregator.steps.numpy() == 1.0 and np.all(aggregator.norm_averages.numpy() > 0)


# ---------------------------------------------------------------- XLA, arguments, TaskWeightHistory
@pytest.mark.parametrize("method", list(WITH_PREFERENCE))
def test_scalarizers_compile_under_xla_once_for_new_losses(method: str) -> None:
    aggregator = built(WITH_PREFERENCE[method]([0.2, 0.5, 0.3]))
    present = tf.constant([[1.0, 0.0, 2.0]])
    step = tf.function(
        lambda losses: (
            applied(
                aggregator, AggregatorInputs(losses, tf.zeros([1, DIM]), None, {}, {}, present=present)
            ).task_weights
        ),
        jit_compile=True,
    )
    eager = applied(aggregator, loss_inputs([1.0, 0.0, 3.0], present=[[1.0, 0.0, 2.0]])).task_weights.numpy()
    np.testing.assert_allclose(step(tf.constant([1.0, 0.0, 3.0])).numpy(), eager, rtol=1e-5)
    step(tf.constant([2.0, 0.0, 0.5]))
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: STCH(mu=0.0), "STCH: mu must be a finite number > 0"),
        (lambda: STCH(preference=[0.5, -0.1]), "STCH: preference must be None or a non-empty sequence"),
        (lambda: STCH(reference="zero"), "STCH: reference must be None or a non-empty sequence"),
        (lambda: COSMOS(cosine_penalty=-1.0), "COSMOS: cosine_penalty must be a finite number >= 0"),
        (lambda: COSMOS(preference=[0.0, 0.0]), "COSMOS: preference must be .* positive sum"),
        (lambda: PBI(perpendicular_penalty=float("nan")), "PBI: perpendicular_penalty must be a finite number >= 0"),
        (lambda: PBI(preference=[1.0, float("inf")]), "PBI: preference must be"),
        (lambda: GeometricLoss(epsilon=-1.0), "GeometricLoss: epsilon must be a finite number >= 0"),
        (lambda: DBMTL(beta=1.0), "DBMTL: beta must be a finite number >= 0 and < 1"),
        (lambda: DBMTL(beta_decay=-0.5), "DBMTL: beta_decay must be a finite number >= 0"),
        (lambda: DBMTL(epsilon=0.0), "DBMTL: epsilon must be a finite number > 0"),
        (lambda: IMTL(level="heads"), "IMTL: level must be one of"),
    ],
)
def test_invalid_arguments_are_rejected_clearly(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_preference_of_the_wrong_length_names_the_units() -> None:
    model = make_mixed_model()
    with pytest.raises(ValueError, match=r"STCH: preference must have one entry per task unit \(5: \['value'"):
        model.compile(optimizer="adam", aggregator=STCH(preference=[1.0, 1.0, 1.0]))
        model.fit(mixed_dataset(num_samples=64), epochs=1, verbose=0)


def test_stch_trains_under_xla_and_task_weight_history_records_its_weights() -> None:
    """One XLA fit for the scalarization family (the others run under XLA in `make test-slow`)."""
    model = make_mixed_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), aggregator=STCH(mu=0.5), jit_compile=True)
    recorder = kb.callbacks.TaskWeightHistory()
    losses = model.fit(mixed_dataset(num_samples=256), epochs=3, verbose=0, callbacks=[recorder]).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    units = [unit.name for unit in model.aggregator.layout.units]
    assert list(recorder.history) == units and recorder.epochs == [0, 1, 2]
    final = np.array([recorder.history[unit][-1] for unit in units])
    assert np.all(np.isfinite(final)) and final.sum() == pytest.approx(5.0, rel=1e-5)
    assert np.ptp(final) > 0.0  # STCH weighs the worst units most: not the plain sum
