"""kb.models: the paper's trunks — shapes, masks and invariances, and `.keras` round-trips inside a MultiTaskModel."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_bayesagg as kb


def _molecules(count: int = 3, atoms: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    charges = np.zeros((count, 29), "int32")
    charges[:, :atoms] = rng.choice([1, 6, 7, 8, 9], size=(count, atoms))
    mask = (np.arange(29) < atoms).astype("float32")[None].repeat(count, 0)
    positions = (rng.normal(size=(count, 29, 3)) * mask[..., None]).astype("float32")
    return {"charges": charges, "positions": positions, "num_atoms": np.full(count, atoms, "int32"), "mask": mask}


def test_reflection_padding_mirrors_without_repeating_the_edge():
    x = np.arange(2 * 4 * 5 * 3, dtype="float32").reshape(2, 4, 5, 3)
    padded = kb.models.ReflectionPadding2D(1)(x)
    np.testing.assert_array_equal(padded, np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect"))


def test_cifar_cnn_layer_order_and_representation():
    model = kb.models.cifar_mtl_cnn()
    assert model.output_shape == (None, 160)
    kinds = [type(layer).__name__ for layer in model.layers[1:6]]
    assert kinds == ["ReflectionPadding2D", "Conv2D", "Activation", "MaxPooling2D", "BatchNormalization"]
    assert model.get_layer("pool2").output.shape[1:3] == (1, 1)  # 32 → 10 → 3 → 1: the pool is a flatten
    assert model(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")).shape == (2, 160)


@pytest.mark.parametrize(("depth", "blocks"), [(18, 8), (34, 16)])
def test_resnet_encoder_depth_and_representation(depth: int, blocks: int):
    model = kb.models.resnet_encoder(depth, dim=32, input_shape=(64, 64, 3), width=8)
    convs = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and not layer.name.endswith("_down")
    ]
    assert len(convs) == depth - 1  # + the final dense layer = depth weighted layers
    assert len({layer.name.rsplit("_", 1)[0] for layer in convs if layer.name.startswith("stage")}) == blocks
    assert model.output_shape == (None, 32) and model.layers[-1].activation.__name__ == "elu"
    assert model(np.zeros((2, 64, 64, 3), "float32")).shape == (2, 32)
    with pytest.raises(ValueError, match="depth must be one of"):
        kb.models.resnet_encoder(50)


def test_mpnn_ignores_padding_atoms_and_the_order_of_real_atoms():
    model = kb.models.qm9_mpnn(units=16, dim=24)
    x = _molecules()
    h = np.asarray(model(x))
    assert h.shape == (3, 24) and np.all(np.isfinite(h))
    noisy = {k: v.copy() for k, v in x.items()}
    noisy["charges"][:, 5:] = 6
    noisy["positions"][:, 5:] = np.random.default_rng(1).normal(size=(3, 24, 3))
    np.testing.assert_allclose(model(noisy), h, atol=1e-6)
    order = np.r_[[3, 0, 4, 2, 1], np.arange(5, 29)]
    permuted = {k: v[:, order] if v.ndim > 1 else v for k, v in x.items()}
    np.testing.assert_allclose(model(permuted), h, atol=1e-5)
    moved = {k: v.copy() for k, v in x.items()}
    moved["positions"][:, 0] += 0.5  # a real atom moves: h must change
    assert np.abs(np.asarray(model(moved)) - h).max() > 1e-4


@pytest.mark.parametrize(
    "make_trunk, inputs",
    [
        (lambda: kb.models.cifar_mtl_cnn(filters=8), lambda: np.random.default_rng(0).normal(size=(4, 32, 32, 3))),
        (
            lambda: kb.models.resnet_encoder(18, 16, (32, 32, 3), width=4),
            lambda: np.random.default_rng(0).random((4, 32, 32, 3)),
        ),
        (lambda: kb.models.qm9_mpnn(units=8, dim=8), lambda: _molecules(4)),
    ],
    ids=["cifar_cnn", "resnet18", "mpnn"],
)
def test_multitask_model_on_each_trunk_survives_a_keras_round_trip(tmp_path, make_trunk, inputs):
    keras.utils.set_random_seed(0)
    x = inputs()
    x = {k: v for k, v in x.items()} if isinstance(x, dict) else x.astype("float32")
    model = kb.MultiTaskModel(make_trunk(), {"value": kb.tasks.Regression(), "kind": kb.tasks.Multiclass(3)})
    model.compile(optimizer="adam", jit_compile=False)  # XLA compilation of predict would dominate the test time
    model(x)
    rng = np.random.default_rng(1)  # every weight (batch-norm statistics too) moved away from its initial value
    for variable in model.weights:
        value = np.asarray(variable)
        noise = (
            rng.uniform(0.5, 1.5, value.shape)
            if "variance" in variable.path
            else value + 0.1 * rng.normal(size=value.shape)
        )
        variable.assign(noise.astype(value.dtype))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    expected, actual = model.predict(x, verbose=0), restored.predict(x, verbose=0)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6)
