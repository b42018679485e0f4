"""Frozen user embeddings of a whole split, with the features downstream tasks need."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from bt_tf import input as bt_input


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
        artifact_dir: preprocessing output (see `bt_tf.input`).
        split: "train", "eval" or "test".
        batch_size: users per forward pass.
        max_len: history width (default: the artifact's max_len).
        keep: batch keys (see `bt_tf.input`) to return beside the embeddings,
            e.g. ("future_genre_ids", "future_item_ids", "items"); ragged
            features come back padded with 0.

    Returns:
        (embeddings float32 [n, d], {key: np.ndarray [n, ...]}).
    """
    ds = bt_input.make_dataset(
        artifact_dir, split, batch_size, max_len=max_len, shuffle=False, repeat=False
    )
    forward = tf.function(
        lambda items: encoder(items, training=False),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    embeddings, kept = [], {k: [] for k in keep}
    for batch in ds:
        embeddings.append(forward(batch[bt_input.ITEMS]).numpy())
        for key in keep:
            kept[key].append(_to_numpy(batch[key]))
    if not embeddings:
        raise ValueError(f"split {split!r} of {artifact_dir} has no users")
    return np.concatenate(embeddings).astype(np.float32), {k: _concat(v) for k, v in kept.items()}
