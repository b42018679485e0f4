"""User-sequence encoders and the Barlow Twins projector.

`SequenceEncoder` maps a right-padded batch of item ids `[batch, length]`
(0 = padding, 1 = mask, 2 = out-of-vocabulary, real items >= 3; see
`bt_tf.features`) to one user vector `[batch, dim]`. The same class is the BT
backbone, the query tower of the dual-encoder baseline and what gets exported;
its item table (`encoder.item_embedding`) is reused by the baseline and the
liked-item probe.

Causal mode (`causal=True`, the dual encoder's query tower): position t sees
only the items at positions <= t, and `encoder(items, per_position=True)`
gives one user vector per position `[batch, length, dim]` (the user after
their first t + 1 items), so a sequential retrieval model can train on every
prefix of a history in one pass (SASRec-style). `encoder(items)` is then the
vector at the last real position, i.e. exactly what the per-position output
holds there. The Barlow Twins backbone stays bidirectional (`causal=False`):
its loss compares two views of the WHOLE history and never predicts an item
of the sequence from the sequence, so there is nothing to hide from a
position, and attending in both directions gives every position the full
context for the one summary vector BT learns.

`build_projector` builds the BT projector MLP ("1024-1024-1024") whose batch
norm is synchronized across replicas under `tf.distribute`.
"""

from __future__ import annotations

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.features import PAD_ID

KINDS = ("transformer", "gru", "mean")
POOLINGS = ("mean", "last")
# Positional-table rows: counted from the first item ("start") or aligned on the last ("end").
POSITIONS = ("start", "end")


def _causal_pool(x: tf.Tensor, mask: tf.Tensor, pooling: str) -> tf.Tensor:
    """Per-position pooling of `x` `[B, L, D]` over the real positions `<= t`.

    "mean" is the cumulative mean of the real positions up to t; "last" is the
    state at t itself. Padded positions give zeros. Assumes right padding.
    """
    weights = tf.cast(mask, x.dtype)[:, :, tf.newaxis]  # [B, L, 1]
    if pooling == "mean":
        summed = tf.cumsum(x * weights, axis=1)
        out = tf.math.divide_no_nan(summed, tf.cumsum(weights, axis=1))
    else:
        out = x
    return out * weights


def _last_real(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """`x` `[B, L, D]` at each row's last real position (zeros for an all-padding row)."""
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)  # [B]
    picked = tf.gather(x, tf.maximum(lengths - 1, 0), axis=1, batch_dims=1)  # [B, D]
    return picked * tf.cast(lengths > 0, x.dtype)[:, tf.newaxis]


def _masked_pool(x: tf.Tensor, mask: tf.Tensor, pooling: str) -> tf.Tensor:
    """Pools `x` `[B, L, D]` over the real positions given by `mask` `[B, L]`.

    "mean" averages the real positions; "last" takes the last real position,
    which assumes right padding (real items are contiguous from position 0).
    A row with no real position pools to zeros (no NaN).
    """
    weights = tf.cast(mask, x.dtype)
    lengths = tf.reduce_sum(weights, axis=1)  # [B]
    if pooling == "mean":
        summed = tf.reduce_sum(x * weights[:, :, tf.newaxis], axis=1)
        return tf.math.divide_no_nan(summed, lengths[:, tf.newaxis])
    last = tf.maximum(tf.cast(lengths, tf.int32) - 1, 0)
    picked = tf.gather(x, last, axis=1, batch_dims=1)  # [B, D]
    return picked * tf.cast(lengths > 0, x.dtype)[:, tf.newaxis]


