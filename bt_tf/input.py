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

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from bt_tf import augment as aug
from bt_tf import features as F

ITEMS = "items"
LENGTH = "length"
FUTURE_LENGTH = "future_length"
VIEW1 = "view1"
VIEW2 = "view2"

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


def split_files(artifact_dir: str, split: str) -> list[str]:
    """Sorted TFRecord shard paths of one split."""
    if split not in F.SPLITS:
        raise ValueError(f"split={split!r}: expected one of {F.SPLITS}.")
    directory = posixpath.join(artifact_dir, F.SPLIT_DIR.format(split))
    files = sorted(tf.io.gfile.glob(posixpath.join(directory, "*.tfrecord.gz")))
    if not files:
        raise FileNotFoundError(
            f"No *.tfrecord.gz shards in {directory!r}. Is {artifact_dir!r} the "
            "<output_dir>/<dataset>/<version> directory written by "
            "`python -m pipelines.preprocess`?"
        )
    return files


def train_histories(artifact_dir: str, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All train users' full stored histories: ``(values, row_lengths)``, int64 numpy.

    ``values`` concatenates the histories (item ids, oldest first) in shard
    order; ``row_lengths`` gives each history's length.
    """
    spec = {F.HISTORY_ITEM_IDS: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
    ds = tf.data.TFRecordDataset(split_files(artifact_dir, "train"), compression_type="GZIP")
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


@functools.lru_cache(maxsize=4)
def cooccurrence_table(
    artifact_dir: str,
    top_k: int = aug.COOCCURRENCE_TOP_K,
    window: int = aug.COOCCURRENCE_WINDOW,
) -> np.ndarray:
    """`augment.cooccurrence_table` of the train split's histories (read-only, cached).

    ``int32[vocab_size, top_k]``: each item's ``top_k`` most frequent neighbours
    within ``window`` positions over the TRAIN users (never eval/test users, and
    never their futures). Cached per process by its arguments.
    """
    vocab_size = int(load_metadata(artifact_dir)["vocab_sizes"]["items"])
    values, row_lengths = train_histories(artifact_dir)
    try:
        table = aug.cooccurrence_table(values, row_lengths, vocab_size, top_k, window)
    except ValueError as err:
        raise ValueError(f"Train histories of {artifact_dir!r}: {err}") from None
    table.setflags(write=False)
    return table


def _pad(ragged: tf.RaggedTensor, width: int, keep_last: bool) -> tf.Tensor:
    """``[B, None]`` ragged -> ``[B, width]``: the last/first ``width`` values, end-padded."""
    cut = ragged[:, -width:] if keep_last else ragged[:, :width]
    return cut.to_tensor(default_value=_PADDING[ragged.dtype], shape=[None, width])


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


def _shape_batch(parsed: dict, max_len: int, future_len: int) -> dict:
    """Parsed Examples -> the batch layout of the module docstring."""
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
        elif name == F.HISTORY_ITEM_IDS:
            out[ITEMS] = tf.cast(_pad(value, max_len, keep_last=True), tf.int32)
            out[LENGTH] = tf.cast(tf.minimum(value.row_lengths(), max_len), tf.int32)
        elif name in _RAGGED_PAIRS:
            keep_last = name.startswith(_HISTORY_PREFIX)
            width = max_len if keep_last else future_len
            out[name] = value[:, -width:] if keep_last else value[:, :width]
        elif name.startswith(_HISTORY_PREFIX) and value.ragged_rank == 1:
            out[name] = _pad(value, max_len, keep_last=True)
        elif name.startswith(_FUTURE_PREFIX) and value.ragged_rank == 1:
            out[name] = _pad(value, future_len, keep_last=False)
            if name == F.FUTURE_ITEM_IDS:
                out[FUTURE_LENGTH] = tf.cast(tf.minimum(value.row_lengths(), future_len), tf.int32)
        else:
            out[name] = value
    return out


def make_dataset(
    artifact_dir: str,
    split: str,
    batch_size: int,
    *,
    max_len: int | None = None,
    future_len: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    augment_policy: aug.AugmentPolicy | None = None,
    cooccurrence: np.ndarray | None = None,
    input_context: tf.distribute.InputContext | None = None,
    num_parallel_reads: int = 8,
    shuffle_buffer_size: int = 10_000,
    outputs: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """Batched, parsed, padded (and optionally augmented) users of one split.

    Pipeline: sorted shard files -> (multi-worker sharding) -> seeded file
    shuffle -> deterministic interleaved gzip TFRecord reads -> seeded example
    shuffle -> repeat -> batch -> `tf.io.parse_example` + padding -> two views
    -> prefetch. Output is fully determined by the arguments: same seed, same
    batches in the same order, epoch after epoch (each epoch is reshuffled,
    and views redrawn, from a seeded stream).

    Batch size and tf.distribute:

    * ``input_context=None``: batches hold ``batch_size`` users. Use this for
      ``model.fit(ds)`` and ``strategy.experimental_distribute_dataset(ds)``,
      where ``batch_size`` is the GLOBAL batch that tf.distribute splits
      across replicas (and auto-shards across workers).
    * ``input_context=ctx`` (inside the function given to
      ``strategy.distribute_datasets_from_function``): ``batch_size`` is still
      the GLOBAL batch; batches hold ``ctx.get_per_replica_batch_size(batch_size)``
      users, and this input pipeline reads only its share of the data. The
      share is by file when there are at least as many shard files as
      ``ctx.num_input_pipelines`` (each pipeline reads whole files, cheap), else
      by element (every pipeline reads all files and keeps every n-th user).
      Either way the pipelines' users partition the split.

    Args:
      artifact_dir: ``<output_dir>/<dataset>/<version>`` written by `pipelines.preprocess`.
      split: ``"train"``, ``"eval"`` or ``"test"``.
      batch_size: global batch size (see above).
      max_len: history width; default ``metadata["max_len"]``. Longer
        histories keep their most recent items.
      future_len: future width; default ``metadata["future_len"]``. Longer
        futures keep their first (nearest) items.
      shuffle: shuffle files and users (seeded, reshuffled each epoch).
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
      shuffle_buffer_size: users in the shuffle buffer.
      outputs: keys to produce (see the module docstring); None = all.
        Only the features these keys need are parsed.

    Returns:
      A `tf.data.Dataset` of dicts, see the module docstring for the layout.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    meta = load_metadata(artifact_dir)
    max_len = int(meta["max_len"] if max_len is None else max_len)
    future_len = int(meta["future_len"] if future_len is None else future_len)
    if max_len < 1 or future_len < 1:
        raise ValueError(f"max_len ({max_len}) and future_len ({future_len}) must be >= 1.")
    if outputs is not None and augment_policy is None and {VIEW1, VIEW2} & set(outputs):
        raise ValueError(
            f"outputs {list(outputs)} asks for {VIEW1!r}/{VIEW2!r}, which need an "
            "augment_policy (e.g. AugmentPolicy.from_string('mask:0.3,reorder:0.3'))."
        )
    spec = _needed(feature_spec(load_schema(artifact_dir)), outputs)
    if F.HISTORY_ITEM_IDS not in spec and (outputs is None or augment_policy is not None):
        raise ValueError(f"The schema of {artifact_dir!r} has no {F.HISTORY_ITEM_IDS!r}.")
    files = split_files(artifact_dir, split)

    num_pipelines, pipeline_id, per_batch = 1, 0, batch_size
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        per_batch = input_context.get_per_replica_batch_size(batch_size)
    by_file = num_pipelines > 1 and len(files) >= num_pipelines

    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(num_pipelines, pipeline_id)
    if shuffle:
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
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(per_batch, drop_remainder=drop_remainder)

    keep = None if outputs is None else set(outputs) - {VIEW1, VIEW2}

    # The map functions are plain TF ops (no tensor-dependent Python control
    # flow), so AutoGraph conversion is skipped: it only costs tracing time.
    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        batch = _shape_batch(tf.io.parse_example(serialized, spec), max_len, future_len)
        if keep is not None:
            batch = {k: v for k, v in batch.items() if k in keep or k == ITEMS}
        return batch

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if augment_policy is not None:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        table = None
        if augment_policy.needs_cooccurrence:
            if cooccurrence is None:
                cooccurrence = cooccurrence_table(artifact_dir)
            table = tf.constant(cooccurrence, tf.int32)  # a constant of the dataset graph

        @tf.autograph.experimental.do_not_convert
        def add_views(batch, draw):
            # Per-batch stateless seed; the pipeline id keeps workers' views apart.
            batch_seed = tf.stack([draw, tf.constant(pipeline_id, tf.int64)])
            batch[VIEW1], batch[VIEW2] = aug.two_views(
                batch[ITEMS], batch_seed, augment_policy, table
            )
            return batch

        ds = tf.data.Dataset.zip((ds, draws)).map(
            add_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    if keep is not None and ITEMS not in keep:
        ds = ds.map(lambda b: {k: v for k, v in b.items() if k != ITEMS})

    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    if input_context is not None:
        # Already sharded above; never shard a second time.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)
