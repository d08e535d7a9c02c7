"""The Kronecker-factored served state (issue 19): a multiclass head whose dense covariance is over the model's
`uncertainty_state_mb` keeps Q_C, Q_D and the eigenvalue grid, serves from them without the dense covariance,
and every Keras tool carries them. C=20, D=16 under a 0.1 MB limit: dense (20·17)² floats = 0.46 MB, factored
20² + 17² + 20·17 floats = 4 kB."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from keras_bayesagg.served_state import KroneckerServedState, MulticlassServedState
from tests.conftest import value_and_class_data

INPUTS, DIM, CLASSES, ROWS, LIMIT_MB = 10, 16, 20, 192, 0.1
WIDTH = DIM + 1


def _data(seed: int = 0):
    return value_and_class_data(CLASSES, ROWS, INPUTS, seed)


def _model(seed: int = 0, limit: float | None = LIMIT_MB) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(DIM, activation="elu")])
    tasks = {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(CLASSES)}
    return kb.MultiTaskModel(trunk, tasks, uncertainty_state_mb=limit)


def _fit(posterior: str) -> kb.MultiTaskModel:
    x, labels = _data()
    model = _model()
    aggregator = kb.BayesAgg(
        num_samples=16, warmup_epochs=0, seed=0, prior_variance="auto", multiclass_posterior=posterior
    )
    model.compile(optimizer="adam", aggregator=aggregator)
    model.fit(x, labels, batch_size=64, epochs=1, verbose=0)  # BayesAgg's steps from the start, then a refresh
    return model


@pytest.fixture(scope="module")
def kronecker_model():
    return _fit("kronecker")


@pytest.fixture(scope="module")
def full_model():
    return _fit("full")


def _probe() -> np.ndarray:
    return _data(1)[0][:24]


def _brute_force(model: kb.MultiTaskModel, covariance: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """The pairwise mean-field rule in numpy (float64) from a dense head covariance [C·n, C·n]."""
    h = model.trunk(x).numpy().astype("float64")
    extended = np.concatenate([h, np.ones((len(h), 1))], axis=1)
    mean = extended @ model.head_weights()["kind"].numpy().astype("float64").T
    jacobians = np.stack([np.kron(np.eye(CLASSES), row) for row in extended])  # f = (I ⊗ h̃ᵀ) vec W
    logit_covariance = jacobians @ covariance @ jacobians.transpose(0, 2, 1)
    variances = np.einsum("bcc->bc", logit_covariance)
    spread = variances[:, :, None] + variances[:, None, :] - 2.0 * logit_covariance
    scaled = (mean[:, :, None] - mean[:, None, :]) / np.sqrt(1.0 + np.pi / 8.0 * np.maximum(spread, 0.0))
    log_p = -np.log(np.exp(-scaled).sum(axis=-1))
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {
        "probabilities": p,
        "entropy": -(p * np.log(p)).sum(axis=1, keepdims=True),
        "mean": mean,
        "v": logit_covariance,
    }


def _kronecker_covariance(model: kb.MultiTaskModel) -> np.ndarray:
    """Q diag(1/λ) Qᵀ of BayesAgg's Kronecker posterior of the head, dense (float64)."""
    group = model.aggregator.classification_group("kind")
    rotation = np.kron(group.class_basis.numpy(), group.feature_basis.numpy())
    return rotation @ np.diag(1.0 / group.prior_precision.numpy().ravel()) @ rotation.T


def test_the_form_depends_on_the_head_and_the_limit_only():
    kinds = {}
    for limit in (None, 64.0, LIMIT_MB, 0.001):
        model = _model(limit=limit)
        model.build((None, INPUTS))
        kinds[limit] = type(model.heads["kind"].served)
    assert kinds == {
        None: MulticlassServedState,
        64.0: MulticlassServedState,
        LIMIT_MB: KroneckerServedState,
        0.001: type(None),
    }


def test_the_factored_state_is_the_posteriors_and_the_weight_list_does_not_depend_on_the_aggregator(kronecker_model):
    model = kronecker_model
    served = model.heads["kind"].served
    assert isinstance(served, KroneckerServedState) and float(served.ready.numpy()) == 1.0
    shapes = [tuple(w.shape) for w in model.heads["kind"].weights]
    assert shapes == [(DIM, CLASSES), (CLASSES,), (CLASSES, CLASSES), (WIDTH, WIDTH), (CLASSES, WIDTH), ()]
    group = model.aggregator.classification_group("kind")
    np.testing.assert_allclose(served.parts["class_basis"].numpy(), group.class_basis.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        served.parts["covariance_eigenvalues"].numpy(), 1.0 / group.prior_precision.numpy(), rtol=1e-6
    )
    copy = kb.MultiTaskModel.from_config(model.get_config())
    copy.build((None, INPUTS))  # never compiled
    linear = _model(seed=4)
    linear.compile(optimizer="adam")
    linear.build((None, INPUTS))
    assert [w.shape for w in copy.weights] == [w.shape for w in linear.weights] == [w.shape for w in model.weights]
    copy.set_weights(model.get_weights())
    _assert_same(copy.predict_with_uncertainty(_probe()), model.predict_with_uncertainty(_probe()))


def _assert_same(got: dict, expected: dict, rtol: float = 1e-5) -> None:
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=1e-6, err_msg=key)


