"""Preprocessing artifacts -> batched `tf.data.Dataset` (optionally with two augmented views).

Reads what `pipelines.preprocess` writes under an artifact dir ``D``
(DESIGN.md, "Data contract"): ``D/Split-<split>/*.tfrecord.gz`` (one
`tf.train.Example` per user), ``D/schema.pbtxt`` (parsing is driven by it),
``D/metadata.json`` and ``D/vocab/*.txt``.

Batch layout produced by `make_dataset` (``B`` = batch size):

=========================  ==========================  ===================================
key                        dtype / shape               meaning
=========================  ==========================  ===================================
``items``                  int32 ``[B, max_len]``      history item ids, oldest first,
                                                       the most recent ``max_len`` kept,
                                                       right-padded with ``PAD_ID`` (0)
``length``                 int32 ``[B]``               real items in ``items``
``history_*`` lists        ``[B, max_len]``            timestamps (int64), ratings (float32),
                                                       raw item ids (string, pad ``b""``),
                                                       aligned with ``items``
``history_genre_ids``      int64 ragged                ``[B, (length), (genres per item)]``
``future_item_ids`` etc.   ``[B, future_len]``         the first ``future_len`` future
                                                       interactions, right-padded
``future_length``          int32 ``[B]``               real items in the future lists
``future_genre_ids``       int64 ragged                ``[B, (future_length), (genres)]``
``user_id``                string ``[B]``              raw user id
``history_length``         int64 ``[B]``               as written by the pipeline
``attr_<name>``            int64 ``[B]``               class index, -1 = unknown
``view1``, ``view2``       like ``items``              only with ``augment_policy``
=========================  ==========================  ===================================

With length buckets (``make_dataset(bucket_boundaries=...)``) every
``max_len``-wide entry above is as wide as the batch's bucket instead
(``[B, None]`` in the element spec); the rest of the layout is unchanged.

A policy with ``substitute``/``insert`` draws correlated items from the item
co-occurrence table of the TRAIN split's histories (`cooccurrence_table`),
whichever split the dataset reads; it is built once per process and artifact dir.

The ``*_genre_counts`` features are folded into the ragged genre tensors.
Other features found in the schema are passed through (scalars as ``[B]``,
lists as ragged ``[B, None]``).
"""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from bt_tf import features as F
from bt_tf.data import augment
from bt_tf.features import FUTURE_LENGTH, ITEMS, LENGTH, VIEW1, VIEW2

# Ragged genre ids and the per-item counts that partition them.
_RAGGED_PAIRS = {
    F.HISTORY_GENRE_IDS: F.HISTORY_GENRE_COUNTS,
    F.FUTURE_GENRE_IDS: F.FUTURE_GENRE_COUNTS,
}
_DTYPES = {schema_pb2.INT: tf.int64, schema_pb2.FLOAT: tf.float32, schema_pb2.BYTES: tf.string}
_PADDING = {tf.int64: 0, tf.float32: 0.0, tf.string: b""}
_HISTORY_PREFIX = "history_"
_FUTURE_PREFIX = "future_"


