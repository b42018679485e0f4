"""Tests for bt_tf.augment: invariants of each op, statistics, determinism, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bt_tf import augment as A
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID

MAX_LEN = 24
SEED = tf.constant([7, 11], tf.int64)


def _batch(lengths, max_len=MAX_LEN, seed=0, dtype=np.int32):
    """Right-padded batch with distinct real ids per row (so positions are traceable)."""
    rng = np.random.default_rng(seed)
    items = np.zeros((len(lengths), max_len), dtype)
    for row, n in enumerate(lengths):
        items[row, :n] = rng.permutation(np.arange(NUM_RESERVED, NUM_RESERVED + 1000))[:n]
    return items


def _mixed_lengths(num_rows=400, seed=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, MAX_LEN + 1, size=num_rows)
    lengths[:4] = [0, 1, 2, MAX_LEN]
    return lengths


OPS = [
    ("mask", A.mask, 0.5),
    ("reorder", A.reorder, 0.5),
    ("crop", A.crop, 0.5),
]


@pytest.mark.parametrize("name,op,strength", OPS)
def test_padding_never_augmented_in(name, op, strength):
    lengths = _mixed_lengths()
    items = _batch(lengths)
    out = op(tf.constant(items), SEED, strength).numpy()
    assert out.shape == items.shape and out.dtype == items.dtype
    new_lengths = (out != PAD_ID).sum(axis=1)
    for row, n in enumerate(new_lengths):
        assert (out[row, n:] == PAD_ID).all(), f"{name}: padding inside row {row}"
        assert (out[row, :n] != PAD_ID).all(), f"{name}: hole inside row {row}"
    if name != "crop":
        np.testing.assert_array_equal(new_lengths, lengths)


@pytest.mark.parametrize(
    "name,op,strength",
    [("mask", A.mask, 1.0), ("reorder", A.reorder, 1.0), ("crop", A.crop, 0.01)],
)
def test_length_one_and_empty_rows_unchanged(name, op, strength):
    items = _batch([1, 1, 0, 1] * 50)
    for s in range(5):
        out = op(tf.constant(items), tf.constant([s, 3]), strength).numpy()
        np.testing.assert_array_equal(out, items, err_msg=name)
    policy = A.AugmentPolicy(mask=1.0, reorder=1.0, crop=0.01)
    v1, v2 = A.two_views(tf.constant(items), SEED, policy)
    np.testing.assert_array_equal(v1.numpy(), items)
    np.testing.assert_array_equal(v2.numpy(), items)


def test_mask_rate_near_gamma():
    gamma = 0.3
    lengths = np.full(1000, 200)
    lengths[::2] = 150  # 175_000 real items
    items = _batch(lengths, max_len=200)
    out = A.mask(tf.constant(items), SEED, gamma).numpy()
    real = items != PAD_ID
    masked = out == MASK_ID
    assert not (masked & ~real).any()
    # Unmasked real items are untouched.
    np.testing.assert_array_equal(out[real & ~masked], items[real & ~masked])
    n = real.sum()
    rate = masked.sum() / n
    se = math.sqrt(gamma * (1 - gamma) / n)  # ~0.0011
    assert abs(rate - gamma) < 4 * se, (rate, gamma, se)


def test_reorder_permutes_exactly_one_span_of_floor_beta_len():
    beta = 0.4
    lengths = _mixed_lengths(1000)
    items = _batch(lengths)
    out, start, span = (t.numpy() for t in A._reorder_with_span(tf.constant(items), SEED, beta))
    public = A.reorder(tf.constant(items), SEED, beta).numpy()
    np.testing.assert_array_equal(out, public)
    changed_rows = 0
    for row, n in enumerate(lengths):
        expect_span = math.floor(beta * n) if n > 1 else 0
        assert span[row] == expect_span
        s = start[row]
        assert 0 <= s <= n - expect_span
        # Multiset preserved; outside the span nothing moves.
        assert sorted(out[row]) == sorted(items[row])
        outside = np.ones(MAX_LEN, bool)
        outside[s : s + expect_span] = False
        np.testing.assert_array_equal(out[row, outside], items[row, outside])
        # The differing positions fit in a window of the span length.
        diff = np.flatnonzero(out[row] != items[row])
        if diff.size:
            assert diff.max() - diff.min() + 1 <= expect_span
            changed_rows += 1
    # A 2+ item span is a non-identity permutation most of the time.
    eligible = sum(1 for n in lengths if math.floor(beta * n) >= 2)
    assert changed_rows > 0.4 * eligible


def test_reorder_start_is_uniform():
    # len 10, beta 0.3 -> span 3, start uniform over 0..7 (p = 1/8 each).
    items = _batch([10] * 8000)
    _, start, span = A._reorder_with_span(tf.constant(items), SEED, 0.3)
    assert set(span.numpy()) == {3}
    counts = np.bincount(start.numpy(), minlength=8)
    assert counts.size == 8
    se = math.sqrt(8000 * (1 / 8) * (7 / 8))  # ~29.6
    assert np.all(np.abs(counts - 1000) < 4 * se), counts


def test_reorder_span_uses_exact_floor():
    # 0.7 * 10 = 7 exactly in Python; float32 arithmetic would give 6.
    _, _, span = A._reorder_with_span(tf.constant(_batch([10])), SEED, 0.7)
    assert span.numpy()[0] == 7


def test_crop_keeps_contiguous_window_of_the_right_size():
    eta = 0.6
    lengths = _mixed_lengths(1000)
    items = _batch(lengths)
    out = A.crop(tf.constant(items), SEED, eta).numpy()
    starts = []
    for row, n in enumerate(lengths):
        size = max(1, math.floor(eta * n)) if n else 0
        assert (out[row] != PAD_ID).sum() == size
        assert (out[row, size:] == PAD_ID).all()
        window = list(out[row, :size])
        # Contiguous sub-sequence of the input: ids are distinct per row.
        if size:
            s = int(np.flatnonzero(items[row] == window[0])[0])
            assert list(items[row, s : s + size]) == window
            assert 0 <= s <= n - size
            starts.append((n, s))
    # The start varies (not always 0) for long rows.
    assert len({s for n, s in starts if n == MAX_LEN}) > 1


@pytest.mark.parametrize("name,op,strength", OPS)
def test_determinism_by_seed(name, op, strength):
    items = tf.constant(_batch(_mixed_lengths()))
    a = op(items, tf.constant([1, 2]), strength).numpy()
    b = op(items, tf.constant([1, 2]), strength).numpy()
    c = op(items, tf.constant([1, 3]), strength).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_jit_compiled_equals_eager():
    items = tf.constant(_batch(_mixed_lengths()))
    policy = A.AugmentPolicy.from_string("mask:0.2,reorder:0.3,crop:0.6,apply_prob:0.5")

    def all_ops(x, seed):
        v1, v2 = A.two_views(x, seed, policy)
        return (
            A.mask(x, seed, 0.3),
            A.reorder(x, seed, 0.5),
            A.crop(x, seed, 0.5),
            v1,
            v2,
        )

    eager = all_ops(items, SEED)
    jitted = tf.function(all_ops, jit_compile=True)(items, SEED)
    for e, j in zip(eager, jitted):
        np.testing.assert_array_equal(e.numpy(), j.numpy())


def test_dtype_int64_preserved():
    items = tf.constant(_batch([5, 3, 0], dtype=np.int64))
    v1, v2 = A.two_views(items, SEED, A.AugmentPolicy(mask=0.5, reorder=0.5, crop=0.8))
    assert v1.dtype == tf.int64 and v2.dtype == tf.int64


def test_two_views_are_independent_draws():
    items = tf.constant(_batch([MAX_LEN] * 64))
    policy = A.AugmentPolicy(mask=0.3, reorder=0.3)
    v1, v2 = A.two_views(items, SEED, policy)
    assert (v1.numpy() != v2.numpy()).any(axis=1).mean() > 0.9
    w1, w2 = A.two_views(items, SEED, policy)
    np.testing.assert_array_equal(v1.numpy(), w1.numpy())
    np.testing.assert_array_equal(v2.numpy(), w2.numpy())


def test_apply_prob_applies_each_op_to_about_that_fraction_of_rows():
    n = 4000
    items = _batch([MAX_LEN] * n)
    out = A.augment(tf.constant(items), SEED, A.AugmentPolicy(mask=1.0, apply_prob=0.5)).numpy()
    fully_masked = (out == MASK_ID).all(axis=1)
    untouched = (out == items).all(axis=1)
    assert (fully_masked | untouched).all()
    se = math.sqrt(n * 0.25)  # ~31.6 rows
    assert abs(fully_masked.sum() - n / 2) < 4 * se


def test_policy_order_crop_then_mask():
    # With crop first, mask:1.0 masks exactly the cropped length.
    items = _batch([20] * 10)
    out = A.augment(tf.constant(items), SEED, A.AugmentPolicy.from_string("mask:1.0,crop:0.5"))
    np.testing.assert_array_equal((out.numpy() == MASK_ID).sum(axis=1), [10] * 10)
    np.testing.assert_array_equal((out.numpy() == PAD_ID).sum(axis=1), [MAX_LEN - 10] * 10)


def test_identity_policy():
    items = _batch(_mixed_lengths(50))
    for spec in (None, "", "none", " None "):
        policy = A.AugmentPolicy.from_string(spec)
        assert policy.is_identity and policy.to_string() == "none"
        v1, v2 = A.two_views(tf.constant(items), SEED, policy)
        np.testing.assert_array_equal(v1.numpy(), items)
        np.testing.assert_array_equal(v2.numpy(), items)


def test_policy_parsing():
    p = A.AugmentPolicy.from_string("mask:0.3, reorder:0.3")
    assert p == A.AugmentPolicy(mask=0.3, reorder=0.3, crop=None, apply_prob=1.0)
    assert p.ops == (("reorder", 0.3), ("mask", 0.3))
    q = A.AugmentPolicy.from_string("crop:0.6,mask:0.2,reorder:0.2,apply_prob:0.5")
    assert (q.mask, q.reorder, q.crop, q.apply_prob) == (0.2, 0.2, 0.6, 0.5)
    assert A.AugmentPolicy.from_string(q.to_string()) == q
    with pytest.raises(dataclasses_frozen_error()):
        p.mask = 0.5


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "spec,message",
    [
        ("mask:0.3,shuffle:0.2", "unknown name 'shuffle'"),
        ("mask:abc", "not a number"),
        ("mask:1.5", "mask=1.5 is out of range"),
        ("crop:0", "crop=0.0 is out of range"),
        ("reorder:-0.1", "out of range"),
        ("mask:0.1,mask:0.2", "given twice"),
        ("mask", "must look like 'name:value'"),
        ("apply_prob:2", "apply_prob=2.0 is out of range"),
    ],
)
def test_policy_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        A.AugmentPolicy.from_string(spec)
