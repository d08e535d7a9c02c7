"""Triangular inverse and diag(A⁻¹) from a Cholesky factor, below and above the leaf size, eager and XLA."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_bayesagg.bayes.linalg import inverse_diagonal, triangular_inverse


@pytest.mark.parametrize("size", [5, 64, 150, 513])
@pytest.mark.parametrize("compiled", [False, True])
def test_triangular_inverse_and_inverse_diagonal_match_numpy(size, compiled):
    rng = np.random.default_rng(size)
    a = rng.normal(size=(3, size, size))
    spd = a @ a.transpose(0, 2, 1) / size + np.eye(size)
    factor = np.linalg.cholesky(spd)
    inverse_fn = tf.function(triangular_inverse, jit_compile=True) if compiled else triangular_inverse
    diagonal_fn = tf.function(inverse_diagonal, jit_compile=True) if compiled else inverse_diagonal
    got = inverse_fn(tf.constant(factor)).numpy()
    np.testing.assert_allclose(got, np.linalg.inv(factor), atol=1e-10)
    assert np.all(np.triu(got, k=1) == 0.0)
    np.testing.assert_allclose(
        diagonal_fn(tf.constant(factor)), np.diagonal(np.linalg.inv(spd), axis1=-2, axis2=-1), rtol=1e-10
    )


def test_float32_triangular_inverse_is_accurate_above_the_leaf_size():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 200))
    factor = np.linalg.cholesky(a @ a.T / 200 + np.eye(200))
    got = tf.function(triangular_inverse, jit_compile=True)(tf.constant(factor, tf.float32)).numpy()
    want = np.linalg.inv(factor)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