@tf.keras.utils.register_keras_serializable(package="bt_tf")
class TransformerBlock(tf.keras.layers.Layer):
    """Self-attention + feed-forward block with residuals, pre- or post-LN.

    Args:
        dim: model width D (input and output last dimension).
        num_heads: attention heads; `dim` must be divisible by it.
        ffn_dim: hidden width of the feed-forward network.
        dropout: dropout rate on attention weights and both residual branches.
        norm_first: True = pre-LN (LayerNorm before each sub-layer, as in
            GPT-2/SASRec variants; stable without warm-up), False = post-LN
            (original Transformer).
        activation: feed-forward activation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        activation: str = "gelu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}; pick a "
                "num_heads that divides dim (each head gets dim // num_heads)."
            )
        self.dim = dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.norm_first = norm_first
        self.activation = activation
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=dim // num_heads, dropout=dropout, name="mha"
        )
        self.ffn_hidden = tf.keras.layers.Dense(ffn_dim, activation=activation, name="ffn_hidden")
        self.ffn_out = tf.keras.layers.Dense(dim, name="ffn_out")
        self.norm1 = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.norm2 = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.drop1 = tf.keras.layers.Dropout(dropout)
        self.drop2 = tf.keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, training=False) -> tf.Tensor:
        """x: float `[B, L, D]`; attention_mask: bool `[B, L, L]`, True = may attend."""

        def attend(h):
            h = self.attention(h, h, attention_mask=attention_mask, training=training)
            return self.drop1(h, training=training)

        def feed_forward(h):
            return self.drop2(self.ffn_out(self.ffn_hidden(h)), training=training)

        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + feed_forward(self.norm2(x))
        x = self.norm1(x + attend(x))
        return self.norm2(x + feed_forward(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            num_heads=self.num_heads,
            ffn_dim=self.ffn_dim,
            dropout=self.dropout,
            norm_first=self.norm_first,
            activation=self.activation,
        )
        return config


@tf.keras.utils.register_keras_serializable(package="bt_tf")
class SequenceEncoder(tf.keras.layers.Layer):  # long __init__: checks every argument first
    """Item-id sequence → user vector.

    kind="transformer": item embedding + learned positional embedding →
        `num_blocks` `TransformerBlock`s whose attention ignores padded keys.
    kind="gru": item embedding → `num_blocks` stacked masked GRUs (order comes
        from the recurrence, no positional embedding).
    kind="mean": item embedding only (bag of items, order-free).
    The per-position states are then pooled over the real (non-pad) positions:
    `pooling="mean"` averages them, `pooling="last"` takes the last real one.
    Padding never influences the output; an all-padding row gives zeros.

    With `causal=True` the transformer's attention is also masked to keys at
    positions <= the query's (a GRU and the bag of items need no change: the
    recurrence runs left to right, and an item's own embedding sees nothing
    else), and the pooling is per position: the cumulative mean of the real
    states up to t ("mean") or the state at t ("last"). The output at position
    t therefore depends only on the items at positions 0..t.

    Args:
        vocab_size: item vocabulary size including the reserved ids 0/1/2.
        max_len: longest accepted sequence (size of the positional table);
            shorter inputs are fine, positions count from 0 at the left.
        dim: embedding and output width D.
        num_blocks: Transformer blocks / GRU layers (ignored for "mean").
        num_heads: attention heads (transformer only).
        dropout: dropout rate (embeddings, attention, residual branches, between GRUs).
        kind: "transformer", "gru" or "mean".
        pooling: "mean" or "last".
        ffn_dim: feed-forward width of the Transformer blocks; default 4 * dim.
        norm_first: pre-LN (True, with a final LayerNorm) or post-LN blocks.
        causal: position t sees only positions <= t (see above); the dual
            encoder's query tower. False (default): bidirectional, the BT backbone.
        positions: which positional-table row each item gets: ``"start"`` counts
            from the first item (row t for position t); ``"end"`` aligns every
            row's last real item on row ``max_len - 1`` (SASRec, whose left padding
            gives the most recent item the same position in every sequence). With
            ``"end"`` a causal output at t also depends on HOW MANY items follow t
            (not on which): train it as SASRec does, the last item a target only
            (`bt_tf.modeling.dual_encoder.drop_last_item`).
        scale_embeddings: multiply the item rows by ``sqrt(dim)`` before the
            positions are added (SASRec, after the Transformer): with a tied output
            table the rows stay small for the logits and large beside the positions.

    Call: `encoder(items, training=False)` with items int `[B, L]`, L <= max_len,
    right-padded with PAD_ID; returns float `[B, dim]`. With `causal=True`,
    `encoder(items, training=False, per_position=True)` returns float
    `[B, L, dim]`: row b, position t is the user vector of items[b, :t + 1]
    (zeros at padded positions); `encoder(items)` equals it at the last real
    position.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int = 200,
        dim: int = 64,
        num_blocks: int = 2,
        num_heads: int = 2,
        dropout: float = 0.1,
        kind: str = "transformer",
        pooling: str = "mean",
        ffn_dim: int | None = None,
        norm_first: bool = True,
        causal: bool = False,
        positions: str = "start",
        scale_embeddings: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r} is not one of {POSITIONS}.")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")
        if vocab_size <= PAD_ID + 1:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must count the reserved "
                "ids (pad, mask, OOV) plus the items, i.e. metadata.json's item vocab size."
            )
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.dim = dim
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.dropout = dropout
        self.kind = kind
        self.pooling = pooling
        self.ffn_dim = ffn_dim if ffn_dim is not None else 4 * dim
        self.norm_first = norm_first
        self.causal = bool(causal)
        self.positions = positions
        self.scale_embeddings = bool(scale_embeddings)

        self.item_embedding = tf.keras.layers.Embedding(vocab_size, dim, name="item_embedding")
        self.embedding_dropout = tf.keras.layers.Dropout(dropout)
        self.position_embedding = None
        self.blocks = []
        self.final_norm = None
        if kind == "transformer":
            self.position_embedding = tf.keras.layers.Embedding(
                max_len, dim, name="position_embedding"
            )
            self.blocks = [
                TransformerBlock(
                    dim, num_heads, self.ffn_dim, dropout, norm_first, name=f"block_{i}"
                )
                for i in range(num_blocks)
            ]
            if norm_first:
                self.final_norm = tf.keras.layers.LayerNormalization(
                    epsilon=1e-6, name="final_norm"
                )
        elif kind == "gru":
            self.blocks = [
                tf.keras.layers.GRU(dim, return_sequences=True, name=f"gru_{i}")
                for i in range(num_blocks)
            ]
            self.block_dropouts = [tf.keras.layers.Dropout(dropout) for _ in range(num_blocks)]

    @property
    def output_dim(self) -> int:
        return self.dim

    def call(self, items: tf.Tensor, training=False, per_position: bool = False) -> tf.Tensor:
        if per_position and not self.causal:
            raise ValueError(
                "per_position=True needs a causal encoder (SequenceEncoder(..., causal=True)): "
                "a bidirectional encoder's state at t has seen the items after t."
            )
        length = items.shape[1]
        if length is not None and length > self.max_len:
            raise ValueError(
                f"Got sequences of length {length} but the encoder was built with "
                f"max_len={self.max_len}; truncate the input or raise max_len."
            )
        mask = tf.not_equal(items, tf.cast(PAD_ID, items.dtype))  # [B, L]
        x = self.item_embedding(items)  # [B, L, D]
        if self.scale_embeddings:  # SASRec: item rows x sqrt(dim), positions as they are
            x = x * tf.cast(tf.sqrt(float(self.dim)), x.dtype)
        if self.kind == "transformer":
            x = x + self.position_embedding(self._position_ids(mask))
            x = self.embedding_dropout(x, training=training)
            # Queries may attend only to real keys. Padded query rows still see
            # the real keys (never NaN) and are dropped by the pooling.
            attention_mask = tf.logical_and(
                mask[:, tf.newaxis, :], tf.ones_like(mask)[:, :, tf.newaxis]
            )  # [B, L, L]: [b, query t, key s]
            if self.causal:
                width = tf.shape(items)[1]
                earlier = tf.linalg.band_part(tf.ones([width, width], tf.bool), -1, 0)  # s <= t
                attention_mask = tf.logical_and(attention_mask, earlier[tf.newaxis])
            for block in self.blocks:
                x = block(x, attention_mask=attention_mask, training=training)
            if self.final_norm is not None:
                x = self.final_norm(x)
        elif self.kind == "gru":
            x = self.embedding_dropout(x, training=training)
            for i, (gru, drop) in enumerate(zip(self.blocks, self.block_dropouts)):
                if i:
                    x = drop(x, training=training)
                x = gru(x, mask=mask, training=training)
        else:
            x = self.embedding_dropout(x, training=training)
        if not self.causal:
            return _masked_pool(x, mask, self.pooling)
        per_pos = _causal_pool(x, mask, self.pooling)
        return per_pos if per_position else _last_real(per_pos, mask)

    def _position_ids(self, mask: tf.Tensor) -> tf.Tensor:
        """`[B, L]` (or `[1, L]`) positional-table rows: from the left (`"start"`), or
        right-aligned so that each row's last real item is row ``max_len - 1`` (`"end"`,
        SASRec's left padding: the most recent item always has the same position).
        Padding positions are clipped to the table; they are masked anyway."""
        width = tf.shape(mask)[1]
        ids = tf.range(width)[tf.newaxis, :]
        if self.positions == "start":
            return ids
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1, keepdims=True)
        return tf.clip_by_value(ids + self.max_len - lengths, 0, self.max_len - 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            positions=self.positions,
            scale_embeddings=self.scale_embeddings,
            vocab_size=self.vocab_size,
            max_len=self.max_len,
            dim=self.dim,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            dropout=self.dropout,
            kind=self.kind,
            pooling=self.pooling,
            ffn_dim=self.ffn_dim,
            norm_first=self.norm_first,
            causal=self.causal,
        )
        return config
