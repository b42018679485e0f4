"""Per-user `tf.train.Example`s of a block, part files, and shards merged from them.

Each block writes its users' Examples, sorted by user id, to a part file
(length-prefixed (user, Example) pairs); each shard of a split is a streaming
merge of its parts, so reruns are byte-identical however the input was chunked.
"""

from __future__ import annotations

import dataclasses
import heapq
import posixpath
import struct
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from bt_tf import features as F
from pipelines import textio
from pipelines.config import PreprocessConfig

TOO_SHORT = "users_too_short_for_future"  # the stats key and counter of that drop


def cut(n: int, future_len: int, min_history_len: int, max_len: int) -> tuple[slice, slice]:
    """(history, future) slices of a sorted sequence of length n.

    The future is the last `future_len` interactions, shortened for short users
    so that the history keeps `min_history_len`; the history is truncated to
    the most recent `max_len` items.
    """
    k = min(future_len, n - min_history_len)
    return slice(max(0, n - k - max_len), n - k), slice(n - k, n)


def _add_ints(features, name: str, values) -> None:
    """Sets Feature `name` of `features` (an Example's feature map) in place: no copies."""
    field = features[name].int64_list
    field.SetInParent()  # present even when empty
    field.value.extend(values)


def _add_bytes(features, name: str, values: list[bytes]) -> None:
    field = features[name].bytes_list
    field.SetInParent()
    field.value.extend(values)


def _add_floats(features, name: str, values) -> None:
    field = features[name].float_list
    field.SetInParent()
    field.value.extend(values)


_HISTORY_FEATURES = (
    F.HISTORY_ITEM_IDS,
    F.HISTORY_RAW_ITEM_IDS,
    F.HISTORY_TIMESTAMPS,
    F.HISTORY_RATINGS,
    F.HISTORY_GENRE_IDS,
    F.HISTORY_GENRE_COUNTS,
)
_FUTURE_FEATURES = (
    F.FUTURE_ITEM_IDS,
    F.FUTURE_RAW_ITEM_IDS,
    F.FUTURE_TIMESTAMPS,
    F.FUTURE_RATINGS,
    F.FUTURE_GENRE_IDS,
    F.FUTURE_GENRE_COUNTS,
)


def write_part(path: str, records: list[tuple[bytes, bytes]]) -> None:
    """(user, serialized Example) records, in order, as length-prefixed pairs."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"".join(struct.pack("<II", len(k), len(v)) + k + v for k, v in records))


def read_part(path: str) -> Iterator[tuple[bytes, bytes]]:
    with textio.open_binary(path) as f:
        while head := f.read(8):
            key_size, value_size = struct.unpack("<II", head)
            yield f.read(key_size), f.read(value_size)


@dataclasses.dataclass(frozen=True)
class BlockExamples:
    """What a block gives: its users' (user id, serialized Example), sorted, and counts."""

    records: list[tuple[bytes, bytes]]
    interactions: int  # in the block as the k-core left it
    max_history_len: int
    too_short: int  # users dropped: fewer than min_history_len + 1 interactions


def _history_bounds(lengths: np.ndarray, config: PreprocessConfig):
    """`cut`, for all users at once: (history start, history stop) per user."""
    k = np.minimum(config.future_len, lengths - config.min_history_len)
    history_stop = lengths - k
    return np.maximum(0, history_stop - config.max_len), history_stop


def _interaction_columns(block: dict, tables: dict, catalog: np.ndarray) -> dict:
    """Per interaction of `block` (Python lists): vocab id, raw id, timestamp, rating,
    genre count; ``"genre_ids"`` flat, interaction i's from ``"genre_at"[i]``."""
    items = block["item"]
    genre_count = tables["genre_count"][items]
    genre_end = np.cumsum(genre_count)
    genre_rows = np.repeat(tables["genre_start"][items] - (genre_end - genre_count), genre_count)
    return {
        "vocab_id": tables["vocab_id"][items].tolist(),
        "raw_id": catalog[items].tolist(),
        "timestamp": block["timestamp"].tolist(),
        "rating": block["rating"].tolist(),
        "genre_count": genre_count.tolist(),
        "genre_ids": tables["genre_ids"][genre_rows + np.arange(len(genre_rows))].tolist(),
        "genre_at": np.concatenate([[0], genre_end]).tolist(),
    }


def _add_sequence(feats, names: tuple[str, ...], columns: dict, a: int, b: int) -> None:
    """Interactions [a, b) of `columns` as the six sequence features `names`."""
    _add_ints(feats, names[0], columns["vocab_id"][a:b])
    _add_bytes(feats, names[1], columns["raw_id"][a:b])
    _add_ints(feats, names[2], columns["timestamp"][a:b])
    _add_floats(feats, names[3], columns["rating"][a:b])
    genre_at = columns["genre_at"]
    _add_ints(feats, names[4], columns["genre_ids"][genre_at[a] : genre_at[b]])
    _add_ints(feats, names[5], columns["genre_count"][a:b])


def _example(user: bytes, start: int, n: int, h0: int, h1: int, columns: dict, attributes):
    """The Example of one user: interactions [start, start + n), history [h0, h1) of them."""
    example = tf.train.Example()
    feats = example.features.feature
    _add_bytes(feats, F.USER_ID, [user])
    _add_ints(feats, F.HISTORY_LENGTH, [h1 - h0])
    _add_sequence(feats, _HISTORY_FEATURES, columns, start + h0, start + h1)
    _add_sequence(feats, _FUTURE_FEATURES, columns, start + h1, start + n)
    for name, index in attributes:
        _add_ints(feats, F.ATTRIBUTE_PREFIX + name, [index])
    return example.SerializeToString(deterministic=True)


def _attribute_indices(attrs: dict, attributes: Iterable) -> list[tuple[str, int]]:
    """(name, class index or -1) for each (name, classes) of `attributes`."""
    out = []
    for name, classes in attributes:
        value = attrs.get(name)
        out.append((name, classes.index(value) if value in classes else -1))
    return out


def encode_block(
    block: dict, tables: dict, catalog: np.ndarray, attributes, config: PreprocessConfig
) -> BlockExamples:
    """A block as the k-core left it (at least one user) -> its users' Examples.

    `tables`: `blocks.item_tables`; `attributes`: [(name, [class, ...]), ...].
    """
    lengths = block["length"]
    history_start, history_stop = _history_bounds(lengths, config)
    columns = _interaction_columns(block, tables, catalog)
    starts = (np.cumsum(lengths) - lengths).tolist()
    user_attributes = block["attributes"]
    records, too_short = [], 0
    for user, n, start, h0, h1 in zip(
        block["user"].tolist(),
        lengths.tolist(),
        starts,
        history_start.tolist(),
        history_stop.tolist(),
    ):
        if n < config.min_history_len + 1:
            too_short += 1
            continue
        indices = _attribute_indices(user_attributes.get(user, {}), attributes)
        records.append((user, _example(user, start, n, h0, h1, columns, indices)))
    return BlockExamples(
        records=records,
        interactions=int(lengths.sum()),
        max_history_len=int(np.maximum(0, history_stop - history_start).max()),
        too_short=too_short,
    )


def merge_parts(parts: Iterable[str], path: str) -> int:
    """Merges sorted part files into the TFRecord file `path`, streaming; returns the count."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    readers = [read_part(part) for part in sorted(parts)]
    count = 0
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for _, serialized in heapq.merge(*readers, key=lambda record: record[0]):
            writer.write(serialized)
            count += 1
    return count
