"""Barlow Twins loss: hand-checked values and the invariances the loss promises."""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.modeling.losses import (
    barlow_twins_loss,
    barlow_twins_terms,
    cross_correlation,
    off_diagonal,
)


def test_off_diagonal_lists_exactly_the_off_diagonal_entries():
    x = tf.reshape(tf.range(9.0), [3, 3])  # [[0 1 2] [3 4 5] [6 7 8]]
    got = off_diagonal(x).numpy()
    assert got.shape == (2, 3)
    assert sorted(got.ravel().tolist()) == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]


def test_hand_worked_two_dim_three_sample_case():
    # N = 3 samples, D = 2 dimensions; z2 is z1 with its two columns swapped.
    #   column a = (0, 1, 2): mean 1, biased var 2/3 → standardized (-√1.5, 0, √1.5)
    #   column b = (0, 0, 3): mean 1, biased var 2   → standardized (-1/√2, -1/√2, √2)
    #   corr(a, a) = corr(b, b) = 1
    #   corr(a, b) = (√1.5/√2 + 0 + √1.5·√2) / 3 = (√3/2 + √3) / 3 = √3/2 ≈ 0.866025
    # z1 columns (a, b), z2 columns (b, a):
    #   c = [[corr(a,b), corr(a,a)], [corr(b,b), corr(b,a)]] = [[√3/2, 1], [1, √3/2]]
    #   on_diag  = 2 (1 - √3/2)² = 3.5 - 2√3 ≈ 0.0358984
    #   off_diag = 1² + 1² = 2
    #   loss(λ = 0.5) = 3.5 - 2√3 + 1 ≈ 1.0358984
    z1 = tf.constant([[0.0, 0.0], [1.0, 0.0], [2.0, 3.0]])
    z2 = tf.constant([[0.0, 0.0], [0.0, 1.0], [3.0, 2.0]])
    r = np.sqrt(3.0) / 2.0
    np.testing.assert_allclose(
        cross_correlation(z1, z2, eps=0.0).numpy(), [[r, 1.0], [1.0, r]], atol=1e-6
    )
    terms = barlow_twins_terms(z1, z2, eps=0.0)
    assert float(terms.on_diag) == pytest.approx(3.5 - 2 * np.sqrt(3.0), abs=1e-6)
    assert float(terms.off_diag) == pytest.approx(2.0, abs=1e-6)
    loss = barlow_twins_loss(z1, z2, 0.5, eps=0.0)
    assert float(loss) == pytest.approx(1.0358984, abs=1e-6)


def test_identical_views_have_zero_on_diagonal_term():
    z = tf.random.stateless_normal([64, 8], seed=[1, 2])
    terms = barlow_twins_terms(z, z, eps=0.0)
    np.testing.assert_allclose(np.diag(terms.c.numpy()), np.ones(8), atol=1e-5)
    assert float(terms.on_diag) == pytest.approx(0.0, abs=1e-8)
    # ...while random independent dimensions still correlate a little by chance.
    assert float(terms.off_diag) > 0.01


def test_lambda_scales_only_the_off_diagonal_term():
    z1 = tf.random.stateless_normal([32, 6], seed=[3, 4])
    z2 = z1 + 0.5 * tf.random.stateless_normal([32, 6], seed=[5, 6])
    terms = barlow_twins_terms(z1, z2)
    loss0 = float(barlow_twins_loss(z1, z2, 0.0))
    loss1 = float(barlow_twins_loss(z1, z2, 1.0))
    loss3 = float(barlow_twins_loss(z1, z2, 3.0))
    assert loss0 == pytest.approx(float(terms.on_diag), rel=1e-6)
    assert loss1 - loss0 == pytest.approx(float(terms.off_diag), rel=1e-5)
    assert loss3 - loss0 == pytest.approx(3 * (loss1 - loss0), rel=1e-5)
    assert float(terms.on_diag) > 0.03 and float(terms.off_diag) > 0.1  # both terms non-trivial


def test_invariant_to_per_dimension_affine_rescaling():
    z1 = tf.random.stateless_normal([32, 5], seed=[7, 8])
    z2 = z1 + tf.random.stateless_normal([32, 5], seed=[9, 10])
    scale = tf.constant([0.5, 2.0, -3.0, 10.0, 1.0])  # a negative scale flips both views
    shift = tf.constant([1.0, -4.0, 0.0, 100.0, 7.0])
    before = float(barlow_twins_loss(z1, z2, 0.1, eps=0.0))
    after = float(barlow_twins_loss(z1 * scale + shift, z2 * scale + shift, 0.1, eps=0.0))
    assert before > 0.2
    assert after == pytest.approx(before, rel=1e-5)


def test_eps_keeps_constant_dimensions_finite():
    z1 = tf.concat([tf.random.stateless_normal([16, 3], seed=[1, 1]), tf.ones([16, 1])], 1)
    loss = barlow_twins_loss(z1, z1, 0.0)
    # The constant dimension standardizes to 0, so c_33 = 0 and contributes (1 - 0)² = 1;
    # the other three contribute (1 - var / (var + eps))² ≈ 0.
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(1.0, abs=1e-3)
