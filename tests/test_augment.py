"""Tests for bt_tf.data.augment: invariants of each op, statistics, determinism, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bt_tf.data import augment as A
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID

MAX_LEN = 24
SEED = tf.constant([7, 11], tf.int64)
VOCAB = NUM_RESERVED + 1000  # ids of `_batch`
NEIGHBOUR_BASE = 5000  # `TABLE`'s neighbours live above the ids of `_batch`
K = 4


def _disjoint_table(vocab=VOCAB, k=K):
    """Item i's neighbours: k distinct ids >= NEIGHBOUR_BASE (recognizable as inserted);
    every 7th item has none (self-map), every 5th only two (then self)."""
    table = np.repeat(np.arange(vocab, dtype=np.int32)[:, None], k, axis=1)
    for i in range(NUM_RESERVED, vocab):
        count = 0 if i % 7 == 0 else 2 if i % 5 == 0 else k
        table[i, :count] = NEIGHBOUR_BASE + (i * 3 + np.arange(count)) % 997
    return table


TABLE = _disjoint_table()


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


def _substitute(x, seed, rho):
    return A.substitute(x, seed, rho, TABLE)


def _insert(x, seed, rho):
    return A.insert(x, seed, rho, TABLE)


OPS = [
    ("mask", A.mask, 0.5),
    ("reorder", A.reorder, 0.5),
    ("crop", A.crop, 0.5),
    ("substitute", _substitute, 0.5),
    ("insert", _insert, 0.5),
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
    if name == "insert":
        grown = np.where(lengths > 1, lengths + np.floor(strength * lengths), lengths)
        np.testing.assert_array_equal(new_lengths, np.minimum(grown, MAX_LEN))
    elif name != "crop":
        np.testing.assert_array_equal(new_lengths, lengths)
    # No op produces a reserved id other than MASK_ID from mask.
    produced = out[(out != PAD_ID) & (out != MASK_ID)] if name == "mask" else out[out != PAD_ID]
    assert (produced >= NUM_RESERVED).all(), name


@pytest.mark.parametrize(
    "name,op,strength",
    [
        ("mask", A.mask, 1.0),
        ("reorder", A.reorder, 1.0),
        ("crop", A.crop, 0.01),
        ("substitute", _substitute, 1.0),
        ("insert", _insert, 1.0),
    ],
)
def test_length_one_and_empty_rows_unchanged(name, op, strength):
    items = _batch([1, 1, 0, 1] * 50)
    for s in range(5):
        out = op(tf.constant(items), tf.constant([s, 3]), strength).numpy()
        np.testing.assert_array_equal(out, items, err_msg=name)
    policy = A.AugmentPolicy(mask=1.0, reorder=1.0, crop=0.01, substitute=1.0, insert=1.0)
    v1, v2 = A.two_views(tf.constant(items), SEED, policy, TABLE)
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


def test_table_ops_jit_compiled_equal_eager():
    items = tf.constant(_batch(_mixed_lengths()))
    policy = A.AugmentPolicy.from_string("crop:0.8,insert:0.3,substitute:0.4,mask:0.1")

    def table_ops(x, seed, table):
        return (A.substitute(x, seed, 0.5, table), A.insert(x, seed, 0.5, table)) + (
            A.two_views(x, seed, policy, table)
        )

    eager = table_ops(items, SEED, tf.constant(TABLE))
    jitted = tf.function(table_ops, jit_compile=True)(items, SEED, tf.constant(TABLE))
    for e, j in zip(eager, jitted):
        np.testing.assert_array_equal(e.numpy(), j.numpy())


def test_dtype_int64_preserved():
    items = tf.constant(_batch([5, 3, 0], dtype=np.int64))
    policy = A.AugmentPolicy(mask=0.5, reorder=0.5, crop=0.8, substitute=0.5, insert=0.5)
    v1, v2 = A.two_views(items, SEED, policy, TABLE)
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
    assert not p.needs_cooccurrence
    q = A.AugmentPolicy.from_string("crop:0.6,mask:0.2,reorder:0.2,apply_prob:0.5")
    assert (q.mask, q.reorder, q.crop, q.apply_prob) == (0.2, 0.2, 0.6, 0.5)
    assert A.AugmentPolicy.from_string(q.to_string()) == q
    r = A.AugmentPolicy.from_string("mask:0.1,substitute:0.2,insert:0.3,crop:0.9")
    assert r.ops == (("crop", 0.9), ("insert", 0.3), ("substitute", 0.2), ("mask", 0.1))
    assert r.needs_cooccurrence and A.AugmentPolicy(insert=0.0).needs_cooccurrence
    assert r.to_string() == "mask:0.1,crop:0.9,substitute:0.2,insert:0.3"  # the flag order
    assert A.AugmentPolicy.from_string(r.to_string()) == r
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
        ("substitute:1.5", "substitute=1.5 is out of range"),
        ("insert:-1", "insert=-1.0 is out of range"),
        ("insert:lots", "value 'lots' of 'insert' is not a number"),
        ("substitute:0.1,substitute:0.2", "'substitute' is given twice"),
    ],
)
def test_policy_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        A.AugmentPolicy.from_string(spec)


def test_table_ops_need_a_table():
    items = tf.constant(_batch([5, 4]))
    policy = A.AugmentPolicy.from_string("mask:0.2,insert:0.3")
    with pytest.raises(ValueError, match="'mask:0.2,insert:0.3' uses substitute/insert"):
        A.two_views(items, SEED, policy)
    with pytest.raises(ValueError, match="int \\[vocab, k\\]"):
        A.augment(items, SEED, policy, table=np.zeros([5], np.int32))
    # A policy without them ignores the table.
    A.augment(items, SEED, A.AugmentPolicy(mask=0.2), table=None)


# --------------------------------------------------------------------------
# Co-occurrence table, substitute, insert


def test_cooccurrence_table_hand_example():
    # ids 3..9 real; 9 appears alone (isolated); 8 repeats itself; window 2.
    sequences = [[3, 4, 5, 6], [3, 4], [7], [6, 3], [8, 8], [9, 2, 5]]
    values = np.concatenate(sequences)
    table = A.cooccurrence_table(values, [len(s) for s in sequences], 11, top_k=3, window=2)
    assert table.shape == (11, 3) and table.dtype == np.int32
    # Pairs within 2 positions, per sequence (never across sequences, never
    # with the OOV id 2, never an item with itself):
    # [3,4,5,6]: 3-4, 4-5, 5-6, 3-5, 4-6;  [3,4]: 3-4;  [6,3]: 6-3.
    # [9, 2, 5]: 9-5 (the pair with OOV 2 is skipped) .
    expected = {
        0: [0, 0, 0],  # reserved: self
        1: [1, 1, 1],
        2: [2, 2, 2],
        3: [4, 5, 6],  # 4 twice, then 5 and 6 once (ties: smaller id first)
        4: [3, 5, 6],
        5: [3, 4, 6],  # 9 also once, cut by top_k=3
        6: [3, 4, 5],
        7: [7, 7, 7],  # isolated (its only sequence has length 1)
        8: [8, 8, 8],  # only co-occurs with itself
        9: [5, 9, 9],  # one neighbour, then self
        10: [10, 10, 10],  # never seen
    }
    for item, row in expected.items():
        assert list(table[item]) == row, (item, list(table[item]))
    # A wider window reaches 3-6 in the first sequence: 3 now has 4 (x2), 6 (x2), 5.
    wide = A.cooccurrence_table(values, [len(s) for s in sequences], 11, top_k=3, window=3)
    assert list(wide[3]) == [4, 6, 5]


def test_cooccurrence_table_matches_brute_force():
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 30, size=60)
    values = rng.integers(0, 40, size=lengths.sum())  # includes reserved ids
    table = A.cooccurrence_table(values, lengths, 40, top_k=5, window=3)
    counts = np.zeros((40, 40), int)
    start = 0
    for n in lengths:
        seq = values[start : start + n]
        start += n
        for i in range(n):
            for j in range(max(0, i - 3), min(n, i + 4)):
                a, b = seq[i], seq[j]
                if i != j and a != b and a >= NUM_RESERVED and b >= NUM_RESERVED:
                    counts[a, b] += 1
    for item in range(40):
        neighbours = sorted(np.flatnonzero(counts[item]), key=lambda b: (-counts[item, b], b))
        row = neighbours[:5] + [item] * (5 - len(neighbours[:5]))
        assert list(table[item]) == row, item


def test_cooccurrence_table_errors():
    with pytest.raises(ValueError, match="Item id 12 at flat position 1 is outside"):
        A.cooccurrence_table([3, 12], [2], vocab_size=10)
    with pytest.raises(ValueError, match="sum to len"):
        A.cooccurrence_table([3, 4, 5], [2], vocab_size=10)
    with pytest.raises(ValueError, match="must be >= 1"):
        A.cooccurrence_table([3, 4], [2], vocab_size=10, top_k=0)


def test_substitute_replaces_exactly_floor_rho_len_items_by_neighbours():
    rho = 0.4
    lengths = _mixed_lengths(600)
    items = _batch(lengths)
    out = A.substitute(tf.constant(items), SEED, rho, TABLE).numpy()
    changed = out != items
    # Only real positions of rows longer than 1 change.
    assert not (changed & (items == PAD_ID)).any()
    chosen_without_neighbours = 0
    for row, n in enumerate(lengths):
        for pos in np.flatnonzero(changed[row]):
            assert out[row, pos] in TABLE[items[row, pos]], (row, pos)
            assert out[row, pos] != items[row, pos]
        has_neighbours = TABLE[items[row, :n], 0] != items[row, :n]
        count = math.floor(rho * n) if n > 1 else 0
        # Items with neighbours always change when chosen; the others cannot.
        assert changed[row].sum() <= count
        assert not changed[row, :n][~has_neighbours].any()
        chosen_without_neighbours += count - changed[row].sum()
    # About 1/7 of the items have no neighbours.
    total = sum(math.floor(rho * n) for n in lengths if n > 1)
    assert 0.05 * total < chosen_without_neighbours < 0.25 * total


def test_substitute_picks_uniformly_among_the_neighbours():
    items = np.zeros((2000, 8), np.int32)
    items[:, :4] = 37  # 4 neighbours
    items[:, 4:] = 10  # 10 % 5 == 0: 2 neighbours, then self-padding
    out = A.substitute(tf.constant(items), SEED, 1.0, TABLE).numpy()
    for item, column, count in ((37, slice(0, 4), K), (10, slice(4, 8), 2)):
        picks = out[:, column].ravel()
        values, freq = np.unique(picks, return_counts=True)
        np.testing.assert_array_equal(values, np.sort(TABLE[item, :count]))
        n = picks.size  # 8000
        se = math.sqrt(n * (1 / count) * (1 - 1 / count))
        assert np.all(np.abs(freq - n / count) < 4 * se), (item, freq)


def test_insert_keeps_the_original_order_and_the_most_recent_items():
    rho = 0.5
    lengths = _mixed_lengths(600)
    items = _batch(lengths)  # distinct ids per row
    out = A.insert(tf.constant(items), SEED, rho, TABLE).numpy()
    overflowed = 0
    for row, n in enumerate(lengths):
        m = math.floor(rho * n) if n > 1 else 0
        new_len = min(n + m, MAX_LEN)
        assert (out[row, :new_len] != PAD_ID).all() and (out[row, new_len:] == PAD_ID).all()
        real = out[row, :new_len]
        # Inserted items are ids >= NEIGHBOUR_BASE, or a copy of an item without
        # neighbours, right before it; dropping those leaves the originals.
        self_copy = np.append(real[:-1] == real[1:], False)
        originals = real[(real < NEIGHBOUR_BASE) & ~self_copy]
        kept = originals.size
        # The originals are the most recent ones, in their order.
        assert list(originals) == list(items[row, n - kept : n])
        if n + m <= MAX_LEN:
            assert kept == n and new_len - kept == m  # nothing dropped, m insertions
        else:
            overflowed += 1
            assert kept >= n - (n + m - MAX_LEN)  # at most the overflow is dropped
        # Each inserted item is a neighbour of the item right after it.
        for pos in np.flatnonzero(real >= NEIGHBOUR_BASE):
            assert pos + 1 < new_len and real[pos] in TABLE[real[pos + 1]]
    assert overflowed > 10  # the overflow case was exercised


def test_two_views_with_table_ops_are_deterministic():
    items = tf.constant(_batch(_mixed_lengths(64)))
    policy = A.AugmentPolicy.from_string("insert:0.3,substitute:0.3,reorder:0.2")
    a = A.two_views(items, [1, 2], policy, TABLE)
    b = A.two_views(items, [1, 2], policy, TABLE)
    c = A.two_views(items, [1, 3], policy, TABLE)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
        assert (x.numpy() != z.numpy()).any()
    assert (a[0].numpy() != a[1].numpy()).any()
