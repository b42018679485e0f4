"""Dual-encoder baseline and joint BT+DE model: pairs, loss by hand, learning, replicas.

The one-vs-two-replica tests use the two logical CPUs of `tests/conftest.py`;
SGD (not Adam) so that a wrong gradient scale shows in the weights.
"""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.dual_encoder import (
    PREFIX,
    TARGET,
    DualEncoderModel,
    ItemTower,
    JointModel,
    add_next_item_pairs,
    next_item_pairs,
)
from bt_tf.encoders import SequenceEncoder, build_projector
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID
from bt_tf.models import VIEW1, VIEW2

HR10 = "factorized_top_k/top_10_categorical_accuracy"


def _histories(num_users, length, vocab, seed, min_len=0):
    """Right-padded random histories of lengths min_len..length (incl. 0 and 1)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, length + 1, size=num_users)
    items = rng.integers(NUM_RESERVED, vocab, size=(num_users, length)).astype(np.int32)
    items[np.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
    return items, lengths


# --------------------------------------------------------------------------
# next_item_pairs


def _check_pairs(items, lengths, prefix, target):
    for row, n in enumerate(lengths):
        if n < 2:
            assert target[row] == PAD_ID
            np.testing.assert_array_equal(prefix[row], items[row])
            continue
        cut = int(np.sum(prefix[row] != PAD_ID))
        assert 1 <= cut <= n - 1
        np.testing.assert_array_equal(prefix[row, :cut], items[row, :cut])  # a prefix
        assert np.all(prefix[row, cut:] == PAD_ID)  # re-padded, padding kept
        assert target[row] == items[row, cut]  # the item right after it


def test_next_item_pairs_are_prefix_and_following_item():
    items, lengths = _histories(200, 9, 50, seed=0)
    assert {0, 1, 2, 9} <= set(lengths)  # the edge cases are present
    prefix, target = next_item_pairs(tf.constant(items), tf.constant([3, 4]))
    assert prefix.shape == items.shape and target.shape == (200,)
    assert prefix.dtype == tf.int32 and target.dtype == tf.int32
    _check_pairs(items, lengths, prefix.numpy(), target.numpy())


def test_next_item_pairs_cut_is_uniform_over_1_to_len_minus_1():
    items = np.tile(np.arange(3, 8, dtype=np.int32), (4000, 1))  # 4000 rows of length 5
    _, target = next_item_pairs(items, [0, 1])
    counts = np.bincount(target.numpy() - 3, minlength=5)
    # cut c in {1, 2, 3, 4} -> target items[c] = 4..7; never the first item (3).
    assert counts[0] == 0
    # Each ~1000 (binomial sd ~27): a bias of 15% or an off-by-one range fails.
    np.testing.assert_allclose(counts[1:], 1000, atol=120)


def test_next_item_pairs_seeded_and_identical_under_xla():
    items, _ = _histories(64, 12, 40, seed=1)
    items = tf.constant(items)
    a = next_item_pairs(items, [7, 8])
    b = next_item_pairs(items, [7, 8])
    c = next_item_pairs(items, [7, 9])
    xla = tf.function(next_item_pairs, jit_compile=True)(items, tf.constant([7, 8]))
    for x, y in [(a, b), (a, xla)]:
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_next_item_pairs_on_width_one_rows():
    prefix, target = next_item_pairs(tf.constant([[5], [0]]), [0, 0])
    np.testing.assert_array_equal(prefix, [[5], [0]])
    np.testing.assert_array_equal(target, [0, 0])


def test_add_next_item_pairs_maps_batches_and_is_seeded():
    items, lengths = _histories(40, 8, 30, seed=2)
    base = tf.data.Dataset.from_tensor_slices({"items": items}).batch(16)

    def epochs(ds, n=2):
        return [[{k: v.numpy() for k, v in b.items()} for b in ds] for _ in range(n)]

    runs = epochs(add_next_item_pairs(base, seed=5))
    again = epochs(add_next_item_pairs(base, seed=5))
    fixed = epochs(add_next_item_pairs(base, seed=5, redraw_each_epoch=False))
    for start, batch in zip(range(0, 40, 16), runs[0]):
        rows = slice(start, start + 16)
        _check_pairs(items[rows], lengths[rows], batch[PREFIX], batch[TARGET])
        np.testing.assert_array_equal(batch["items"], items[rows])  # kept
    same = lambda r1, r2: all(
        np.array_equal(x[PREFIX], y[PREFIX]) for x, y in zip(r1, r2, strict=True)
    )
    assert same(runs[0], again[0]) and same(runs[1], again[1])  # same seed, same pairs
    assert not same(runs[0], runs[1])  # new cuts in the next epoch
    assert same(fixed[0], fixed[1])  # ... unless told otherwise
    with pytest.raises(ValueError, match="items"):
        add_next_item_pairs(tf.data.Dataset.from_tensor_slices({"x": items}), seed=0)


# --------------------------------------------------------------------------
# The loss, by hand


def _hand_model(query_rows, candidate_rows, temperature, **kwargs):
    """A DE whose user embedding is the embedding of the last prefix item.

    kind="mean" + pooling="last" (no dropout) makes the query tower a plain
    lookup, so the scores can be written down: query item 3 + i has embedding
    query_rows[i], candidate item 5 + j has item_tower row candidate_rows[j].
    """
    dim = len(query_rows[0])
    encoder = SequenceEncoder(8, max_len=2, dim=dim, kind="mean", pooling="last", dropout=0.0)
    model = DualEncoderModel(encoder, temperature=temperature, top_k=None, **kwargs)
    model(tf.zeros([1, 2], tf.int32))
    model.item_embeddings()
    table = np.zeros([8, dim], np.float32)
    table[3 : 3 + len(query_rows)] = query_rows
    encoder.item_embedding.set_weights([table])
    table = np.zeros([8, dim], np.float32)
    table[5 : 5 + len(candidate_rows)] = candidate_rows
    model.item_tower.embedding.set_weights([table])
    return model


def _loss(model, prefix_last, target):
    prefix = np.stack([prefix_last, np.zeros_like(prefix_last)], axis=1).astype(np.int32)
    return float(model.compute_loss({PREFIX: prefix, TARGET: np.asarray(target, np.int32)}))


def test_in_batch_softmax_two_by_two_by_hand():
    # q0 = [1, 0], q1 = [1, 1]; c0 = [1, 0] (item 5), c1 = [0, 1] (item 6).
    # scores / T with T = 0.5: row 0 = [2, 0], positive 2; row 1 = [2, 2], positive 2.
    # CE0 = log(1 + e^-2) = 0.126928, CE1 = log 2 = 0.693147; mean = 0.410038.
    model = _hand_model([[1, 0], [1, 1]], [[1, 0], [0, 1]], temperature=0.5)
    expected = (np.log(1 + np.exp(-2)) + np.log(2)) / 2
    assert _loss(model, [3, 4], [5, 6]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.410038, abs=1e-6)
    # A row without a pair (target PAD) is neither a query nor a negative.
    assert _loss(model, [3, 4, 3], [5, 6, PAD_ID]) == pytest.approx(expected, abs=1e-6)
    # Temperature 1: CE0 = log(1 + e^-1) = 0.313262, CE1 = log 2.
    model = _hand_model([[1, 0], [1, 1]], [[1, 0], [0, 1]], temperature=1.0)
    assert _loss(model, [3, 4], [5, 6]) == pytest.approx((0.313262 + 0.693147) / 2, abs=1e-6)


def test_accidental_hits_are_removed_only_when_asked():
    # Both users' next item is 5: each query sees the same candidate twice.
    # Kept: row 0 scores [1, 1] -> log 2, row 1 scores [0, 0] -> log 2.
    # Removed: only the positive column is left in each row -> 0.
    kept = _hand_model([[1, 0], [0, 1]], [[1, 0]], temperature=1.0)
    removed = _hand_model([[1, 0], [0, 1]], [[1, 0]], temperature=1.0, remove_accidental_hits=True)
    assert _loss(kept, [3, 4], [5, 5]) == pytest.approx(np.log(2), abs=1e-6)
    assert _loss(removed, [3, 4], [5, 5]) == pytest.approx(0.0, abs=1e-6)


def test_item_tower_adds_the_mean_of_the_item_genres():
    # Item 4 has genres 3 and 4, item 3 has genre 3 only, items 0..2 none.
    genres = np.array([[0, 0], [0, 0], [0, 0], [3, 0], [3, 4]])
    tower = ItemTower(5, 2, item_genres=genres, num_genres=5)
    tower(tf.constant([0]))
    tower.embedding.set_weights([np.arange(10, dtype=np.float32).reshape(5, 2)])
    tower.genre_embedding.set_weights([np.array([[0, 0]] * 3 + [[10, 0], [0, 20]], np.float32)])
    np.testing.assert_allclose(tower(tf.constant([4, 3, 1])), [[13, 19], [16, 7], [2, 3]])
    with pytest.raises(ValueError, match="num_genres"):
        ItemTower(5, 2, item_genres=genres, num_genres=4)


# --------------------------------------------------------------------------
# Learning a planted problem

VOCAB, LENGTH = NUM_RESERVED + 30, 8
_SUCCESSOR = np.random.default_rng(123).permutation(np.arange(NUM_RESERVED, VOCAB))


def _planted_pairs(num_users, seed):
    """Random prefixes; the next item is a fixed permutation of the LAST prefix item."""
    items, lengths = _histories(num_users, LENGTH, VOCAB, seed, min_len=1)
    last = items[np.arange(num_users), lengths - 1]
    return {PREFIX: items, TARGET: _SUCCESSOR[last - NUM_RESERVED].astype(np.int32)}


def _encoder(dim=16, seed=0):
    tf.keras.utils.set_random_seed(seed)
    return SequenceEncoder(
        VOCAB, max_len=LENGTH, dim=dim, num_blocks=1, num_heads=2, dropout=0.0, pooling="last"
    )


def test_de_learns_a_planted_next_item_rule_and_beats_chance_in_hr_at_10():
    train = tf.data.Dataset.from_tensor_slices(_planted_pairs(1024, seed=10)).batch(64)
    test = tf.data.Dataset.from_tensor_slices(_planted_pairs(256, seed=11)).batch(64)
    model = DualEncoderModel(_encoder(), temperature=0.2, top_k=(1, 10))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    before = model.evaluate(test, verbose=0, return_dict=True)
    history = model.fit(train, epochs=8, verbose=0).history
    after = model.evaluate(test, verbose=0, return_dict=True)

    assert list(history) == ["loss"]  # top-k is an eval-only metric
    assert set(after) == {"loss", HR10, "factorized_top_k/top_1_categorical_accuracy"}
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    # Chance over the 30-item catalog is HR@10 = 10/30 = 0.33; the untrained
    # model is near it, the trained one finds the successor almost always.
    assert before[HR10] < 0.5, before
    assert after[HR10] > 0.9, after
    assert after[HR10] > before[HR10] + 0.4


def test_call_and_item_embeddings_shapes():
    model = DualEncoderModel(_encoder(dim=8), top_k=None)
    items = _planted_pairs(5, seed=0)[PREFIX]
    assert model(items).shape == (5, 8)
    np.testing.assert_allclose(model(items), model.encoder(items), atol=1e-6)
    assert model.predict(items, verbose=0).shape == (5, 8)
    assert model.item_embeddings().shape == (VOCAB, 8)
    with pytest.raises(ValueError, match="vocab_size"):
        DualEncoderModel(_encoder(), vocab_size=VOCAB + 1)


def test_batches_without_pairs_are_rejected_with_a_clear_message():
    model = DualEncoderModel(_encoder(dim=8))
    model.compile(optimizer="sgd")
    items = _planted_pairs(8, seed=0)[PREFIX]
    with pytest.raises(ValueError, match="add_next_item_pairs"):
        model.fit(tf.data.Dataset.from_tensors({"items": items}), verbose=0)


# --------------------------------------------------------------------------
# JointModel


def _joint_batches(num_users, seed):
    data = _planted_pairs(num_users, seed)
    view2 = data[PREFIX].copy()
    rng = np.random.default_rng(seed)
    view2[(rng.random(view2.shape) < 0.3) & (view2 != PAD_ID)] = MASK_ID
    return {**data, VIEW1: data[PREFIX], VIEW2: view2}


def _joint(bt_weight, dim=8, seed=0, **kwargs):
    model = JointModel(
        _encoder(dim=dim, seed=seed),
        build_projector("16-8"),
        bt_weight=bt_weight,
        lambd=0.05,
        temperature=0.5,
        **kwargs,
    )
    return model


def test_joint_model_trains_and_reports_its_parts():
    data = tf.data.Dataset.from_tensor_slices(_joint_batches(256, seed=3)).batch(64)
    model = _joint(bt_weight=0.1)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = model.fit(data, epochs=6, verbose=0).history
    assert list(history) == ["loss", "de_loss", "bt_loss"]
    assert history["loss"][-1] < 0.7 * history["loss"][0], history
    assert history["bt_loss"][-1] < history["bt_loss"][0], history
    result = model.evaluate(data.take(1), verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(result["de_loss"] + 0.1 * result["bt_loss"], rel=1e-5)
    assert HR10 in result
    items = _planted_pairs(3, seed=0)[PREFIX]
    assert model(items).shape == (3, 8) and model.item_embeddings().shape == (VOCAB, 8)
    with pytest.raises(ValueError, match="view1"):
        model.fit(tf.data.Dataset.from_tensors(_planted_pairs(8, seed=0)), verbose=0)


def _tower_weights(model):
    return [v.numpy() for v in model.encoder.weights + model.item_tower.weights]


def test_joint_model_with_bt_weight_zero_is_the_dual_encoder():
    batch = _joint_batches(32, seed=4)
    data = tf.data.Dataset.from_tensors(batch)
    de = DualEncoderModel(_encoder(dim=8, seed=1), temperature=0.5)
    joint = _joint(bt_weight=0.0, seed=2)
    for model in (de, joint):
        model(batch[PREFIX][:1])
        model.item_embeddings()
    joint.encoder.set_weights(de.encoder.get_weights())
    joint.item_tower.set_weights(de.item_tower.get_weights())
    joint.project(batch[VIEW1][:2])
    for model in (de, joint):
        model.compile(optimizer=tf.keras.optimizers.SGD(0.5))

    start = _tower_weights(de)
    got_de = de.fit(data, epochs=1, verbose=0).history  # losses before the step
    got_joint = joint.fit(data, epochs=1, verbose=0).history
    assert got_joint["loss"][0] == pytest.approx(got_de["loss"][0], abs=1e-6)
    assert got_joint["de_loss"][0] == pytest.approx(got_de["loss"][0], abs=1e-6)
    assert got_joint["bt_loss"][0] > 0.1  # the BT term is there, just weighted 0
    assert max(np.abs(w - w0).max() for w, w0 in zip(_tower_weights(de), start)) > 1e-2
    for w_de, w_joint in zip(_tower_weights(de), _tower_weights(joint), strict=True):
        np.testing.assert_allclose(w_joint, w_de, atol=1e-6)


# --------------------------------------------------------------------------
# One replica equals two

TOL = 1e-5


def _replica_data():
    """One global batch of 7 users: two replicas get uneven shards of 4 and 3.

    User 2 has no pair (target PAD) and user 5 has the same next item as user
    0, so the masking and the global count of pairs are exercised too.
    """
    data = _joint_batches(7, seed=7)
    data[TARGET][2] = PAD_ID
    data[TARGET][5] = data[TARGET][0]
    return data


def _make(kind, global_negatives=True):
    if kind == "de":
        return DualEncoderModel(
            _encoder(dim=8, seed=0), temperature=0.5, global_negatives=global_negatives
        )
    return _joint(bt_weight=0.5, seed=0, global_negatives=global_negatives)


def _under(strategy, kind, data, initial=None, global_negatives=True):
    with strategy.scope():
        model = _make(kind, global_negatives)
        model(data[PREFIX][:2])
        model.item_embeddings()
        if kind == "joint":
            model.project(data[VIEW1][:2])
        if initial is not None:
            model.set_weights(initial)
        # The BT gradients are much larger than the DE ones: a smaller step
        # keeps the joint update in a range where float32 round-off is < TOL.
        model.compile(optimizer=tf.keras.optimizers.SGD(0.5 if kind == "de" else 0.02))
    return model


def _network_weights(model):
    extra = model.projector.weights if isinstance(model, JointModel) else []
    return [v.numpy() for v in model.encoder.weights + model.item_tower.weights + extra]


# The joint variant (~20 s: synchronized batch norm and BT all-reduces on top)
# checks that only the BT part is divided by the replica count.
@pytest.mark.parametrize("kind", ["de", pytest.param("joint", marks=pytest.mark.slow)])
def test_fit_and_evaluate_on_two_replicas_equal_one_device(kind, two_replicas):
    data = _replica_data()
    dataset = tf.data.Dataset.from_tensors(data)  # one optimizer step
    reference = _under(tf.distribute.get_strategy(), kind, data)
    initial, start = reference.get_weights(), _network_weights(reference)
    runs = {}
    for name, strategy in [
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("two", two_replicas),
    ]:
        model = _under(strategy, kind, data, initial)
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history
        # evaluate (incl. top-k) on the DE only: the joint model adds nothing there.
        evaluated = model.evaluate(dataset, verbose=0, return_dict=True) if kind == "de" else {}
        runs[name] = (history, evaluated, _network_weights(model))

    (hist_one, eval_one, w_one), (hist_two, eval_two, w_two) = runs["one"], runs["two"]
    for key in hist_one:
        assert hist_two[key][0] == pytest.approx(hist_one[key][0], rel=TOL, abs=TOL), key
    assert eval_one.keys() == eval_two.keys()
    for key in eval_one:
        assert eval_two[key] == pytest.approx(eval_one[key], rel=TOL, abs=TOL), key
    moved = max(np.abs(w - w0).max() for w, w0 in zip(w_one, start))
    assert moved > 0.05  # a factor-2 error in the update would be far above TOL
    for a, b in zip(w_one, w_two, strict=True):
        np.testing.assert_allclose(b, a, rtol=TOL, atol=TOL)


def test_per_replica_negatives_would_change_the_loss(two_replicas):
    """The teeth of the test above: TFRS's local negatives differ from one device."""
    data = _replica_data()
    batch = tf.data.Dataset.from_tensors(data)
    initial = _under(tf.distribute.get_strategy(), "de", data).get_weights()
    one = _under(tf.distribute.OneDeviceStrategy("/cpu:0"), "de", data, initial)
    local = _under(two_replicas, "de", data, initial, global_negatives=False)
    loss_one = one.evaluate(batch, verbose=0, return_dict=True)["loss"]
    loss_local = local.evaluate(batch, verbose=0, return_dict=True)["loss"]
    # Fewer negatives per query: a clearly smaller cross-entropy.
    assert loss_local < loss_one - 0.1