def test_served_probabilities_are_the_dense_covariances_and_near_monte_carlo(kronecker_model):
    model = kronecker_model
    chosen = model.aggregator.chosen_prior_variances()["kind"]
    assert chosen != pytest.approx(0.005) and 0 < chosen < 1e8  # prior_variance="auto" moved γ
    x = _probe()
    out = model.predict_with_uncertainty(x)
    expected = _brute_force(model, _kronecker_covariance(model), x)
    np.testing.assert_allclose(out["kind/probabilities"], expected["probabilities"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["kind/entropy"], expected["entropy"], rtol=1e-4, atol=1e-6)
    head = model.predict(x, verbose=0)["kind"]
    assert np.abs(out["kind/probabilities"] - head).max() > 1e-3  # the posterior changes something
    # Monte Carlo over the factored posterior itself: W_s = W + Q_C (ε_s/√λ) Q_Dᵀ, ε_s ~ N(0, I) [C, n].
    group = model.aggregator.classification_group("kind")
    class_basis, feature_basis = group.class_basis.numpy(), group.feature_basis.numpy()
    noise = np.random.default_rng(0).normal(size=(20000, CLASSES, WIDTH)) / np.sqrt(group.prior_precision.numpy())
    h = model.trunk(x).numpy().astype("float64")
    projected = np.concatenate([h, np.ones((len(h), 1))], axis=1) @ feature_basis  # Q_Dᵀh̃ [B, n]
    logits = expected["mean"][None] + np.einsum("ck,skn,bn->sbc", class_basis, noise, projected, optimize=True)
    centred = logits - logits.mean(axis=0)
    sampled = np.einsum("sbc,sbd->bcd", centred, centred, optimize=True) / (len(logits) - 1)
    scale = np.einsum("bcc->b", expected["v"]).max() / CLASSES
    np.testing.assert_allclose(sampled, expected["v"], atol=0.05 * scale)  # S = 20000: ~1-2% sampling error
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    monte_carlo = (weights / weights.sum(axis=-1, keepdims=True)).mean(axis=0)
    served_error, head_error = np.abs(out["kind/probabilities"] - monte_carlo), np.abs(head - monte_carlo)
    print(
        f"|served - MC| max {served_error.max():.4f} mean {served_error.mean():.5f}; "
        f"|head softmax - MC| max {head_error.max():.4f} mean {head_error.mean():.5f}"
    )
    assert served_error.max() < 0.05  # the mean-field rule's own error (docs/uncertainty.md)


def test_a_full_ggn_posterior_is_served_as_its_projection_on_the_factored_form(full_model):
    model = full_model
    served = model.heads["kind"].served
    assert isinstance(served, KroneckerServedState) and float(served.ready.numpy()) == 1.0
    precision = model.aggregator.classification_group("kind").prior_precision.numpy()[0].astype("float64")
    covariance = np.linalg.inv(precision)
    rotation = np.kron(served.parts["class_basis"].numpy(), served.parts["feature_basis"].numpy()).astype("float64")
    variances = np.diag(rotation.T @ covariance @ rotation).reshape(CLASSES, WIDTH)  # moment matching
    np.testing.assert_allclose(served.parts["covariance_eigenvalues"].numpy(), variances, rtol=2e-3)
    x = _probe()
    out = model.predict_with_uncertainty(x)
    projected = _brute_force(model, rotation @ np.diag(variances.ravel()) @ rotation.T, x)
    np.testing.assert_allclose(out["kind/probabilities"], projected["probabilities"], rtol=1e-3, atol=1e-6)
    dense = _brute_force(model, covariance, x)["probabilities"]  # what a dense state would serve
    head = model.predict(x, verbose=0)["kind"]
    projection_error, head_error = np.abs(out["kind/probabilities"] - dense), np.abs(head - dense)
    print(
        f"|projected - dense| max {projection_error.max():.4f} mean {projection_error.mean():.5f}; "
        f"|head - dense| max {head_error.max():.4f} mean {head_error.mean():.5f}"
    )
    assert projection_error.mean() < 0.2 * head_error.mean()  # observed: 0.05 times (mean 0.00024 vs 0.005)


def test_keras_files_checkpoints_and_the_exported_endpoint_carry_the_factored_state(kronecker_model, tmp_path):
    model, x = kronecker_model, _probe()
    expected = model.predict_with_uncertainty(x)
    model.save(str(tmp_path / "m.keras"))
    restored = keras.models.load_model(str(tmp_path / "m.keras"))
    assert isinstance(restored.heads["kind"].served, KroneckerServedState)
    _assert_same(restored.predict_with_uncertainty(x), expected)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    fresh = _model(seed=9)
    fresh.build((None, INPUTS))
    tf.train.Checkpoint(model=fresh).read(prefix).assert_existing_objects_matched()
    _assert_same(fresh.predict_with_uncertainty(x), expected)
    for jit in (False, True):
        model.export(str(tmp_path / f"served_{jit}"), verbose=False, jit_compile=jit)
        loaded = tf.saved_model.load(str(tmp_path / f"served_{jit}"))  # kept: its functions use its variables
        served = loaded.serve_with_uncertainty(tf.constant(x))
        _assert_same({key: value.numpy() for key, value in served.items()}, expected, rtol=1e-4)


def test_a_head_saved_without_a_served_state_loads_into_the_factored_form(tmp_path):
    # Before the factored form, a head over the limit had kernel and bias only; such weights still load.
    none = _model(limit=0.001)
    none.build((None, INPUTS))
    assert none.heads["kind"].served is None
    none.save_weights(str(tmp_path / "none.weights.h5"))
    factored = _model(seed=3)
    factored.build((None, INPUTS))
    factored.load_weights(str(tmp_path / "none.weights.h5"))
    x = _probe()
    _assert_same(factored.predict(x, verbose=0), none.predict(x, verbose=0))
    assert float(factored.heads["kind"].served.ready.numpy()) == 0.0  # unwritten until BayesAgg's next refresh
    with pytest.raises(ValueError, match="No predictive uncertainty"):
        factored.predict_with_uncertainty(x)
