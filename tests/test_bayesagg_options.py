"""BayesAgg's options beyond the paper: exact moments (default) and the evidence-chosen prior variance."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bayesagg as kb
from tests.conftest import make_mixed_model, mixed_dataset


def _binary_model(seed: int = 0) -> kb.MultiTaskModel:
    keras.utils.set_random_seed(seed)
    trunk = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, activation="elu")])
    return kb.MultiTaskModel(trunk, {"flags": kb.tasks.Binary(3), "pair": kb.tasks.Multiclass(2)})


def _binary_data(num_samples: int = 256) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, 12)).astype("float32")
    labels = {"flags": (x[:, :3] > 0).astype("float32"), "pair": (x[:, 3] > 0).astype("int32")}
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(64)


def _trained(moments: str, seed: int, jit_compile: bool = False) -> list[np.ndarray]:
    model = _binary_model()
    aggregator = kb.BayesAgg(warmup_epochs=0, num_samples=32, seed=seed, moments=moments)
    model.compile(optimizer="adam", aggregator=aggregator, jit_compile=jit_compile)
    model.fit(_binary_data(), epochs=2, verbose=0)
    return model.get_weights()


def test_exact_moments_are_the_default_and_need_no_seed():
    assert kb.BayesAgg().moments == "exact"
    for a, b in zip(_trained("exact", seed=1), _trained("exact", seed=2, jit_compile=True)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # no draws: the seed does not matter (XLA or not)


def test_monte_carlo_is_one_argument_away():
    first, second = _trained("monte_carlo", seed=1), _trained("monte_carlo", seed=2)
    assert any(not np.allclose(a, b) for a, b in zip(first, second))  # draws depend on the seed
    with pytest.raises(ValueError, match="moments must be one of"):
        kb.BayesAgg(moments="quadrature")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_auto_prior_variance_is_chosen_per_group_logged_and_saved(tmp_path, jit_compile):
    model = make_mixed_model()
    model.compile(
        optimizer="adam", aggregator=kb.BayesAgg(prior_variance="auto", num_samples=16), jit_compile=jit_compile
    )
    history = model.fit(mixed_dataset(), epochs=2, verbose=0).history
    chosen = model.aggregator.chosen_prior_variances()
    assert set(chosen) == {"regression", "flags[0]", "flags[1]", "flags[2]", "kind"}
    assert all(np.isfinite(v) and v > 0 for v in chosen.values())
    assert chosen["regression"] != pytest.approx(0.005)  # moved away from the start
    for name, value in chosen.items():
        assert history[f"prior_variance/{name}"][-1] == pytest.approx(value)
    path = str(tmp_path / "auto.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.aggregator.chosen_prior_variances() == pytest.approx(chosen)


def test_a_fixed_prior_variance_keeps_the_saved_layout_of_version_0_1_0():
    fixed, auto = make_mixed_model(), make_mixed_model()
    fixed.compile(optimizer="adam", aggregator=kb.BayesAgg(num_samples=8))
    auto.compile(optimizer="adam", aggregator=kb.BayesAgg(prior_variance="auto", num_samples=8))
    for model in (fixed, auto):
        model.build((None, 12))
    names = [v.path.split("/")[-1] for v in fixed.aggregator.weights]
    assert not any("chosen_prior_variance" in name for name in names)
    assert len(auto.aggregator.weights) == len(fixed.aggregator.weights) + 3  # regression, binary blocks, multiclass
    assert fixed.aggregator.chosen_prior_variances() == {}
