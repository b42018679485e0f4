"""Frozen user embeddings of a whole split, with the features downstream tasks need.

Inference batches are sorted by history length and cut to their longest
history (`embed_items`): with real histories (ML-1M: median 79 of 200) most
batches are far narrower than ``max_len``, and the encoder masks padding, so
the embeddings are those of fixed-width batches (up to float round-off) and
come back in file order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from bt_tf.data import dataset
from bt_tf.features import PAD_ID


def _to_numpy(value) -> np.ndarray:
    """Tensor -> numpy; ragged lists are flattened per user and padded with 0."""
    if isinstance(value, tf.RaggedTensor):
        if value.ragged_rank > 1:
            value = value.merge_dims(1, -1)
        value = value.to_tensor(default_value=tf.zeros([], value.dtype))
    return value.numpy()


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenates batches whose second dimension may differ (ragged -> padded)."""
    if parts[0].ndim < 2:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    padded = [np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
    return np.concatenate(padded)


def _forward(encoder):
    return tf.function(
        lambda items: encoder(items, training=False),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )


def history_widths(items: np.ndarray) -> np.ndarray:
    """Per row of right-padded ``items`` ``[n, L]``: last real position + 1 (0 if empty)."""
    real = np.asarray(items) != PAD_ID
    if real.shape[1] == 0:
        return np.zeros(real.shape[0], np.int64)
    last = real.shape[1] - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 0)


def embed_items(
    encoder, items: np.ndarray, *, batch_size: int = 512, multiple: int = 8, forward=None
) -> np.ndarray:
    """``encoder(items, training=False)`` of right-padded ``items`` ``[n, L]``, by length.

    Rows are sorted by history length (stable), cut into batches of
    ``batch_size``, and each batch is fed only up to its longest history
    (rounded up to a multiple of ``multiple``, at most ``L``). The encoder
    masks padding, so trailing padding columns change nothing but the cost.

    Args:
        encoder: callable ``encoder(items [B, W] int32, training=False) -> [B, d]``.
        items: int ``[n, L]`` item ids right-padded with ``PAD_ID``.
        batch_size: users per forward pass.
        multiple: widths are rounded up to this (fewer distinct shapes).
        forward: an already traced ``tf.function`` of ``encoder`` (optional).

    Returns:
        float32 ``[n, d]`` in the row order of ``items``.
    """
    items = np.asarray(items)
    if items.ndim != 2:
        raise ValueError(f"items must be [n, L], got shape {items.shape}")
    forward = forward or _forward(encoder)
    widths = history_widths(items)
    order = np.argsort(widths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(widths[rows[-1]])  # sorted: the batch's longest
        width = max(1, min(items.shape[1], -(-width // multiple) * multiple))
        emb = forward(tf.constant(items[rows, :width], tf.int32)).numpy()
        if out is None:
            out = np.zeros((len(items), emb.shape[1]), np.float32)
        out[rows] = emb
    if out is None:
        raise ValueError("no users to embed")
    return out


def embed_split(
    encoder,
    artifact_dir: str,
    split: str,
    *,
    batch_size: int = 512,
    max_len: int | None = None,
    keep: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embeds every user of `split` in file order (deterministic).

    Args:
        encoder: callable `encoder(items [B, L] int32, training=False) -> [B, d]`.
        artifact_dir: preprocessing output (see `bt_tf.data.dataset`).
        split: "train", "eval" or "test".
        batch_size: users per forward pass.
        max_len: history width (default: the artifact's max_len).
        keep: batch keys (see `bt_tf.data.dataset`) to return beside the embeddings,
            e.g. ("future_genre_ids", "future_item_ids", "items"); ragged
            features come back padded with 0.

    Returns:
        (embeddings float32 [n, d], {key: np.ndarray [n, ...]}), users in
        file order; the forward passes run on length-sorted batches
        (`embed_items`).
    """
    outputs = list(dict.fromkeys([dataset.ITEMS, *keep]))
    ds = dataset.make_dataset(
        artifact_dir, split, batch_size, max_len=max_len, shuffle=False, outputs=outputs
    )
    items, kept = [], {k: [] for k in keep}
    for batch in ds:
        items.append(batch[dataset.ITEMS].numpy())
        for key in keep:
            kept[key].append(_to_numpy(batch[key]))
    if not items:
        raise ValueError(f"split {split!r} of {artifact_dir} has no users")
    embeddings = embed_items(encoder, np.concatenate(items), batch_size=batch_size)
    return embeddings, {k: _concat(v) for k, v in kept.items()}
