"""Sequence encoders: padding never matters, causal mode, shapes, configs, projector layout."""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID
from bt_tf.modeling.encoders import SequenceEncoder, TransformerBlock
from bt_tf.modeling.projector import build_projector, parse_projector_spec

VOCAB = 40
KINDS_AND_POOLINGS = [(k, p) for k in ("transformer", "gru", "mean") for p in ("mean", "last")]


def _batch(length=20, seed=0):
    """Right-padded [4, length] batch: lengths 1, 7, length (full) and 12 with mask ids."""
    rng = np.random.default_rng(seed)
    items = np.full((4, length), PAD_ID, np.int64)
    for row, n in enumerate([1, 7, length, 12]):
        items[row, :n] = rng.integers(NUM_RESERVED, VOCAB, size=n)
    items[3, [2, 5]] = MASK_ID  # masked items are real positions, not padding
    return items


def _encoder(kind="transformer", pooling="mean", **kwargs):
    tf.keras.utils.set_random_seed(0)
    args = dict(max_len=30, dim=8, num_blocks=2, num_heads=2, dropout=0.0)
    args.update(kwargs)
    return SequenceEncoder(VOCAB, kind=kind, pooling=pooling, **args)


@pytest.mark.parametrize("kind,pooling", KINDS_AND_POOLINGS)
def test_output_shape_finite_and_padding_invariant(kind, pooling):
    encoder = _encoder(kind, pooling)
    items = _batch(20)
    out = encoder(items, training=False).numpy()
    assert out.shape == (4, 8)
    assert np.isfinite(out).all()
    assert np.abs(out[0]).max() > 0  # the length-1 row is a real vector, not zeros

    # More right padding (20 → 30 columns) changes nothing ...
    longer = np.pad(items, [(0, 0), (0, 10)], constant_values=PAD_ID)
    np.testing.assert_allclose(encoder(longer, training=False).numpy(), out, atol=1e-6)
    # ... and neither does having no padding at all: each row alone, unpadded.
    for row, n in enumerate([1, 7, 20, 12]):
        alone = encoder(items[row : row + 1, :n], training=False).numpy()
        np.testing.assert_allclose(alone[0], out[row], atol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_order_aware_kinds_see_order_and_mean_kind_does_not(kind):
    items = _batch(20)
    flipped = items.copy()
    flipped[1, :7] = items[1, :7][::-1]
    ordered = _encoder(kind)(items, training=False).numpy()
    again = _encoder(kind)(flipped, training=False).numpy()
    assert np.abs(ordered[1] - again[1]).max() > 1e-4
    bag = _encoder("mean")
    np.testing.assert_allclose(
        bag(items, training=False).numpy()[1], bag(flipped, training=False).numpy()[1], atol=1e-6
    )


def test_last_pooling_of_mean_kind_is_the_last_items_embedding():
    encoder = _encoder("mean", "last")
    items = _batch(20)
    out = encoder(items, training=False).numpy()
    table = encoder.item_embedding.embeddings.numpy()
    for row, n in enumerate([1, 7, 20, 12]):
        np.testing.assert_allclose(out[row], table[items[row, n - 1]], atol=1e-6)


def test_mean_kind_mean_pooling_averages_real_item_embeddings():
    encoder = _encoder("mean", "mean")
    items = _batch(20)
    out = encoder(items, training=False).numpy()
    table = encoder.item_embedding.embeddings.numpy()
    np.testing.assert_allclose(out[1], table[items[1, :7]].mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("kind,pooling", KINDS_AND_POOLINGS)
def test_causal_position_t_is_the_encoding_of_the_first_t_plus_1_items(kind, pooling):
    encoder = _encoder(kind, pooling, causal=True)
    items = _batch(20)
    lengths = [1, 7, 20, 12]
    per_position = encoder(items, training=False, per_position=True).numpy()
    assert per_position.shape == (4, 20, 8) and np.isfinite(per_position).all()
    for row, n in enumerate(lengths):
        for t in range(n):
            prefix = encoder(items[row : row + 1, : t + 1], training=False).numpy()[0]
            np.testing.assert_allclose(per_position[row, t], prefix, atol=1e-5)
        assert not per_position[row, n:].any()  # padded positions are zeros
    # The user vector is the one at the last real position.
    users = encoder(items, training=False).numpy()
    np.testing.assert_allclose(users, per_position[np.arange(4), np.array(lengths) - 1], atol=1e-6)


@pytest.mark.parametrize("kind,pooling", KINDS_AND_POOLINGS)
def test_causal_outputs_before_a_changed_item_do_not_change(kind, pooling):
    encoder = _encoder(kind, pooling, causal=True)
    items = _batch(20)
    later = items.copy()
    later[2, 9] = MASK_ID if items[2, 9] != MASK_ID else NUM_RESERVED  # row 2 is full
    a = encoder(items, training=False, per_position=True).numpy()
    b = encoder(later, training=False, per_position=True).numpy()
    np.testing.assert_allclose(b[2, :9], a[2, :9], atol=1e-6)
    np.testing.assert_allclose(b[[0, 1, 3]], a[[0, 1, 3]], atol=1e-6)  # other rows untouched
    assert np.abs(b[2, 9] - a[2, 9]).max() > 1e-4  # the changed position itself moves


def test_bidirectional_encoder_is_not_causal_and_refuses_per_position():
    """The BT backbone: with the same weights, position t attends to later items too."""
    items = _batch(20)
    bidirectional = _encoder("transformer", "mean")
    causal = _encoder("transformer", "mean", causal=True)
    bidirectional(items), causal(items)  # build both
    causal.set_weights(bidirectional.get_weights())  # same weights, only the mask differs
    later = items.copy()
    later[2, 19] = MASK_ID
    # The causal user vector of the first 19 items ignores item 19; the
    # bidirectional mean over the 20 states moves in every state, not only the last.
    np.testing.assert_allclose(
        causal(later[2:3, :19]).numpy(), causal(items[2:3, :19]).numpy(), atol=1e-6
    )
    assert np.abs(bidirectional(items).numpy()[2] - causal(items).numpy()[2]).max() > 1e-4
    with pytest.raises(ValueError, match="causal=True"):
        bidirectional(items, per_position=True)


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_pre_and_post_ln_and_all_padding_row(norm_first):
    encoder = _encoder("transformer", norm_first=norm_first)
    items = np.zeros((2, 10), np.int64)
    items[0, 0] = 5  # length 1; row 1 is all padding
    out = encoder(items, training=True).numpy()  # training path too (dropout 0)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], np.zeros(8))
    has_final_norm = any("final_norm" in w.name for w in encoder.weights)
    assert has_final_norm == norm_first


def test_dropout_is_active_only_in_training():
    encoder = _encoder("transformer", dropout=0.5)
    items = _batch(20)
    inference = encoder(items, training=False).numpy()
    np.testing.assert_array_equal(inference, encoder(items, training=False).numpy())
    assert np.abs(encoder(items, training=True).numpy() - inference).max() > 1e-3


def test_item_embedding_table_is_exposed():
    encoder = _encoder()
    encoder(_batch(20), training=False)
    assert isinstance(encoder.item_embedding, tf.keras.layers.Embedding)
    assert encoder.item_embedding.embeddings.shape == (VOCAB, 8)
    assert encoder.output_dim == 8


def test_too_long_input_and_bad_arguments_raise():
    encoder = _encoder(max_len=10)
    with pytest.raises(ValueError, match="max_len=10"):
        encoder(np.ones((1, 11), np.int64))
    with pytest.raises(ValueError, match="num_heads"):
        SequenceEncoder(VOCAB, dim=10, num_heads=3)
    with pytest.raises(ValueError, match="kind"):
        SequenceEncoder(VOCAB, kind="lstm")
    with pytest.raises(ValueError, match="pooling"):
        SequenceEncoder(VOCAB, pooling="max")


@pytest.mark.parametrize(
    "kind,pooling,causal",
    [(k, p, False) for k, p in KINDS_AND_POOLINGS[::2]]
    + [("transformer", "last", False), ("transformer", "mean", True), ("gru", "last", True)],
)
def test_sequence_encoder_config_round_trip(kind, pooling, causal):
    encoder = _encoder(kind, pooling, norm_first=False, ffn_dim=12, causal=causal)
    items = _batch(20)
    out = encoder(items, training=False).numpy()
    clone = SequenceEncoder.from_config(encoder.get_config())
    assert clone.get_config() == encoder.get_config()
    clone(items, training=False)
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(items, training=False).numpy(), out, atol=1e-6)
    # Also through Keras' generic (de)serialization of registered layers.
    again = tf.keras.layers.deserialize(tf.keras.layers.serialize(encoder))
    assert isinstance(again, SequenceEncoder) and again.get_config() == encoder.get_config()


def test_transformer_block_config_round_trip():
    block = TransformerBlock(8, 2, 16, dropout=0.2, norm_first=False, activation="relu")
    clone = TransformerBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    x = tf.random.stateless_normal([2, 5, 8], seed=[0, 1])
    mask = tf.ones([2, 5, 5], tf.bool)
    block(x, attention_mask=mask)
    clone(x, attention_mask=mask)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(
        clone(x, attention_mask=mask).numpy(), block(x, attention_mask=mask).numpy(), atol=1e-6
    )


def test_projector_layout_and_shape():
    projector = build_projector("32-16-24")
    out = projector(tf.random.stateless_normal([6, 8], seed=[2, 3]), training=True)
    assert out.shape == (6, 24)
    kinds = [type(layer).__name__ for layer in projector.layers]
    assert kinds == ["Dense", "BatchNormalization", "ReLU"] * 2 + ["Dense"]
    assert [layer.units for layer in projector.layers if hasattr(layer, "units")] == [32, 16, 24]
    assert all(not layer.use_bias for layer in projector.layers if hasattr(layer, "units"))
    bns = [layer for layer in projector.layers if "BatchNorm" in type(layer).__name__]
    assert all(bn.synchronized for bn in bns)
    assert not any(
        bn.synchronized for bn in build_projector("4-4", synchronized_bn=False).layers[1:2]
    )
    single = build_projector("16")
    assert [type(layer).__name__ for layer in single.layers] == ["Dense"]


@pytest.mark.parametrize("spec", ["", "1024-", "a-b", "64-0", "64--64"])
def test_bad_projector_spec_raises(spec):
    with pytest.raises(ValueError, match="1024-1024-1024"):
        parse_projector_spec(spec)


def test_end_positions_give_the_most_recent_item_the_last_row():
    encoder = SequenceEncoder(20, max_len=6, dim=4, num_blocks=1, dropout=0.0, positions="end")
    items = tf.constant([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7], [0, 0, 0, 0, 0]])
    mask = tf.not_equal(items, 0)
    np.testing.assert_array_equal(
        encoder._position_ids(mask), [[3, 4, 5, 5, 5], [1, 2, 3, 4, 5], [5, 5, 5, 5, 5]]
    )
    start = SequenceEncoder(20, max_len=6, dim=4, num_blocks=1, positions="start")
    np.testing.assert_array_equal(start._position_ids(mask), [[0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="positions='middle'"):
        SequenceEncoder(20, positions="middle")