def load_metadata(artifact_dir: str) -> dict:
    """``metadata.json`` of an artifact dir (max_len, future_len, vocab sizes, ...)."""
    path = posixpath.join(artifact_dir, F.METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"No {F.METADATA_FILE} in {artifact_dir!r}: not a preprocessing artifact dir. "
            "Create one with `python -m pipelines.preprocess --output_dir=...` and pass "
            "the printed <output_dir>/<dataset>/<version> directory."
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def load_schema(artifact_dir: str) -> schema_pb2.Schema:
    """The `tensorflow_metadata` Schema (``schema.pbtxt``) of the per-user Examples."""
    path = posixpath.join(artifact_dir, F.SCHEMA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"No {F.SCHEMA_FILE} in {artifact_dir!r}; rerun `python -m pipelines.preprocess`."
        )
    with tf.io.gfile.GFile(path) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def load_vocab(artifact_dir: str, name: str = "items") -> list[str]:
    """Tokens of ``vocab/<name>.txt``; list index = id (first ids are the reserved tokens)."""
    path = posixpath.join(artifact_dir, F.VOCAB_DIR, f"{name}.txt")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No vocabulary {path!r}; known: items, genres.")
    with tf.io.gfile.GFile(path) as f:
        return f.read().splitlines()


def feature_spec(schema: schema_pb2.Schema) -> dict:
    """`tf.io.parse_example` spec built from the schema (no hard-coded feature list).

    * a feature with a ``shape`` -> ``FixedLenFeature`` (``shape {dim {size: 1}}``
      is a scalar, parsed as ``[B]``);
    * a feature without ``shape`` -> ``RaggedFeature`` (``[B, None]``);
    * ``*_genre_ids`` whose ``*_genre_counts`` is also in the schema -> a
      ``RaggedFeature`` partitioned by those counts (``[B, (items), (genres)]``).
    """
    spec = {}
    names = {f.name for f in schema.feature}
    for feature in schema.feature:
        if feature.type not in _DTYPES:
            raise ValueError(
                f"Schema feature {feature.name!r} has unsupported type "
                f"{schema_pb2.FeatureType.Name(feature.type)}; expected INT, FLOAT or BYTES."
            )
        dtype = _DTYPES[feature.type]
        if feature.HasField("shape"):
            dims = [d.size for d in feature.shape.dim]
            spec[feature.name] = tf.io.FixedLenFeature([] if dims == [1] else dims, dtype)
        elif feature.name in _RAGGED_PAIRS and _RAGGED_PAIRS[feature.name] in names:
            spec[feature.name] = tf.io.RaggedFeature(
                dtype,
                partitions=[tf.io.RaggedFeature.RowLengths(_RAGGED_PAIRS[feature.name])],
                row_splits_dtype=tf.int64,
            )
        else:
            spec[feature.name] = tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
    return spec


def split_names(split: str | Sequence[str]) -> tuple[str, ...]:
    """The splits that ``split`` names: ``"train"``, ``"train+eval+test"`` or a sequence.

    Several splits are read as one (`split_files`): how training on the
    histories of every user reads them.
    """
    names = tuple(split.split("+")) if isinstance(split, str) else tuple(split)
    unknown = [name for name in names if name not in F.SPLITS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"split={split!r}: expected one of {F.SPLITS}, or several of them without "
            "repeats joined by '+' (e.g. 'train+eval+test') or as a sequence."
        )
    return names


def split_files(artifact_dir: str, split: str | Sequence[str]) -> list[str]:
    """TFRecord shard paths of one split (sorted), or of several (each sorted, in the
    order given; see `split_names`)."""
    files = []
    for name in split_names(split):
        directory = posixpath.join(artifact_dir, F.SPLIT_DIR.format(name))
        found = sorted(tf.io.gfile.glob(posixpath.join(directory, "*.tfrecord.gz")))
        if not found:
            raise FileNotFoundError(
                f"No *.tfrecord.gz shards in {directory!r}. Is {artifact_dir!r} the "
                "<output_dir>/<dataset>/<version> directory written by "
                "`python -m pipelines.preprocess`?"
            )
        files += found
    return files


def train_histories(
    artifact_dir: str, batch_size: int = 4096, split: str | Sequence[str] = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """All users' full stored histories of ``split`` (default the train split; several
    as in `split_names`): ``(values, row_lengths)``, int64 numpy. Histories only,
    never the future items (the labels).

    ``values`` concatenates the histories (item ids, oldest first) in shard
    order; ``row_lengths`` gives each history's length.
    """
    spec = {F.HISTORY_ITEM_IDS: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
    ds = tf.data.TFRecordDataset(split_files(artifact_dir, split), compression_type="GZIP")
    ds = ds.batch(batch_size).map(
        lambda s: tf.io.parse_example(s, spec)[F.HISTORY_ITEM_IDS],
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    values, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for ragged in ds.prefetch(2):
        values.append(ragged.flat_values.numpy())
        lengths.append(ragged.row_lengths().numpy())
    return np.concatenate(values), np.concatenate(lengths)


class Sequences(NamedTuple):
    """Users' stored histories (ragged, complete as the artifact keeps them) and futures."""

    values: np.ndarray  # int64: the histories' item ids, user after user, oldest first
    row_lengths: np.ndarray  # int64 [n]: each history's length
    future: np.ndarray  # int64 [n, T]: the future items, right-padded with PAD_ID

    def __len__(self) -> int:
        return len(self.row_lengths)

    def tails(self, width: int, extra: np.ndarray | None = None) -> np.ndarray:
        """int64 ``[n, width]``: each history (followed by ``extra[u]`` when given and not
        padding) cut to its most recent ``width`` items, right-padded with ``PAD_ID``."""
        ends = np.cumsum(self.row_lengths)
        out = np.full((len(self), width), F.PAD_ID, np.int64)
        for u, (end, n) in enumerate(zip(ends, self.row_lengths)):
            row = self.values[end - n : end]
            if extra is not None and extra[u] != F.PAD_ID:
                row = np.append(row, extra[u])
            row = row[-width:] if width else row[:0]
            out[u, : row.size] = row
        return out

    def seen(self, num_items: int, extra: np.ndarray | None = None):
        """scipy CSR ``[n, num_items]`` bool: the items of each history (and ``extra[u]``)."""
        from scipy import sparse

        rows = np.repeat(np.arange(len(self)), self.row_lengths)
        cols = self.values
        if extra is not None:
            keep = np.asarray(extra) != F.PAD_ID
            rows = np.concatenate([rows, np.flatnonzero(keep)])
            cols = np.concatenate([cols, np.asarray(extra)[keep]])
        inside = (cols >= 0) & (cols < num_items)
        data = np.ones(int(inside.sum()), bool)
        matrix = sparse.csr_matrix((data, (rows[inside], cols[inside])), (len(self), num_items))
        matrix.sum_duplicates()
        return matrix


def read_sequences(
    artifact_dir: str, split: str | Sequence[str] = "train", batch_size: int = 4096
) -> Sequences:
    """Every user's stored history and future of ``split`` (several as in `split_names`),
    in shard order (`Sequences`). Histories are as stored: at most the artifact's
    ``max_len`` most recent items (complete ones in a leave-one-out artifact)."""
    ragged = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
    spec = {F.HISTORY_ITEM_IDS: ragged, F.FUTURE_ITEM_IDS: ragged}
    ds = tf.data.TFRecordDataset(split_files(artifact_dir, split), compression_type="GZIP")
    ds = ds.batch(batch_size).map(
        lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )  # fmt: skip
    values, lengths, futures = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], []
    for batch in ds.prefetch(2):
        history = batch[F.HISTORY_ITEM_IDS]
        values.append(history.flat_values.numpy())
        lengths.append(history.row_lengths().numpy())
        futures.append(batch[F.FUTURE_ITEM_IDS].to_tensor(default_value=F.PAD_ID).numpy())
    width = max((f.shape[1] for f in futures), default=0)
    future = np.concatenate(
        [np.pad(f, ((0, 0), (0, width - f.shape[1])), constant_values=F.PAD_ID)
         for f in futures] or [np.zeros((0, 0), np.int64)]
    ).astype(np.int64)  # fmt: skip
    return Sequences(np.concatenate(values), np.concatenate(lengths), future)


@functools.lru_cache(maxsize=4)
def cooccurrence_table(
    artifact_dir: str,
    top_k: int = augment.COOCCURRENCE_TOP_K,
    window: int = augment.COOCCURRENCE_WINDOW,
) -> np.ndarray:
    """`augment.cooccurrence_table` of the train split's histories (read-only, cached).

    ``int32[vocab_size, top_k]``: each item's ``top_k`` most frequent neighbours
    within ``window`` positions over the TRAIN users (never eval/test users, and
    never their futures). Cached per process by its arguments.
    """
    vocab_size = int(load_metadata(artifact_dir)["vocab_sizes"]["items"])
    values, row_lengths = train_histories(artifact_dir)
    try:
        table = augment.cooccurrence_table(values, row_lengths, vocab_size, top_k, window)
    except ValueError as err:
        raise ValueError(f"Train histories of {artifact_dir!r}: {err}") from None
    table.setflags(write=False)
    return table


def _needed(spec: dict, outputs: Sequence[str] | None) -> dict:
    """The part of the parse spec that the requested output keys need."""
    if outputs is None:
        return dict(spec)
    wanted = set()
    for key in outputs:
        if key in (ITEMS, LENGTH, VIEW1, VIEW2):
            wanted.add(F.HISTORY_ITEM_IDS)
        elif key == FUTURE_LENGTH:
            wanted.add(F.FUTURE_ITEM_IDS)
        elif key in spec and key not in _RAGGED_PAIRS.values():
            wanted.add(key)
            if key in _RAGGED_PAIRS:
                wanted.add(_RAGGED_PAIRS[key])
        else:
            raise ValueError(
                f"Unknown output feature {key!r}; available: "
                f"{sorted({ITEMS, LENGTH, FUTURE_LENGTH, VIEW1, VIEW2} | set(spec))}."
            )
    return {k: v for k, v in spec.items() if k in wanted}


def _truncate(parsed: dict, max_len: int, future_len: int) -> dict:
    """Cuts ragged history features to their last ``max_len`` items, future ones to
    their first ``future_len``; folds the genre counts away. Still ragged."""
    out = {}
    counts = set(_RAGGED_PAIRS.values())
    for name, value in parsed.items():
        if name in counts and not isinstance(value, tf.RaggedTensor):
            out[name] = value  # a schema that made counts fixed-length: pass through
            continue
        if name in counts:
            continue  # folded into the ragged genre ids
        if not isinstance(value, tf.RaggedTensor):
            out[name] = value  # scalars / fixed-length features
        elif name in _RAGGED_PAIRS or value.ragged_rank == 1:
            if name.startswith(_HISTORY_PREFIX):
                out[name] = value[:, -max_len:]
            elif name.startswith(_FUTURE_PREFIX):
                out[name] = value[:, :future_len]
            else:
                out[name] = value
        else:
            out[name] = value
    return out


def _pad_to(ragged: tf.RaggedTensor, width) -> tf.Tensor:
    """``[B, None]`` ragged (rows no longer than ``width``) -> ``[B, width]``, end-padded."""
    if isinstance(width, int):
        return ragged.to_tensor(default_value=_PADDING[ragged.dtype], shape=[None, width])
    shape = tf.stack([tf.cast(ragged.nrows(), tf.int32), tf.cast(width, tf.int32)])
    return ragged.to_tensor(default_value=_PADDING[ragged.dtype], shape=shape)


def _pad_batch(truncated: dict, width, future_len: int) -> dict:
    """`_truncate`d features -> the batch layout of the module docstring.

    ``width`` (a Python int, or a scalar tensor for bucketed batches) is the
    history width; every history must already fit in it.
    """
    out = {}
    for name, value in truncated.items():
        if not isinstance(value, tf.RaggedTensor) or name in _RAGGED_PAIRS:
            out[name] = value
        elif name == F.HISTORY_ITEM_IDS:
            out[ITEMS] = tf.cast(_pad_to(value, width), tf.int32)
            out[LENGTH] = tf.cast(value.row_lengths(), tf.int32)
        elif name.startswith(_HISTORY_PREFIX) and value.ragged_rank == 1:
            out[name] = _pad_to(value, width)
        elif name.startswith(_FUTURE_PREFIX) and value.ragged_rank == 1:
            out[name] = _pad_to(value, future_len)
            if name == F.FUTURE_ITEM_IDS:
                out[FUTURE_LENGTH] = tf.cast(value.row_lengths(), tf.int32)
        else:
            out[name] = value
    return out


def _hold_out(parsed: dict, count: int) -> dict:
    """Parsed features with each history's last ``count`` items removed (the items a
    validation holds out: never an input nor a target in training)."""
    if not count:
        return parsed
    out = dict(parsed)
    for name, value in parsed.items():
        if name.startswith(_HISTORY_PREFIX) and isinstance(value, tf.RaggedTensor):
            out[name] = value[:, :-count]
    return out


def _shape_batch(parsed: dict, max_len: int, future_len: int) -> dict:
    """Parsed Examples -> the batch layout of the module docstring."""
    return _pad_batch(_truncate(parsed, max_len, future_len), max_len, future_len)


def parse_bucket_boundaries(spec) -> tuple[int, ...] | str:
    """``"25,50,100"`` / ``[25, 50, 100]`` -> ``(25, 50, 100)``; ``"auto"`` -> ``"auto"``;
    ``None``, ``""``, ``"none"``, ``"off"`` or ``[]`` -> ``()`` (no bucketing).

    Boundaries must be positive and strictly increasing.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "none", "off"):
            return ()
        if text == "auto":
            return "auto"
        try:
            spec = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"bucket_boundaries={spec!r}: expected 'auto', '' (off) or increasing "
                "positive ints like '25,50,100,150'."
            ) from None
    values = tuple(int(b) for b in spec)
    if any(b < 1 for b in values) or any(b >= c for b, c in zip(values, values[1:])):
        raise ValueError(
            f"bucket_boundaries={list(values)}: must be positive and strictly increasing."
        )
    return values


# Where attention's per-pair cost equals the per-position cost of the linear
# layers: a padded row of width w costs about w * (1 + w / ATTENTION_WIDTH).
# Fitted to BT steps at widths 50 and 200 (d 64, 2 blocks, batch 256, CPU:
# 0.34 s and 1.91 s per step; `benchmarks/train_throughput.py`); it predicted
# the bucketed / fixed-width ratio of ML-1M-like lengths within 0.02.
ATTENTION_WIDTH = 205


def padded_cost(width) -> np.ndarray:
    """Relative compute of one row padded to ``width`` (see `ATTENTION_WIDTH`)."""
    width = np.asarray(width, np.float64)
    return width * (1.0 + width / ATTENTION_WIDTH)


def auto_bucket_boundaries(
    lengths, width: int, batch_size: int, *, max_buckets: int = 8, multiple: int = 8
) -> tuple[int, ...]:
    """Bucket boundaries that minimise the padded compute of an epoch.

    At most ``k = clip(len(lengths) // (2 * batch_size), 1, max_buckets)``
    buckets; all but the widest hold at least ``2 * batch_size`` users (about
    two batches or more per epoch, so batches stay random samples of their
    bucket; each bucket's last partial batch goes to the few mixed batches of
    `epoch_plan`), the widest holds the rest (none when every history is
    shorter than ``width``). Boundaries are multiples of ``multiple`` below
    ``width`` (fewer distinct shapes; the last bucket's width is ``width``),
    chosen by dynamic programming to minimise the sum over users of
    `padded_cost` of their bucket's width: attention makes wide rows dearer,
    so boundaries sit closer together at the long end than equal-count
    quantiles put them.
    ``()`` (no bucketing) when ``k == 1``. On ML-1M-like lengths (4,832 train
    users at batch 256, 24% at the cap of 200) this gives ``(24, 48, 72, 104,
    160)``: BT epochs 2.04-2.10x as fast as at fixed width (DE 2.00-2.02x),
    against 1.86x (DE 1.89x) for the quantiles ``(24, 40, 56, 80, 120)``.
    """
    lengths = np.minimum(np.asarray(lengths, np.int64), width)
    k = int(np.clip(lengths.size // (2 * batch_size), 1, max_buckets))
    if k == 1:
        return ()
    # Candidate widths: multiples of `multiple` below `width`, then `width` itself.
    cands = np.append(np.arange(multiple, width, multiple, dtype=np.int64), width)
    upto = np.searchsorted(np.sort(lengths), cands, side="right")  # users <= each candidate
    cost = padded_cost(cands)
    min_users, n = 2 * batch_size, len(cands)
    # best[m, j]: least cost of the users <= cands[j] in m buckets, the last of width cands[j].
    best = np.full((k, n), np.inf)
    back = np.full((k, n), -1)
    best[1] = np.where(upto >= min_users, upto * cost, np.inf)
    for m in range(2, k):
        for j in range(n):
            users = upto[j] - upto[:j]  # in (cands[i], cands[j]] for every i < j
            total = best[m - 1, :j] + np.where(users >= min_users, users * cost[j], np.inf)
            if total.size and np.isfinite(total.min()):
                back[m, j] = int(np.argmin(total))
                best[m, j] = total[back[m, j]]
    # The widest bucket, (cands[i], width], may hold any number of users (those
    # at the cap; none when every history is shorter): the rest fill m buckets.
    total = best[1:k, :-1] + (lengths.size - upto[:-1]) * cost[-1]
    if not np.isfinite(total).any():
        return ()  # ties at few lengths: no split leaves every bucket 2 batches
    m, j = np.unravel_index(int(np.argmin(total)), total.shape)
    m, j = int(m) + 1, int(j)
    bounds = [int(cands[j])]
    while m > 1:
        j = int(back[m, j])
        bounds.append(int(cands[j]))
        m -= 1
    return tuple(sorted(bounds))


def _records(
    files: list[str],
    *,
    num_pipelines: int,
    pipeline_id: int,
    by_file: bool,
    shuffle_files: bool,
    seed: int,
    num_parallel_reads: int,
) -> tf.data.Dataset:
    """Serialized Examples of this input pipeline's share, in a deterministic order."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(num_pipelines, pipeline_id)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=max(1, min(num_parallel_reads, len(files))),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if num_pipelines > 1 and not by_file:
        ds = ds.shard(num_pipelines, pipeline_id)
    return ds


_LOAD_CHUNK = 4096  # Examples parsed per call when loading a split into memory


def load_rows(
    records: tf.data.Dataset, spec: dict, max_len: int, future_len: int, hold_out: int = 0
) -> dict | None:
    """Parses every record once into memory: ``{feature: [N, ...] tensor}`` (None if empty).

    History lists keep their last ``max_len`` items and future lists their
    first ``future_len`` (`_truncate`); lists stay ragged (``[N, None]``),
    so memory is about 8 bytes per stored list value (``history_item_ids``
    alone: ML-1M ~5 MB, ML-20M ~110 MB at ``max_len`` 200).
    """
    ds = records.batch(_LOAD_CHUNK).map(
        lambda s: _truncate(_hold_out(tf.io.parse_example(s, spec), hold_out), max_len, future_len),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    chunks = list(ds.prefetch(2))
    if not chunks:
        return None
    if len(chunks) == 1:
        return chunks[0]
    return {key: tf.concat([c[key] for c in chunks], axis=0) for key in chunks[0]}


def epoch_plan(
    pool: tf.Tensor, bucket_of_row: tf.Tensor, widths: tf.Tensor, batch_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Cuts one epoch's rows into full, length-bucketed batches (TF ops, no Python loop).

    Args:
      pool: int64 ``[P]`` row numbers in the order they should be batched
        (a random permutation when shuffling; rows carried over from the
        previous epoch first).
      bucket_of_row: int32 ``[N]`` bucket of every row.
      widths: int32 ``[K]`` padded width of every bucket (increasing).
      batch_size: rows per batch.

    Returns:
      ``(batches, batch_widths, carry)``: int64 ``[nb, batch_size]`` row
      numbers, int32 ``[nb]`` widths, int64 ``[P mod batch_size]`` rows left
      over. Rows are grouped by bucket, keeping ``pool`` order inside a
      bucket; each bucket fills ``count // batch_size`` batches of its own
      width. The rows left in the buckets (fewer than ``batch_size`` per
      bucket) are concatenated in bucket order and cut into "mixed" batches,
      padded to their widest row's bucket; the last ``P mod batch_size`` of
      them (the longest) are the carry. Every row of ``pool`` is in exactly
      one batch or in the carry, and ``nb = P // batch_size``.
    """
    buckets = tf.gather(bucket_of_row, pool)
    order = tf.argsort(buckets, stable=True)
    pool, buckets = tf.gather(pool, order), tf.gather(buckets, order)
    num_buckets = tf.size(widths)
    counts = tf.math.bincount(buckets, minlength=num_buckets, maxlength=num_buckets)
    rank = tf.range(tf.size(pool)) - tf.gather(tf.cumsum(counts, exclusive=True), buckets)
    in_full = rank < tf.gather(counts // batch_size * batch_size, buckets)
    full = tf.reshape(tf.boolean_mask(pool, in_full), [-1, batch_size])
    full_buckets = tf.reshape(tf.boolean_mask(buckets, in_full), [-1, batch_size])
    rest, rest_buckets = tf.boolean_mask(pool, ~in_full), tf.boolean_mask(buckets, ~in_full)
    mixed_rows = tf.size(rest) // batch_size * batch_size
    mixed = tf.reshape(rest[:mixed_rows], [-1, batch_size])
    mixed_buckets = tf.reshape(rest_buckets[:mixed_rows], [-1, batch_size])
    batches = tf.concat([full, mixed], axis=0)
    # A batch's widest bucket: the last of a mixed batch (bucket order), any of a full one.
    last = tf.concat([full_buckets[:, -1], mixed_buckets[:, -1]], axis=0)
    return batches, tf.gather(widths, last), rest[mixed_rows:]


def _in_memory_batches(
    rows: dict,
    *,
    bucket_boundaries: tuple[int, ...] | str,
    max_len: int,
    future_len: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    repeat: bool,
    drop_remainder: bool,
    pipeline_id: int,
) -> tf.data.Dataset:
    """Batches of rows held in memory, bucketed by history length (see `make_dataset`;
    ``"auto"`` boundaries: `auto_bucket_boundaries` of the rows' lengths)."""
    if F.HISTORY_ITEM_IDS in rows:
        lengths = rows[F.HISTORY_ITEM_IDS].row_lengths().numpy()
    else:
        lengths = np.zeros(int(next(iter(rows.values())).shape[0]), np.int64)
    if bucket_boundaries == "auto":
        bucket_boundaries = auto_bucket_boundaries(lengths, max_len, batch_size)
    num_rows = lengths.size
    widths = [b for b in bucket_boundaries if b < max_len] + [max_len]
    bucketed = len(widths) > 1
    bucket_of_row = tf.constant(np.searchsorted(widths, lengths, side="left"), tf.int32)
    widths_t = tf.constant(widths, tf.int32)
    # Seeds of the permutations: [draw, negative salt], never equal to the
    # views' [draw, pipeline_id >= 0] (`make_dataset`).
    rows_salt = tf.constant(-2 * pipeline_id - 1, tf.int64)
    batches_salt = tf.constant(-2 * pipeline_id - 2, tf.int64)

    def epoch(carry, draw):
        perm = tf.range(num_rows, dtype=tf.int64)
        if shuffle:
            perm = tf.random.experimental.stateless_shuffle(perm, tf.stack([draw, rows_salt]))
        batches, widths_of, carry = epoch_plan(
            tf.concat([carry, perm], 0), bucket_of_row, widths_t, batch_size
        )
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(batches)[0]), tf.stack([draw, batches_salt])
            )
            batches, widths_of = tf.gather(batches, order), tf.gather(widths_of, order)
        sizes = tf.fill(tf.shape(widths_of), batch_size)
        if not repeat and not drop_remainder:  # the single pass ends with a partial batch
            n = tf.size(carry)
            has = tf.reshape(n > 0, [1])
            partial = tf.pad(carry, [[0, batch_size - n]], constant_values=-1)[tf.newaxis]
            widest = tf.reduce_max(tf.concat([[0], tf.gather(bucket_of_row, carry)], 0))
            batches = tf.concat([batches, tf.boolean_mask(partial, has)], 0)
            widths_of = tf.concat([widths_of, tf.boolean_mask([widths_t[widest]], has)], 0)
            sizes = tf.concat([sizes, tf.boolean_mask([n], has)], 0)
        return carry, (batches, sizes, widths_of)

    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    if not repeat:
        draws = draws.take(1)
    plans = draws.scan(tf.zeros([0], tf.int64), epoch)
    ds = plans.flat_map(lambda *plan: tf.data.Dataset.from_tensor_slices(plan))
    full_only = repeat or drop_remainder

    @tf.autograph.experimental.do_not_convert
    def gather(index, size, width):
        if not full_only:
            index = index[:size]
        batch = {key: tf.gather(value, index) for key, value in rows.items()}
        batch = _pad_batch(batch, width if bucketed else max_len, future_len)
        if full_only:  # a static batch dimension, as `batch(drop_remainder=True)` gives
            for value in batch.values():
                if isinstance(value, tf.Tensor):
                    value.set_shape([batch_size] + [None] * (value.shape.rank - 1))
        return batch

    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(
    artifact_dir: str,
    split: str | Sequence[str],
    batch_size: int,
    *,
    max_len: int | None = None,
    future_len: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    augment_policy: augment.AugmentPolicy | None = None,
    cooccurrence: np.ndarray | None = None,
    input_context: tf.distribute.InputContext | None = None,
    num_parallel_reads: int = 8,
    shuffle_buffer_size: int = 10_000,
    outputs: Sequence[str] | None = None,
    bucket_boundaries: Sequence[int] | str | None = None,
    cache: bool = False,
    hold_out: int = 0,
) -> tf.data.Dataset:
    """Batched, parsed, padded (and optionally augmented) users of one split (or several).

    Two pipelines give the same batch layout:

    * streamed (default): sorted shard files -> (multi-worker sharding) ->
      seeded file shuffle -> deterministic interleaved gzip TFRecord reads ->
      seeded example shuffle (``shuffle_buffer_size``) -> repeat -> batch ->
      `tf.io.parse_example` + padding to ``max_len``. Each pass re-reads and
      re-parses the files.
    * in memory (``cache=True`` or ``bucket_boundaries``): the split (this
      pipeline's share of it) is read and parsed ONCE, when the dataset is
      made, into ragged tensors of the needed features (`load_rows`). Each
      epoch then draws a seeded permutation of all its rows (a shuffle over
      the whole split, not a window), groups the rows by length bucket,
      cuts each bucket into full batches (`epoch_plan`), and shuffles the
      batch order. Batches are gathered from memory and padded only to their
      bucket's width. Parsing is paid once, and short users no longer pay
      for the longest one's padding (attention is quadratic in width).

    Then (both): two views (after batching, at the batch's width) -> prefetch.
    Output is fully determined by the arguments: same seed, same batches in
    the same order, epoch after epoch (each epoch is reshuffled, and views
    redrawn, from a seeded stream; a new iteration over a dataset without
    ``repeat`` is a new epoch).

    Length buckets: with boundaries ``b_0 < ... < b_{k-1}`` (those ``>=
    max_len`` are ignored), bucket ``i`` holds the users whose history length
    (after the ``max_len`` cut) is in ``(b_{i-1}, b_i]``, padded to width
    ``b_i``; the last bucket holds ``(b_{k-1}, max_len]`` at width ``max_len``.
    ``"auto"`` = `auto_bucket_boundaries` of the loaded users' lengths. A
    bucket batch is a uniformly random sample of its bucket's users (the
    permutation covers the whole split), so the Barlow Twins batch statistics
    see random users of similar length; the batch ORDER is random across
    buckets. Padding never reaches the model: `encoders.SequenceEncoder`
    masks it, and a bucket is as wide as its longest user.

    Which users an epoch holds (in memory): every epoch's batches hold every
    user exactly once, except the ``P mod B`` users left over from the last
    full batch (``P`` = users of the epoch plus those carried into it, ``B``
    the batch), which are carried into the next epoch and batched there
    first. Leftovers of the buckets (under ``B`` per bucket) are batched
    together in at most ``k - 1`` "mixed" batches (padded to their widest
    user). Batches are always full, and the first ``floor(e * N / B)``
    batches of a repeated stream hold every one of the ``N`` users ``e``
    times except ``e * N mod B`` of them held ``e - 1`` times -- the same
    guarantee as the streamed pipeline's shuffle -> repeat -> batch. Without
    ``repeat``, the leftover users form a last partial batch, dropped with
    ``drop_remainder``.

    Batch size and tf.distribute:

    * ``input_context=None``: batches hold ``batch_size`` users. Use this for
      ``model.fit(ds)`` and ``strategy.experimental_distribute_dataset(ds)``,
      where ``batch_size`` is the GLOBAL batch that tf.distribute splits
      across replicas (and auto-shards across workers: by file when
      streamed, by batch slice when in memory, where every worker loads the
      whole split).
    * ``input_context=ctx`` (inside the function given to
      ``strategy.distribute_datasets_from_function``): ``batch_size`` is still
      the GLOBAL batch; batches hold ``ctx.get_per_replica_batch_size(batch_size)``
      users, and this input pipeline reads only its share of the data. The
      share is by file when there are at least as many shard files as
      ``ctx.num_input_pipelines`` (each pipeline reads whole files, cheap), else
      by element (every pipeline reads all files and keeps every n-th user).
      Either way the pipelines' users partition the split. In memory, each
      pipeline buckets and batches its own share.

    Args:
      artifact_dir: ``<output_dir>/<dataset>/<version>`` written by `pipelines.preprocess`.
      split: ``"train"``, ``"eval"`` or ``"test"``; or several read as one
        split, ``"train+eval+test"`` or ``("train", "eval", "test")``
        (`split_names`): their shard files are listed split after split and
        then read, shuffled, sharded and bucketed exactly as one split's.
      batch_size: global batch size (see above).
      max_len: history width; default ``metadata["max_len"]``. Longer
        histories keep their most recent items.
      future_len: future width; default ``metadata["future_len"]``. Longer
        futures keep their first (nearest) items.
      shuffle: shuffle files and users (seeded, reshuffled each epoch).
        Without it, in memory, users are in file order inside each bucket
        and batches in bucket order.
      seed: seeds the shuffles and the augmentation.
      repeat: repeat forever (epochs are not mixed within the shuffle buffer:
        the repeat comes after the shuffle).
      drop_remainder: drop the last partial batch (static batch dimension).
      augment_policy: if given, adds ``view1``/``view2`` = `augment.two_views`
        of ``items`` with a stateless per-batch seed ``[r, input_pipeline_id]``,
        ``r`` drawn from a seeded ``tf.data.Dataset.random`` stream.
      cooccurrence: ``int[vocab, k]`` table for a policy with substitute or
        insert; default: `cooccurrence_table` (train split, top
        ``augment.COOCCURRENCE_TOP_K`` within ``augment.COOCCURRENCE_WINDOW``).
        Not read (nor built) for other policies.
      input_context: a `tf.distribute.InputContext` (see above).
      num_parallel_reads: files read concurrently (fixed, so order is reproducible).
      shuffle_buffer_size: users in the shuffle buffer (streamed pipeline only).
      outputs: keys to produce (see the module docstring); None = all.
        Only the features these keys need are parsed (and held in memory).
      bucket_boundaries: length buckets (see above): increasing ints or a
        string ``"25,50,100"``, ``"auto"``, or None/``""`` for none. Any
        boundary below ``max_len`` selects the in-memory pipeline; history
        features are then ``[B, width]`` with the bucket's width (static
        shape ``[B, None]``).
      cache: the in-memory pipeline even without buckets (parse once; every
        batch ``max_len`` wide).
      hold_out: drop each history's last ``hold_out`` items before anything else
        (the items a next-item validation holds out, `bt_tf.training.validation`).

    Returns:
      A `tf.data.Dataset` of dicts, see the module docstring for the layout.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    meta = load_metadata(artifact_dir)
    max_len = int(meta["max_len"] if max_len is None else max_len)
    future_len = int(meta["future_len"] if future_len is None else future_len)
    boundaries = parse_bucket_boundaries(bucket_boundaries)
    spec = _needed(feature_spec(load_schema(artifact_dir)), outputs)
    _check_request(
        artifact_dir, spec, max_len, future_len, outputs, augment_policy, bucket_boundaries
    )
    files = split_files(artifact_dir, split)
    num_pipelines, pipeline_id, per_batch = _pipeline_share(input_context, batch_size)
    in_memory = cache or bool(boundaries)
    records = _records(
        files,
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        by_file=num_pipelines > 1 and len(files) >= num_pipelines,
        shuffle_files=shuffle and not in_memory,
        seed=seed,
        num_parallel_reads=num_parallel_reads,
    )
    keep = None if outputs is None else set(outputs) - {VIEW1, VIEW2}
    select = functools.partial(_select, keep=keep)
    batching = dict(
        max_len=max_len,
        future_len=future_len,
        batch_size=per_batch,
        shuffle=shuffle,
        seed=seed,
        repeat=repeat,
        drop_remainder=drop_remainder,
    )
    if in_memory:
        rows = load_rows(records, spec, max_len, future_len, hold_out)
        if rows is None:
            raise ValueError(
                f"split {split!r} of {artifact_dir} has no users"
                + (f" for input pipeline {pipeline_id}" if num_pipelines > 1 else "")
                + "."
            )
        ds = _in_memory_batches(
            rows, bucket_boundaries=boundaries, pipeline_id=pipeline_id, **batching
        ).map(select)
    else:
        ds = _streamed_batches(
            records, spec, select, shuffle_buffer_size=shuffle_buffer_size, hold_out=hold_out,
            **batching,
        )  # fmt: skip

    if augment_policy is not None:
        if augment_policy.needs_cooccurrence and cooccurrence is None:
            cooccurrence = cooccurrence_table(artifact_dir)
        ds = _add_views(ds, augment_policy, cooccurrence, seed=seed, pipeline_id=pipeline_id)
    if keep is not None and ITEMS not in keep:
        ds = ds.map(lambda b: {k: v for k, v in b.items() if k != ITEMS})
    return _finish(ds, sharded=input_context is not None)


def _select(batch: dict, keep: set[str] | None) -> dict:
    """The keys of `batch` in `keep` (None: all), and ITEMS: the views are made of it (it is
    dropped after them unless asked for)."""
    if keep is None:
        return batch
    return {k: v for k, v in batch.items() if k in keep or k == ITEMS}


def _streamed_batches(
    records: tf.data.Dataset,
    spec: dict,
    select,
    *,
    max_len: int,
    future_len: int,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer_size: int,
    seed: int,
    repeat: bool,
    drop_remainder: bool,
    hold_out: int = 0,
) -> tf.data.Dataset:
    """`make_dataset`'s streamed pipeline after the reads: shuffle -> repeat -> batch ->
    parse (without each history's last ``hold_out`` items), padded to `max_len`; `select`
    keeps the requested keys of a parsed batch."""
    ds = records
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    # The map functions are plain TF ops (no tensor-dependent Python control
    # flow), so AutoGraph conversion is skipped: it only costs tracing time.
    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        parsed = _hold_out(tf.io.parse_example(serialized, spec), hold_out)
        return select(_shape_batch(parsed, max_len, future_len))

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _check_request(
    artifact_dir, spec, max_len, future_len, outputs, augment_policy, bucket_boundaries
) -> None:
    """ValueError for a `make_dataset` request that cannot be served (says why)."""
    if max_len < 1 or future_len < 1:
        raise ValueError(f"max_len ({max_len}) and future_len ({future_len}) must be >= 1.")
    if outputs is not None and augment_policy is None and {VIEW1, VIEW2} & set(outputs):
        raise ValueError(
            f"outputs {list(outputs)} asks for {VIEW1!r}/{VIEW2!r}, which need an "
            "augment_policy (e.g. AugmentPolicy.from_string('mask:0.3,reorder:0.3'))."
        )
    if F.HISTORY_ITEM_IDS not in spec and (outputs is None or augment_policy is not None):
        raise ValueError(f"The schema of {artifact_dir!r} has no {F.HISTORY_ITEM_IDS!r}.")
    if parse_bucket_boundaries(bucket_boundaries) and F.HISTORY_ITEM_IDS not in spec:
        raise ValueError(
            f"bucket_boundaries={bucket_boundaries!r} buckets by history length, but outputs "
            f"{list(outputs or [])} need no history; drop the buckets."
        )


def _pipeline_share(input_context, batch_size: int) -> tuple[int, int, int]:
    """(input pipelines, this one's id, its batch) under `input_context` (see `make_dataset`)."""
    if input_context is None:
        return 1, 0, batch_size
    return (
        input_context.num_input_pipelines,
        input_context.input_pipeline_id,
        input_context.get_per_replica_batch_size(batch_size),
    )


def _add_views(ds, policy, cooccurrence, *, seed: int, pipeline_id: int) -> tf.data.Dataset:
    """Adds ``view1``/``view2`` of each batch's items (stateless per-batch seeds)."""
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    table = None
    if policy.needs_cooccurrence:
        table = tf.constant(cooccurrence, tf.int32)  # a constant of the dataset graph

    @tf.autograph.experimental.do_not_convert
    def add_views(batch, draw):
        # Per-batch stateless seed; the pipeline id keeps workers' views apart.
        batch_seed = tf.stack([draw, tf.constant(pipeline_id, tf.int64)])
        batch[VIEW1], batch[VIEW2] = augment.two_views(batch[ITEMS], batch_seed, policy, table)
        return batch

    return tf.data.Dataset.zip((ds, draws)).map(
        add_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _finish(ds: tf.data.Dataset, *, sharded: bool) -> tf.data.Dataset:
    """Prefetch and deterministic options (never auto-shard what is ``sharded`` already)."""
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    if sharded:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)
