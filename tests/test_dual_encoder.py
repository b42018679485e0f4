"""Dual-encoder baseline and joint BT+DE model: every position a pair, loss by hand,
causality, learning, replicas, export.

The one-vs-two-replica tests use the two logical CPUs of `tests/conftest.py`;
SGD (not Adam) so that a wrong gradient scale shows in the weights.
"""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.features import (
    ITEMS,
    MASK_ID,
    NUM_RESERVED,
    OOV_ID,
    PAD_ID,
    RESERVED_TOKENS,
    VIEW1,
    VIEW2,
)
from bt_tf.modeling.dual_encoder import (
    DualEncoderModel,
    ItemTower,
    JointModel,
    drop_last_item,
    next_item_targets,
    sample_candidates,
)
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import build_projector
from bt_tf.serving import export as ex
from bt_tf.training.config import TrainConfig
from bt_tf.training.trainer import make_model

HR10 = "factorized_top_k/top_10_categorical_accuracy"


def _histories(num_users, length, vocab, seed, min_len=0):
    """Right-padded random histories of lengths min_len..length (incl. 0 and 1)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, length + 1, size=num_users)
    items = rng.integers(NUM_RESERVED, vocab, size=(num_users, length)).astype(np.int32)
    items[np.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
    return items, lengths


# --------------------------------------------------------------------------
# Every position is a pair


def test_next_item_targets_by_hand():
    items = np.array(
        [
            [3, 5, 6, 0, 0],  # n = 3: queries at t = 0, 1 (targets 5, 6); t = 2 has no next
            [4, 5, 0, 0, 0],  # n = 2: one query
            [7, 0, 0, 0, 0],  # n = 1: none
            [0, 0, 0, 0, 0],  # empty
            [3, OOV_ID, 6, 7, 8],  # full; the OOV is a query input but never a target
        ],
        np.int32,
    )
    targets, valid = next_item_targets(tf.constant(items))
    np.testing.assert_array_equal(
        valid,
        [
            [1, 1, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
        ],
    )
    np.testing.assert_array_equal(
        targets,
        [
            [5, 6, 0, 0, 0],
            [5, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 6, 7, 8, 0],
        ],
    )
    assert targets.dtype == tf.int32


def test_next_item_targets_count_n_minus_1_pairs_per_user():
    items, lengths = _histories(300, 12, 40, seed=0)
    targets, valid = next_item_targets(tf.constant(items))
    assert valid.numpy().sum(axis=1).tolist() == np.maximum(lengths - 1, 0).tolist()
    rows, cols = np.nonzero(valid.numpy())
    np.testing.assert_array_equal(targets.numpy()[rows, cols], items[rows, cols + 1])
    assert np.all(targets.numpy()[~valid.numpy()] == PAD_ID)


def test_sample_candidates_draws_valid_positions_without_replacement():
    pool = tf.constant([5, 0, 6, 7, 0, 9, 1, 2], tf.int32)  # valid: 5, 6, 7, 9 (0/1/2 reserved)
    ids, ok = sample_candidates(pool, 3, [1, 2])
    assert ids.shape == (3,) and ok.numpy().all()
    assert len(set(ids.numpy())) == 3 and set(ids.numpy()) <= {5, 6, 7, 9}
    again, _ = sample_candidates(pool, 3, [1, 2])
    np.testing.assert_array_equal(again, ids)  # same seed, same draw
    # More than the valid positions: every valid one, then invalid fillers.
    ids, ok = sample_candidates(pool, 6, [1, 2])
    assert sorted(ids.numpy()[ok.numpy()]) == [5, 6, 7, 9] and ok.numpy().sum() == 4
    # Capped at the pool size.
    assert sample_candidates(pool, 100, [1, 2])[0].shape == (8,)
    # The same draw under XLA (integer Philox bits), so --jit_compile changes nothing.
    xla = tf.function(lambda s: sample_candidates(pool, 3, s), jit_compile=True)
    np.testing.assert_array_equal(
        xla(tf.constant([1, 2]))[0], sample_candidates(pool, 3, [1, 2])[0]
    )


def test_sample_candidates_is_uniform_over_valid_positions():
    pool = tf.constant([3, 4, 5, 6, 0, 0, 7, 0], tf.int32)  # 5 valid positions
    draw = tf.function(lambda seed: sample_candidates(pool, 2, seed)[0])
    drawn = np.concatenate([draw(tf.constant([s, 7], tf.int64)).numpy() for s in range(2000)])
    counts = np.bincount(drawn, minlength=8)[3:]
    # Each valid position is drawn with probability 2/5: 800 of 2000 (sd ~22).
    np.testing.assert_allclose(counts, 800, atol=90)
    assert np.all(drawn >= NUM_RESERVED)


# --------------------------------------------------------------------------
# Causal queries


def _causal_encoder(kind="transformer", pooling="last", dim=8, vocab=40, length=8, seed=0):
    tf.keras.utils.set_random_seed(seed)
    return SequenceEncoder(
        vocab, max_len=length, dim=dim, num_blocks=1, num_heads=2, dropout=0.0,
        kind=kind, pooling=pooling, causal=True,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_the_query_at_t_does_not_see_later_items(kind):
    model = DualEncoderModel(_causal_encoder(kind, "mean"), top_k=None)
    items = np.array([[3, 5, 6, 7, 8, 0, 0, 0]], np.int32)
    later = items.copy()
    later[0, 3] = 20  # perturb position 3
    terms = model.retrieval_terms(items)
    moved = model.retrieval_terms(later)
    q, q2 = terms.queries.numpy()[0], moved.queries.numpy()[0]
    np.testing.assert_allclose(q2[:3], q[:3], atol=1e-6)  # queries before the change: same
    assert np.abs(q2[3:5] - q[3:5]).max() > 1e-4  # from position 3 on: changed
    # The targets move with the history: query 2 now predicts item 20.
    assert terms.targets.numpy()[0, 2] == 7 and moved.targets.numpy()[0, 2] == 20
    # The user embedding (export, probes) is the query at the last real position.
    np.testing.assert_allclose(model(items).numpy()[0], q[4], atol=1e-6)


def test_train_builds_a_causal_de_and_a_bidirectional_bt():
    de = make_model(TrainConfig.from_settings(dict(model="de", dim=8, temperature=0.3)), 20)
    assert isinstance(de, DualEncoderModel) and de.encoder.causal
    assert (de.temperature, de.logq_correction, de.num_candidates) == (0.3, True, None)
    joint = make_model(TrainConfig.from_settings(dict(model="bt+de", dim=8, de_candidates=7)), 20)
    assert isinstance(joint, JointModel) and joint.encoder.causal and joint.num_candidates == 7
    bt = make_model(TrainConfig.from_settings(dict(model="bt", dim=8, projector="8")), 20)
    assert not bt.encoder.causal
    # What export/evaluate rebuild from config.json: the same mode.
    assert TrainConfig.from_settings(dict(model="de")).encoder_kwargs(20)["causal"] is True
    assert TrainConfig.from_settings(dict(model="bt")).encoder_kwargs(20)["causal"] is False


def test_de_needs_a_causal_query_tower():
    bidirectional = SequenceEncoder(20, max_len=4, dim=4, num_blocks=1)
    with pytest.raises(ValueError, match="causal=True"):
        DualEncoderModel(bidirectional)


# --------------------------------------------------------------------------
# The loss, by hand


def _hand_model(temperature=1.0, **kwargs):
    """A DE whose query at t is the embedding of item t (bag kind, "last" pooling).

    Query embeddings: e3 = [1, 0], e4 = [0, 1], e5 = [1, 1]; candidate
    embeddings: c5 = [1, 0], c6 = [0, 1]; every other row 0.
    """
    encoder = SequenceEncoder(
        8, max_len=4, dim=2, kind="mean", pooling="last", dropout=0.0, causal=True
    )
    model = DualEncoderModel(encoder, temperature=temperature, top_k=None, **kwargs)
    model(tf.zeros([1, 4], tf.int32))
    model.item_embeddings()
    table = np.zeros([8, 2], np.float32)
    table[3:6] = [[1, 0], [0, 1], [1, 1]]
    encoder.item_embedding.set_weights([table])
    table = np.zeros([8, 2], np.float32)
    table[5:7] = [[1, 0], [0, 1]]
    model.item_tower.embedding.set_weights([table])
    return model


# Queries (user, t) -> target: (0, 0) e3 -> 5, (0, 1) e5 -> 6, (1, 0) e4 -> 5; row 2
# (one item) and all padding give none. Candidates: the targets 5, 6, 5 (all drawn).
HAND_ITEMS = np.array([[3, 5, 6, 0], [4, 5, 0, 0], [7, 0, 0, 0]], np.int32)


def _loss(model, items=HAND_ITEMS):
    return float(model.compute_loss({ITEMS: items}))


def test_sampled_softmax_by_hand_with_accidental_hits_removed():
    # (0, 0): q = [1, 0]; positive c5: 1; negatives 5 (hit), 6: 0, 5 (hit) -> log(1 + e^-1)
    # (0, 1): q = [1, 1]; positive c6: 1; negatives 5: 1, 6 (hit), 5: 1   -> log 3
    # (1, 0): q = [0, 1]; positive c5: 0; negatives 6: 1                  -> log(1 + e)
    expected = (np.log1p(np.exp(-1)) + np.log(3) + np.log1p(np.e)) / 3
    assert expected == pytest.approx(0.908379, abs=1e-6)
    assert _loss(_hand_model()) == pytest.approx(expected, abs=1e-6)
    # Temperature 0.5 doubles every score.
    expected = (np.log1p(np.exp(-2)) + np.log(3) + np.log1p(np.exp(2))) / 3
    assert _loss(_hand_model(temperature=0.5)) == pytest.approx(expected, abs=1e-6)
    # Padding, the one-item row and more padding columns change nothing.
    wider = np.pad(HAND_ITEMS, [(0, 1), (0, 0)])
    assert _loss(_hand_model(), wider) == pytest.approx(_loss(_hand_model()), abs=1e-6)


def test_sampled_softmax_by_hand_keeping_accidental_hits():
    # Every drawn candidate stays a negative, the positive's duplicates too.
    e = np.e
    ce = [
        np.log(1 * e + e + 1 + e) - 1,  # (0, 0): positive 1; negatives 1, 0, 1
        np.log(e + e + e + e) - 1,  # (0, 1): positive 1; negatives 1, 1, 1
        np.log(1 + 1 + e + 1) - 0,  # (1, 0): positive 0; negatives 0, 1, 0
    ]
    model = _hand_model(remove_accidental_hits=False)
    assert _loss(model) == pytest.approx(np.mean(ce), abs=1e-6)


def test_sampled_softmax_by_hand_with_logq_correction():
    # Q(5) = 2/3, Q(6) = 1/3 (the pool's valid targets 5, 6, 5); every logit - log Q.
    ce = [
        np.log1p(2 / np.e),  # (0, 0): [1 - log(2/3), 0 - log(1/3)]
        np.log(2),  # (0, 1): [1 - log(1/3), 1 - log(2/3), 1 - log(2/3)]
        np.log1p(2 * np.e),  # (1, 0): [0 - log(2/3), 1 - log(1/3)]
    ]
    model = _hand_model(logq_correction=True)
    assert _loss(model) == pytest.approx(np.mean(ce), abs=1e-6)


def test_fewer_candidates_are_a_subset_of_the_pool():
    # One candidate: each query's loss is log(1 + e^(neg - pos)) or 0 (a hit or no
    # negative), whichever target was drawn; the mean is one of three values.
    model = _hand_model(num_candidates=1)
    drawn_5 = (0 + np.log1p(np.exp(0)) + 0) / 3  # only (0, 1) has the negative c5: [1, 1]
    drawn_6 = (np.log1p(np.exp(-1)) + 0 + np.log1p(np.e)) / 3
    assert min(abs(_loss(model) - v) for v in (drawn_5, drawn_6)) < 1e-6


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


def _planted(num_users, seed):
    """Chains: a random first item, then each next item is a fixed permutation of the last."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, size=num_users)
    items = np.zeros((num_users, LENGTH), np.int32)
    items[:, 0] = rng.integers(NUM_RESERVED, VOCAB, size=num_users)
    for t in range(1, LENGTH):
        items[:, t] = _SUCCESSOR[items[:, t - 1] - NUM_RESERVED]
    items[np.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD_ID
    return {ITEMS: items}


def _encoder(dim=16, seed=0):
    return _causal_encoder("transformer", "last", dim=dim, vocab=VOCAB, length=LENGTH, seed=seed)


def test_de_learns_a_planted_next_item_rule_and_beats_chance_in_hr_at_10():
    train = tf.data.Dataset.from_tensor_slices(_planted(1024, seed=10)).batch(64)
    test = tf.data.Dataset.from_tensor_slices(_planted(256, seed=11)).batch(64)
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
    items = _planted(5, seed=0)[ITEMS]
    assert model(items).shape == (5, 8)
    np.testing.assert_allclose(model(items), model.encoder(items), atol=1e-6)
    assert model.predict(items, verbose=0).shape == (5, 8)
    assert model.item_embeddings().shape == (VOCAB, 8)
    with pytest.raises(ValueError, match="vocab_size"):
        DualEncoderModel(_encoder(), vocab_size=VOCAB + 1)


def test_batches_without_items_are_rejected_with_a_clear_message():
    model = DualEncoderModel(_encoder(dim=8))
    model.compile(optimizer="sgd")
    items = _planted(8, seed=0)[ITEMS]
    with pytest.raises(ValueError, match="'items'"):
        model.fit(tf.data.Dataset.from_tensors({"prefix": items}), verbose=0)


def test_export_round_trip_serves_the_trained_towers(tmp_path):
    model = DualEncoderModel(_encoder(dim=8), temperature=0.2, top_k=None)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    model.fit(tf.data.Dataset.from_tensors(_planted(64, seed=5)), epochs=2, verbose=0)
    vocab = list(RESERVED_TOKENS) + [f"m{i}" for i in range(NUM_RESERVED, VOCAB)]
    path = ex.export_encoder(
        model.encoder, vocab, str(tmp_path / "export"), max_len=LENGTH,
        item_embeddings=model.item_embeddings().numpy(), k=5,
    )  # fmt: skip
    loaded = ex.load_export(path)
    items = _planted(4, seed=6)[ITEMS]
    raw = np.where(items == PAD_ID, "", np.array(vocab, object)[items]).astype(str)
    served = loaded.signatures["serving_default"](item_ids=tf.constant(raw))["user_embedding"]
    user = model(items).numpy()
    np.testing.assert_allclose(served.numpy(), user, atol=1e-5)
    top = loaded.signatures["recommend"](item_ids=tf.constant(raw))
    table = model.item_embeddings().numpy()[NUM_RESERVED:]
    want = np.argsort(-(user @ table.T), axis=1, kind="stable")[:, :5]
    got = top["item_ids"].numpy().astype(str)
    assert got.tolist() == [[vocab[NUM_RESERVED + j] for j in row] for row in want]


# --------------------------------------------------------------------------
# JointModel


def _joint_batches(num_users, seed):
    data = _planted(num_users, seed)
    view2 = data[ITEMS].copy()
    rng = np.random.default_rng(seed)
    view2[(rng.random(view2.shape) < 0.3) & (view2 != PAD_ID)] = MASK_ID
    return {**data, VIEW1: data[ITEMS], VIEW2: view2}


def _joint(bt_weight, dim=8, seed=0, **kwargs):
    return JointModel(
        _encoder(dim=dim, seed=seed),
        build_projector("16-8"),
        bt_weight=bt_weight,
        lambd=0.05,
        temperature=0.5,
        **kwargs,
    )


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
    items = _planted(3, seed=0)[ITEMS]
    assert model(items).shape == (3, 8) and model.item_embeddings().shape == (VOCAB, 8)
    with pytest.raises(ValueError, match="view1"):
        model.fit(tf.data.Dataset.from_tensors(_planted(8, seed=0)), verbose=0)


def _tower_weights(model):
    return [v.numpy() for v in model.encoder.weights + model.item_tower.weights]


def test_joint_model_with_bt_weight_zero_is_the_dual_encoder():
    batch = _joint_batches(32, seed=4)
    data = tf.data.Dataset.from_tensors(batch)
    de = DualEncoderModel(_encoder(dim=8, seed=1), temperature=0.5)
    joint = _joint(bt_weight=0.0, seed=2)
    for model in (de, joint):
        model(batch[ITEMS][:1])
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

    User 2 has one item (no query), user 4 an OOV target, users 0 and 5 the
    same history (accidental hits), and 5 candidates are drawn among the ~30
    valid positions, so the shared draw, the masking and the global count of
    queries are all exercised.
    """
    data = _joint_batches(7, seed=7)
    items = data[ITEMS]
    items[2, 1:] = PAD_ID
    items[4, 1] = OOV_ID
    items[5] = items[0]
    data[VIEW1] = items
    return data


def _make(kind, global_negatives=True, num_candidates=5):
    common = dict(temperature=0.5, global_negatives=global_negatives, num_candidates=num_candidates)
    if kind == "de":
        return DualEncoderModel(_encoder(dim=8, seed=0), **common)
    if kind == "de_logq":
        return DualEncoderModel(_encoder(dim=8, seed=0), logq_correction=True, **common)
    common.pop("temperature")  # _joint sets the same 0.5
    return _joint(bt_weight=0.5, seed=0, **common)


def _under(strategy, kind, data, initial=None, global_negatives=True, num_candidates=5):
    with strategy.scope():
        model = _make(kind, global_negatives, num_candidates)
        model(data[ITEMS][:2])
        model.item_embeddings()
        if kind == "joint":
            model.project(data[VIEW1][:2])
        if initial is not None:
            model.set_weights(initial)
        # The BT gradients are much larger than the DE ones: a smaller step
        # keeps the joint update in a range where float32 round-off is < TOL.
        model.compile(optimizer=tf.keras.optimizers.SGD(0.02 if kind == "joint" else 0.5))
    return model


def _network_weights(model):
    extra = model.projector.weights if isinstance(model, JointModel) else []
    return [v.numpy() for v in model.encoder.weights + model.item_tower.weights + extra]


# The joint variant (~20 s: synchronized batch norm and BT all-reduces on top)
# checks that only the BT part is divided by the replica count; de_logq (~10 s) is de
# with the popularity correction. The default suite runs de.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "kind", ["de", pytest.param("de_logq", marks=SLOW), pytest.param("joint", marks=SLOW)]
)
def test_fit_and_evaluate_on_two_replicas_equal_one_device(kind, two_replicas):
    data = _replica_data()
    dataset = tf.data.Dataset.from_tensors(data).repeat(2)  # two steps: two candidate draws
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
        evaluated = model.evaluate(dataset, verbose=0, return_dict=True) if kind != "joint" else {}
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


def test_replicas_with_batches_of_different_widths_equal_one_padded_batch(two_replicas):
    """Length-bucketed input gives each replica its own width; the loss is that of
    one device on the same rows, padded to the widest (pads are never queries or
    candidates)."""
    data = _replica_data()[ITEMS]  # [7, L]
    narrow = data[4:, :3].copy()  # replica 1: 3 users cut to width 3
    narrow[narrow == OOV_ID] = NUM_RESERVED
    padded = data.copy()
    padded[4:] = PAD_ID
    padded[4:, :3] = narrow
    initial = _under(tf.distribute.get_strategy(), "de", {ITEMS: padded}).get_weights()

    def per_replica(context):  # one pipeline; its replicas take its batches in turn
        ds = tf.data.Dataset.from_tensors({ITEMS: data[:4]})
        return ds.concatenate(tf.data.Dataset.from_tensors({ITEMS: narrow}))

    two = _under(two_replicas, "de", {ITEMS: padded}, initial)
    got = two.evaluate(
        two_replicas.distribute_datasets_from_function(per_replica),
        steps=1,
        verbose=0,
        return_dict=True,
    )
    one = _under(tf.distribute.OneDeviceStrategy("/cpu:0"), "de", {ITEMS: padded}, initial)
    want = one.evaluate(tf.data.Dataset.from_tensors({ITEMS: padded}), verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(want["loss"], rel=TOL, abs=TOL)


def test_per_replica_negatives_would_change_the_loss(two_replicas):
    """The teeth of the test above: candidates from each replica's own rows only.

    One candidate per user (the default): 7 on one device, 4 or 3 per replica
    when each replica draws from its own rows.
    """
    data = _replica_data()
    batch = tf.data.Dataset.from_tensors(data)
    initial = _under(tf.distribute.get_strategy(), "de", data).get_weights()
    one = _under(
        tf.distribute.OneDeviceStrategy("/cpu:0"), "de", data, initial, num_candidates=None
    )
    local = _under(two_replicas, "de", data, initial, global_negatives=False, num_candidates=None)
    loss_one = one.evaluate(batch, verbose=0, return_dict=True)["loss"]
    loss_local = local.evaluate(batch, verbose=0, return_dict=True)["loss"]
    # Fewer negatives per query: a clearly smaller cross-entropy.
    assert loss_local < loss_one - 0.1, (loss_one, loss_local)


# --------------------------------------------------------------------------
# The full softmax (SASRec+), the catalog-sampled softmax and tied embeddings


def _full_softmax_expected(temperature):
    """Hand cross-entropies of the three `HAND_ITEMS` queries against every real item
    3..7 (candidate rows: c5 = [1, 0], c6 = [0, 1], the others 0), scores / temperature:
    (0, 0) q = [1, 0], target 5: scores 0, 0, 1, 0, 0;
    (0, 1) q = [1, 1], target 6: scores 0, 0, 1, 1, 0;
    (1, 0) q = [0, 1], target 5: scores 0, 0, 0, 1, 0."""
    a = 1.0 / temperature
    return (
        (np.log(np.exp(a) + 4) - a) + (np.log(2 * np.exp(a) + 3) - a) + np.log(np.exp(a) + 4)
    ) / 3


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_full_softmax_by_hand_over_every_real_item(temperature):
    expected = _full_softmax_expected(temperature)
    if temperature == 1.0:
        assert expected == pytest.approx(1.31408, abs=1e-5)
    model = _hand_model(temperature, loss="full_softmax")
    assert _loss(model) == pytest.approx(expected, abs=1e-5)
    # Reserved ids (pad, mask, OOV) are never a class: huge candidate rows change nothing.
    table = model.item_tower.embedding.get_weights()[0]
    table[:NUM_RESERVED] = 50.0
    model.item_tower.embedding.set_weights([table])
    assert _loss(model) == pytest.approx(expected, abs=1e-5)


def test_sampled_softmax_over_catalog_draws_by_hand_with_logq():
    # Popularity draws with Q(i) ∝ count(i) + 1 over the real items 3..7.
    counts = np.array([0, 0, 0, 7, 0, 3, 1, 0], np.float64)
    model = _hand_model(loss="sampled_softmax", negatives="popularity", item_counts=counts,
                        num_negatives=6)  # fmt: skip
    q_prob = np.array([0, 0, 0, 8, 1, 4, 2, 1]) / 16.0
    np.testing.assert_allclose(np.exp(model.log_q.numpy()), q_prob, atol=1e-6)
    drawn = model.draw_negatives(model._sample_seed(training=False)).numpy()
    assert drawn.shape == (6,) and drawn.min() >= NUM_RESERVED
    queries = {(0, 0): ([1, 0], 5), (0, 1): ([1, 1], 6), (1, 0): ([0, 1], 5)}
    candidates = np.zeros([8, 2])
    candidates[5:7] = [[1, 0], [0, 1]]
    total = 0.0
    for q, target in queries.values():
        positive = candidates[target] @ q - np.log(q_prob[target])
        negative = [candidates[i] @ q - np.log(q_prob[i]) for i in drawn if i != target]
        total += np.logaddexp.reduce([positive, *negative]) - positive
    assert _loss(model) == pytest.approx(total / 3, abs=1e-5)
    # Over many steps the draws follow Q (never a reserved id).
    seeds = [tf.constant([0, step], tf.int64) for step in range(300)]
    many = np.concatenate([model.draw_negatives(s).numpy() for s in seeds])
    share = np.bincount(many, minlength=8) / many.size
    np.testing.assert_allclose(share, q_prob, atol=0.02)
    uniform = _hand_model(loss="sampled_softmax", num_negatives=6)
    many = np.concatenate([uniform.draw_negatives(s).numpy() for s in seeds])
    np.testing.assert_allclose(np.bincount(many, minlength=8)[3:] / many.size, 0.2, atol=0.02)
    assert np.bincount(many, minlength=8)[:NUM_RESERVED].sum() == 0


def test_popularity_negatives_need_counts():
    with pytest.raises(ValueError, match="needs item_counts"):
        _hand_model(loss="sampled_softmax", negatives="popularity")
    with pytest.raises(ValueError, match="loss='softmax' is not one of"):
        _hand_model(loss="softmax")


def test_tied_item_embeddings_are_one_table_trained_by_both_sides(tmp_path):
    encoder = SequenceEncoder(VOCAB, max_len=6, dim=8, num_blocks=1, causal=True)
    model = DualEncoderModel(encoder, tie_embeddings=True, loss="full_softmax", top_k=None)
    items, _ = _histories(8, 6, VOCAB, seed=0, min_len=2)
    model(items)
    assert model.item_tower.embedding is encoder.item_embedding
    np.testing.assert_array_equal(model.item_embeddings(), encoder.item_embedding.embeddings)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.5))
    before = encoder.item_embedding.embeddings.numpy().copy()
    model.fit({ITEMS: items}, batch_size=8, epochs=1, verbose=0)
    after = encoder.item_embedding.embeddings.numpy()
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(model.item_embeddings(), after)
    # One variable: the table is checkpointed once (under the encoder).
    assert sum(v is encoder.item_embedding.embeddings for v in model.trainable_variables) == 1
    with pytest.raises(ValueError, match="pass no item_tower"):
        DualEncoderModel(encoder, ItemTower(VOCAB, 8), tie_embeddings=True)


def test_config_resolves_auto_loss_by_the_logits_size():
    config = TrainConfig(batch_size=64)  # max_len 200
    assert config.resolved_de_loss(3_700) == "full_softmax"  # ML-1M: 190 MB of logits
    assert config.resolved_de_loss(50_000) == "sampled_softmax"  # 2.6 GB
    assert TrainConfig(de_loss="in_batch").resolved_de_loss(50) == "in_batch"
    model = make_model(TrainConfig(model="de", de_loss="full_softmax"), VOCAB)
    assert model.loss_kind == "full_softmax" and model.item_tower.tied


def test_drop_last_item_keeps_every_query_with_a_target():
    items = tf.constant([[3, 4, 5, 0], [3, 4, 5, 6], [7, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(
        drop_last_item(items), [[3, 4, 0, 0], [3, 4, 5, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    # The valid queries (positions with a next item) are exactly the real positions left.
    _, valid = next_item_targets(items)
    np.testing.assert_array_equal(valid, drop_last_item(items).numpy() != PAD_ID)
