"""Raw interactions -> TFX-style TFRecord splits, with Apache Beam.

    python -m pipelines.preprocess --dataset=synthetic --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=ml-100k --data_dir=~/ml-100k --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=ml-1m --data_dir=~/data/ml-1m --output_dir=/tmp/bt_data
    python -m pipelines.preprocess --dataset=yelp --data_dir=~/data/yelp --output_dir=/tmp/bt \\
        --runner=DataflowRunner --project=... --temp_location=gs://...   # any Beam option
    python -m pipelines.preprocess --dataset=interactions --data_dir=~/my_log \\
        --user_col=customer --item_col=sku --time_col=ts --rating_col=stars   # your own data

Writes `OUTPUT_DIR/<dataset>/<version>/` (DESIGN.md, "Data contract"):
`Split-{train,eval,test}/data-NNNNN-of-NNNNN.tfrecord.gz`, `schema.pbtxt`,
`vocab/items.txt`, `vocab/genres.txt`, `metadata.json`, `bad_records/`.
`<version>` is a digest of every setting that changes the output and of the
input files' fingerprints, so the same input and flags find (and reuse) the
same directory, and any change writes a new one.

Steps (each a small named function below):
1. read: raw files are cut into byte-range chunks read in parallel with exact
   line numbers (`pipelines.textio`); MovieLens ratings lines are parsed with
   numpy, other lines (and any line the vectorized reader does not accept) by
   the source's line parser; Parquet files are read by row group
   (`pipelines.interactions_source`); unparsable lines go to `bad_records/`.
2. group: a hash of the user id puts each user in a bucket (split, output
   shard, part of that shard); interactions are grouped per bucket into
   columnar *blocks*, each user's sorted by (timestamp, item id, rating).
3. k-core: rounds of per-item counts over the blocks, each a combine, each
   filtering users by length and items by count given the previous rounds'
   results, unrolled `kcore_max_iterations` times; the run fails if that was
   not enough to converge.
4. split: the bucket's (the same stable hash of the user id).
5. vocab: item and genre vocabularies, frequency-ordered over train users only.
6. examples: history/future cut, one `tf.train.Example` per user; each block
   writes its users' Examples, sorted by user id, to a part file, and each of
   the fixed number of shards per split is a streaming merge of its parts
   (byte-identical reruns, however the input was chunked).
Everything is written to `<version>.partial/` and renamed at the very end, so
an interrupted run leaves no partial version and a rerun starts clean. No step
holds all interactions: a block holds the users of one of 3 * num_shards * 8
buckets.

Runner: `--runner=DirectRunner` unless a `--runner` is given (`local_runner`:
DirectRunner's batch engine, without its attempt to download the Prism runner).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import posixpath
import struct
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf

import pipelines  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf import features as F
from bt_tf.errors import UserError
from pipelines import interactions_source, synthetic, textio

DATASETS = ("synthetic", "ml-100k", "ml-1m", "ml-20m", "yelp", "interactions")
TFDS_DATASETS = ("ml-100k", "ml-1m", "ml-20m")  # --source=tfds
_BATCH_ROWS = 100_000  # interactions per columnar batch between Beam steps
_TOO_SHORT = "users_too_short_for_future"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Every setting of a preprocessing run (the CLI's flags, parsed)."""

    dataset: str = "synthetic"
    output_dir: str = "/tmp/bt_data"
    data_dir: str | None = None  # raw files; None: download (MovieLens) / generate
    source: str = "raw"  # "raw" files or "tfds" (TFDS_DATASETS only)
    cache_dir: str | None = None  # downloads (MovieLens) and TFDS data
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    kcore_max_iterations: int = 12
    future_len: int = 10
    min_history_len: int = 3  # future shrinks for short users so history keeps this
    max_len: int = 200
    train_percent: int = 80
    eval_percent: int = 10
    num_shards: int = 4  # TFRecord shards per split
    max_bad_fraction: float = 0.001
    chunk_bytes: int = 32 << 20  # bytes per parallel read of a raw file
    tfds_shards: int = 8
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    # --dataset=interactions: columns and optional item/user files
    interactions: interactions_source.InteractionsConfig = interactions_source.InteractionsConfig()
    beam_args: tuple[str, ...] = ()  # passed through to Beam unchanged

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset={self.dataset!r}: expected one of {DATASETS}")
        if self.source not in ("raw", "tfds"):
            raise ValueError(f"--source={self.source!r}: expected 'raw' or 'tfds'")
        if self.source == "tfds" and self.dataset not in TFDS_DATASETS:
            raise ValueError(f"--source=tfds exists only for {', '.join(TFDS_DATASETS)}")
        if not (
            0 < self.train_percent
            and 0 <= self.eval_percent
            and self.train_percent + self.eval_percent <= 100
        ):
            raise ValueError("need 0 < train_percent, 0 <= eval_percent, sum <= 100")
        if self.future_len < 1 or self.max_len < 1 or self.min_history_len < 1:
            raise ValueError("future_len, max_len and min_history_len must be >= 1")
        if self.dataset == "interactions" and not self.data_dir:
            raise ValueError(
                "--dataset=interactions needs --data_dir: a directory of CSV, TSV, JSON lines "
                "or Parquet interaction files, or one such file"
            )
        own = self.interactions
        if self.dataset != "interactions" and (own.items_file or own.users_file):
            raise ValueError("--items_file and --users_file apply to --dataset=interactions only")

    def output_settings(self) -> dict:
        """The settings that change the output bytes (everything but where/how)."""
        out = dataclasses.asdict(self)
        for key in ("output_dir", "data_dir", "cache_dir", "chunk_bytes", "beam_args"):
            out.pop(key)
        if self.dataset != "synthetic":
            out.pop("synthetic")
        if self.dataset == "interactions":
            # Which items/users file is read is in the input fingerprints, not its path.
            out["interactions"].pop("items_file")
            out["interactions"].pop("users_file")
        else:
            out.pop("interactions")
        if self.source != "tfds":
            out.pop("tfds_shards")
        return out


# --------------------------------------------------------------------------
# Inputs


def _fingerprint(path: str) -> dict:
    """Size and the SHA-256 of the first MiB: cheap, and enough to tell files apart."""
    with textio.open_binary(path) as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {
        "file": os.path.basename(path),
        "bytes": tf.io.gfile.stat(path).length,
        "head_sha256": head,
    }


def resolve_inputs(config: PreprocessConfig) -> dict[str, str]:
    """Input label -> raw file path (downloading MovieLens when no data_dir is given).

    Labels are table names (``"interactions"``, ``"items"``, ``"users"``); for
    ``--dataset=interactions`` each interaction file is ``"interactions/<name>"``.
    """
    if config.dataset == "synthetic" or config.source == "tfds":
        return {}
    if config.dataset == "interactions":
        return interactions_source.resolve_files(
            config.interactions, os.path.expanduser(config.data_dir)
        )
    from pipelines import sources

    source = sources.get_source(config.dataset)
    data_dir = config.data_dir
    if data_dir is None:
        if config.dataset == "yelp":
            # resolve_files's error says where to get Yelp and where to put it.
            data_dir = os.path.join(config.cache_dir or "~/.cache/bt_tf", "yelp")
        else:
            from pipelines import download

            data_dir = download.fetch_movielens(config.dataset, config.cache_dir)
    return sources.resolve_files(source, os.path.expanduser(data_dir))


def version_of(config: PreprocessConfig, files: dict[str, str]) -> str:
    """A digest of the output settings and input fingerprints: the version dir name."""
    key = {
        "settings": config.output_settings(),
        "inputs": {t: _fingerprint(p) for t, p in sorted(files.items())},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return "v-" + digest[:12]


def artifact_dir(config: PreprocessConfig) -> str:
    """Where `preprocess(config)` writes (or has written) its artifacts."""
    files = resolve_inputs(config)
    return posixpath.join(
        os.path.expanduser(config.output_dir), config.dataset, version_of(config, files)
    )


# --------------------------------------------------------------------------
# Step 1: read
#
# Interactions travel as columnar batches: "user" and "item" as numpy arrays
# of UTF-8 bytes (dtype S, a quarter of the memory of str arrays; byte order is
# code point order, so every sort is the same as on the strings), "timestamp"
# int64 and "rating" float32.


def _utf8(values) -> np.ndarray:
    """Strings (a sequence, or a numpy str array) -> numpy array of their UTF-8 bytes."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            return values
        if values.dtype.kind == "U":
            try:
                return values.astype(np.bytes_)  # ASCII: no Python loop
            except UnicodeEncodeError:
                pass
    return np.array([str(v).encode("utf-8") for v in values], dtype=np.bytes_)


def _columnar(rows: list[tuple]) -> dict[str, np.ndarray]:
    users, items, stamps, ratings = zip(*rows)
    return {
        "user": _utf8(users),
        "item": _utf8(items),
        "timestamp": np.asarray(stamps, dtype=np.int64),
        "rating": np.asarray(ratings, dtype=np.float32),
    }


def _batched(rows: Iterable[tuple]) -> Iterator[dict[str, np.ndarray]]:
    buffer = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= _BATCH_ROWS:
            yield _columnar(buffer)
            buffer = []
    if buffer:
        yield _columnar(buffer)


def _table_of(label: str) -> str:
    """Input label -> its table: ``"interactions/ratings.csv"`` -> ``"interactions"``."""
    return label.split("/", 1)[0]


def _emit(table: str, records: Iterable[tuple]):
    """Routes good records: interactions as columnar batches, others tagged by table."""
    if table == "interactions":
        yield from _batched(records)
    else:
        for record in records:
            yield beam.pvalue.TaggedOutput(table, record)


@dataclasses.dataclass(frozen=True)
class _RatingLines:
    """``user SEP item SEP rating SEP timestamp`` of digits: the MovieLens ratings files.

    `_parse_rating_lines` reads many such lines at once with numpy. It accepts
    only plain spellings (ids and timestamps of ASCII digits, ratings exactly
    as listed below) and leaves every other line to the table's own parser, so
    records, bad-record reasons and line numbers are exactly the line-by-line
    parser's.
    """

    sep: bytes  # one byte, possibly repeated: b",", b"\t", b"::"
    half_stars: bool  # True: "0.5" ... "5.0" in halves and "1" ... "5"; False: "1" ... "5"


_MAX_FAST_TIMESTAMP_DIGITS = 18  # always fits int64


def _rating_lines_of(parse) -> _RatingLines | None:
    """The vectorized layout of a `sources.Table.parse` function, if it has one."""
    from pipelines import sources

    return {
        sources.parse_ml20m_rating: _RatingLines(b",", half_stars=True),
        sources.parse_ml1m_rating: _RatingLines(b"::", half_stars=False),
        sources.parse_ml100k_rating: _RatingLines(b"\t", half_stars=False),
    }.get(parse)


def _windows(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """[len(start), width] bytes of `buf` from each start (zeros past its end)."""
    padded = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)[start]


def _field_bytes(buf: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Byte ranges [start, stop) of `buf` -> a numpy bytes (S) array of them."""
    width = int((stop - start).max(initial=1))
    matrix = _windows(buf, start, width)
    matrix[np.arange(width) >= (stop - start)[:, None]] = 0
    return matrix.view(f"S{width}").ravel()


def _field_uint(buf: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Byte ranges of 1 to 18 ASCII digits -> their values (int64)."""
    length = stop - start
    width = int(length.max(initial=0))
    digits = _windows(buf, start, max(width, 1))
    value = np.zeros(len(start), dtype=np.int64)
    for j in range(width):
        value = np.where(j < length, value * 10 + digits[:, j].astype(np.int64) - 48, value)
    return value


def _parse_rating_lines(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, layout: _RatingLines
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(accepted mask over the lines, columnar batch of the accepted lines, in order)."""
    width = len(layout.sep)
    seps = np.flatnonzero(buf == layout.sep[0])
    seps_before = np.searchsorted(seps, starts)
    ok = np.searchsorted(seps, ends) - seps_before == 3 * width
    rows = np.flatnonzero(ok)
    at = seps[seps_before[rows, None] + np.arange(3 * width)]  # [rows, separator bytes]
    good = np.ones(len(rows), dtype=bool)
    for field in range(3):
        for i in range(1, width):  # a separator's bytes are adjacent
            good &= at[:, field * width + i] == at[:, field * width] + i
    start = [starts[rows]] + [at[:, f * width - 1] + 1 for f in (1, 2, 3)]
    stop = [at[:, f * width] for f in (0, 1, 2)] + [ends[rows]]
    length = [b - a for a, b in zip(start, stop)]
    good &= (length[0] > 0) & (length[1] > 0) & (length[3] > 0)
    good &= length[3] <= _MAX_FAST_TIMESTAMP_DIGITS
    b0, b1, b2 = _windows(buf, start[2], 3).T
    whole = (length[2] == 1) & (b0 >= ord("1")) & (b0 <= ord("5"))
    stars = b0.astype(np.float32) - 48
    valid = whole
    if layout.half_stars:
        halves = (b0.astype(np.int64) - 48) * 2 + (b2 == ord("5"))
        half = (
            (length[2] == 3)
            & (b0 >= ord("0"))
            & (b0 <= ord("5"))
            & (b1 == ord("."))
            & ((b2 == ord("0")) | (b2 == ord("5")))
            & (halves >= 1)
            & (halves <= 10)
        )
        stars = np.where(whole, stars, halves.astype(np.float32) / 2)
        valid = whole | half
    good &= valid
    # Every other byte is a digit: a line's only non-digits are its separators
    # and the rating's ".".
    non_digits = np.flatnonzero((buf < 48) | (buf > 57))
    found = np.searchsorted(non_digits, stop[3]) - np.searchsorted(non_digits, start[0])
    good &= found == 3 * width + (length[2] == 3)
    ok[rows] = good
    keep = np.flatnonzero(good)
    columns = {
        "user": _field_bytes(buf, start[0][keep], stop[0][keep]),
        "item": _field_bytes(buf, start[1][keep], stop[1][keep]),
        "timestamp": _field_uint(buf, start[3][keep], stop[3][keep]),
        "rating": stars[keep].astype(np.float32),
    }
    return ok, columns


_PIECE_BYTES = 4 << 20  # lines parsed at once by the vectorized path


class _ParseChunk(beam.DoFn):
    """Parses the lines of one chunk; main output: columnar interaction batches.

    Tagged outputs: "items", "users" (records), "bad" (one dict per bad line),
    "lines" ((table, number of non-blank data lines)). MovieLens ratings lines
    are parsed with numpy (`_parse_rating_lines`); all others, and any line it
    does not accept, one by one with the table's parser.
    """

    def __init__(self, tables: dict):
        self._tables = tables  # path -> sources.Table

    def setup(self):
        from pipelines import sources

        self._bad_record = sources.BadRecord

    def process(self, chunk: textio.Chunk, newlines_before: dict):
        table = self._tables[chunk.path]
        layout = _rating_lines_of(table.parse) if chunk.table == "interactions" else None
        first, data = textio.read_block(chunk, newlines_before[chunk.key])
        records, bad, counted = [], [], 0
        for lines_before, piece in textio.split_block(data, _PIECE_BYTES):
            buf = np.frombuffer(piece, dtype=np.uint8)
            starts, ends = textio.line_bounds(buf)
            number = first + lines_before  # the line number of starts[0]
            if table.header and number == 1 and len(starts):
                starts, ends, number = starts[1:], ends[1:], 2
            slow = range(len(starts))
            if layout is not None:
                ok, columns = _parse_rating_lines(buf, starts, ends, layout)
                if len(columns["user"]):
                    counted += len(columns["user"])
                    yield columns
                slow = np.flatnonzero(~ok).tolist()
            for i in slow:
                line = piece[starts[i] : ends[i]]
                try:
                    record = table.parse(line)
                except self._bad_record as err:
                    bad.append(_bad(chunk.path, number + i, str(err), line))
                    continue
                if record is not None:
                    counted += 1
                    records.append(record)
        yield from _emit(chunk.table, records)
        for record in bad:
            yield beam.pvalue.TaggedOutput("bad", record)
        yield beam.pvalue.TaggedOutput("lines", (chunk.table, counted + len(bad)))


class _ParseParquet(beam.DoFn):
    """Reads one Parquet row group; the same outputs as `_ParseChunk`.

    Bad rows are reported with their 1-based row number in the file (``"row"``).
    """

    def __init__(self, parsers: dict):
        self._parsers = parsers  # path -> (columns, RowParser)

    def process(self, part: interactions_source.ParquetPart):
        columns, parser = self._parsers[part.path]
        bad, counted = [], {"n": 0}

        def records() -> Iterator[tuple]:
            for row, record, reason, values in interactions_source.read_parquet_part(
                part, columns, parser
            ):
                if record is None:
                    text = json.dumps(values, ensure_ascii=False, default=str)
                    bad.append(_bad(part.path, row, reason, text.encode("utf-8"), key="row"))
                else:
                    counted["n"] += 1
                    yield record

        yield from _emit(part.table, records())
        for record in bad:
            yield beam.pvalue.TaggedOutput("bad", record)
        yield beam.pvalue.TaggedOutput("lines", (part.table, counted["n"] + len(bad)))


def _bad(path: str, number: int, reason: str, line: bytes, key: str = "line") -> dict:
    return {
        "file": os.path.basename(path),
        "path": path,
        key: number,
        "reason": reason,
        "text": line[:500].decode("utf-8", errors="backslashreplace"),
    }


def _readers(config: PreprocessConfig, files: dict[str, str]) -> tuple[dict, dict]:
    """(path -> `sources.Table` of line-oriented files, path -> Parquet parser)."""
    if config.dataset != "interactions":
        from pipelines import sources

        source = sources.get_source(config.dataset)
        return {path: getattr(source, label) for label, path in files.items()}, {}
    text, parquet = {}, {}
    for label, path in files.items():
        f = interactions_source.describe(_table_of(label), path)
        if f.format == "parquet":
            parquet[path] = interactions_source.row_parser(f, config.interactions)
        else:
            text[path] = interactions_source.text_table(f, config.interactions)
    return text, parquet


_OUTPUTS = ("items", "users", "bad", "lines")


def _read_raw(p: beam.Pipeline, config: PreprocessConfig, files: dict[str, str]):
    tables, parquet = _readers(config, files)
    plans = [
        c
        for label, path in sorted(files.items())
        if path in tables
        for c in textio.plan_chunks(_table_of(label), path, config.chunk_bytes)
    ]
    branches = []
    if plans:
        chunks = p | "Chunks" >> beam.Create(plans)
        newlines = (
            chunks
            | "CountNewlines" >> beam.Map(textio.count_newlines)
            | "NewlineTable" >> beam.combiners.ToDict()
            | "FirstLines" >> beam.Map(textio.first_line_numbers, plans)
        )
        branches.append(
            chunks
            | "SpreadChunks" >> beam.Reshuffle()
            | "Parse"
            >> beam.ParDo(_ParseChunk(tables), beam.pvalue.AsSingleton(newlines)).with_outputs(
                *_OUTPUTS, main="interactions"
            )
        )
    parts = [
        part
        for label, path in sorted(files.items())
        if path in parquet
        for part in interactions_source.parquet_parts(_table_of(label), path)
    ]
    if parts:
        branches.append(
            p
            | "RowGroups" >> beam.Create(parts)
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadParquet"
            >> beam.ParDo(_ParseParquet(parquet)).with_outputs(*_OUTPUTS, main="interactions")
        )
    if len(branches) == 1:
        (b,) = branches
        return b.interactions, b.items, b.users, b.bad, b.lines
    return tuple(
        tuple(getattr(b, tag) for b in branches)
        | f"Merge{tag.capitalize()}Branches" >> beam.Flatten()
        for tag in ("interactions", *_OUTPUTS)
    )


def _tfds_shard(shard: int, dataset: str, num_shards: int, data_dir: str | None):
    from pipelines import tfds_source

    rows = []
    for table, record in tfds_source.tfds_records(dataset, shard, num_shards, data_dir):
        if table == "interactions":
            rows.append(record)
        else:
            yield beam.pvalue.TaggedOutput(table, record)
    yield beam.pvalue.TaggedOutput("lines", ("interactions", len(rows)))
    yield from _batched(rows)


def _read_tfds(p: beam.Pipeline, config: PreprocessConfig):
    parsed = (
        p
        | "TfdsShards" >> beam.Create(range(config.tfds_shards))
        | "SpreadShards" >> beam.Reshuffle()
        | "ReadTfds"
        >> beam.FlatMap(
            _tfds_shard, config.dataset, config.tfds_shards, config.cache_dir
        ).with_outputs("items", "users", "lines", main="interactions")
    )
    items = parsed.items | "DistinctTfdsItems" >> beam.Distinct()
    users = parsed.users | "UserJson" >> beam.Map(
        lambda r: (r[0], json.dumps(r[1], sort_keys=True))
    )
    users = (
        users
        | "DistinctUsers" >> beam.Distinct()
        | "UserRecords" >> beam.Map(lambda kv: (kv[0], json.loads(kv[1])))
    )
    bad = p | "NoBadRecords" >> beam.Create([])
    return parsed.interactions, items, users, bad, parsed.lines


def _synthetic_block(block: int, config: synthetic.SyntheticConfig):
    interactions, users = synthetic.generate_block(config, block)
    for user in users:
        yield beam.pvalue.TaggedOutput("users", user)
    yield beam.pvalue.TaggedOutput("lines", ("interactions", len(interactions["user"])))
    interactions = dict(interactions, user=_utf8(interactions["user"]))
    interactions["item"] = _utf8(interactions["item"])
    for start in range(0, len(interactions["user"]), _BATCH_ROWS):
        yield {k: v[start : start + _BATCH_ROWS] for k, v in interactions.items()}


def _read_synthetic(p: beam.Pipeline, config: PreprocessConfig):
    cfg = config.synthetic
    parsed = (
        p
        | "Blocks" >> beam.Create(range(synthetic.num_blocks(cfg)))
        | "SpreadBlocks" >> beam.Reshuffle()
        | "Generate"
        >> beam.FlatMap(_synthetic_block, cfg).with_outputs("users", "lines", main="interactions")
    )
    items = p | "Catalog" >> beam.Create(synthetic.item_records(cfg))
    bad = p | "NoBadRecords" >> beam.Create([])
    return parsed.interactions, items, parsed.users, bad, parsed.lines


def attribute_classes(config: PreprocessConfig) -> dict[str, tuple[str, ...]]:
    """Attribute name -> ordered raw class values for this dataset/source.

    ``--dataset=interactions`` gives ``{}``: its classes come from the users
    file and are counted by the pipeline (`_attribute_classes`).
    """
    if config.dataset == "interactions":
        return {}
    if config.dataset == "synthetic":
        return dict(synthetic.ATTRIBUTES)
    if config.source == "tfds":
        from pipelines import tfds_source

        return dict(tfds_source.tfds_attributes(config.dataset))
    from pipelines import sources

    return dict(sources.get_source(config.dataset).attributes)


def item_feature_name(config: PreprocessConfig) -> str:
    """What the item tags are: ``"genre"`` (MovieLens, synthetic) or ``"category"``
    (Yelp, your own interactions)."""
    if config.dataset == "synthetic":
        return "genre"
    if config.dataset == "interactions":
        return "category"
    from pipelines import sources

    return sources.get_source(config.dataset).item_feature


# --------------------------------------------------------------------------
# Step 2: buckets of users -> sorted blocks
#
# Each user belongs to one bucket (split, shard, part), from a hash of the user
# id: the split, the output shard its Example goes to, and one of
# `_PARTS_PER_SHARD` parts of that shard. Interactions are grouped per bucket,
# not per user, so a group is a few large numpy arrays rather than one small
# group per user, and each bucket becomes one *block*: its users' interactions
# as columns sorted by (user id, timestamp, item id, rating), with items as
# int32 codes into the sorted distinct item ids (the "catalog"). A block holds
# about 1 / (3 * num_shards * _PARTS_PER_SHARD) of the data, never all of it.

_PARTS_PER_SHARD = 8


def _split_of_digest(digest: bytes, train_percent: int, eval_percent: int) -> str:
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < train_percent:
        return "train"
    return "eval" if bucket < train_percent + eval_percent else "test"


def split_of(user_id: str, train_percent: int, eval_percent: int) -> str:
    """Stable split by a hash of the user id (the same on every machine and run)."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return _split_of_digest(digest, train_percent, eval_percent)


def bucket_of(user: bytes, config: PreprocessConfig) -> tuple[str, int, int]:
    """(split, shard, part) of a user id (UTF-8 bytes)."""
    digest = hashlib.sha256(user).digest()
    return (
        _split_of_digest(digest, config.train_percent, config.eval_percent),
        int.from_bytes(digest[:4], "big") % config.num_shards,
        int.from_bytes(digest[8:16], "big") % _PARTS_PER_SHARD,
    )


def _order_keys(ids: np.ndarray) -> np.ndarray | None:
    """uint64 keys that sort like the byte strings `ids` (dtype S), if at most 8 bytes wide.

    Zero-padded big-endian: ``b"12" < b"123" < b"2"`` as keys too. Integer
    sorts and searches are several times faster than string ones.
    """
    width = ids.dtype.itemsize
    if width > 8:
        return None
    padded = np.zeros((len(ids), 8), dtype=np.uint8)
    padded[:, :width] = np.ascontiguousarray(ids).view(np.uint8).reshape(len(ids), width)
    return padded.view(">u8").ravel().astype(np.uint64)  # native byte order: fast compares


def _unique(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values of the bytes array `ids`, index of each id in them)."""
    keys = _order_keys(ids)
    if keys is None:
        distinct, inverse = np.unique(ids, return_inverse=True)
        return distinct, inverse.ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return ids[first], inverse.ravel()


def _codes(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Index of each of `ids` in `sorted_ids` (which holds them all), as int32."""
    keys, sorted_keys = _order_keys(ids), _order_keys(sorted_ids)
    if keys is None or sorted_keys is None:
        return np.searchsorted(sorted_ids, ids).astype(np.int32)
    return np.searchsorted(sorted_keys, keys).astype(np.int32)


def _sequence_order(owner, timestamp, item, rating) -> np.ndarray:
    """``np.lexsort((rating, item, timestamp, owner))``, on two packed int keys when they fit.

    (item, rating) pack into one key (rating as order-preserving bits, -0.0 as
    0.0 and NaN last, as numpy compares them); (owner, timestamp) into another
    when the block's timestamps span few enough seconds.
    """
    r = np.asarray(rating, dtype=np.float32) + np.float32(0.0)  # -0.0 -> 0.0
    r = np.where(np.isnan(r), np.float32(np.nan), r)
    bits = r.view(np.uint32).astype(np.uint64)
    bits = np.where(bits >> np.uint64(31), bits ^ np.uint64(0xFFFFFFFF), bits | np.uint64(1 << 31))
    low = (item.astype(np.uint64) << np.uint64(32)) | bits
    if len(owner):
        t0 = int(timestamp.min())
        span = int(timestamp.max()) - t0 + 1
        if span * (int(owner.max()) + 1) < 2**63:
            high = owner.astype(np.int64) * span + (timestamp - t0)
            return np.lexsort((low, high))
    return np.lexsort((low, timestamp, owner))


def _to_fragments(batch: dict[str, np.ndarray], config: PreprocessConfig):
    """Columnar batch -> (bucket, fragment): the batch's rows of each bucket.

    A fragment's rows are sorted by user; its users are run-length coded
    (``"user"`` distinct ids, ``"count"`` rows of each).
    """
    users, owner = _unique(batch["user"])
    buckets = [bucket_of(u, config) for u in users.tolist()]
    keys = sorted(set(buckets))
    index = {key: i for i, key in enumerate(keys)}
    row_bucket = np.asarray([index[b] for b in buckets], dtype=np.int64)[owner]
    order = np.lexsort((owner, row_bucket))
    bounds = np.searchsorted(row_bucket[order], np.arange(len(keys) + 1))
    for i, key in enumerate(keys):
        rows = order[bounds[i] : bounds[i + 1]]
        ids, counts = np.unique(owner[rows], return_counts=True)
        yield (
            key,
            {
                "user": users[ids],
                "count": counts,
                "item": batch["item"][rows],
                "timestamp": batch["timestamp"][rows],
                "rating": batch["rating"][rows],
            },
        )


class _DistinctIds(beam.CombineFn):
    """Sorted distinct values of numpy bytes arrays (one array per input)."""

    _COMPACT = 1 << 20  # compact the buffered arrays beyond this many values

    def create_accumulator(self):
        return []

    def add_input(self, acc, ids):
        acc.append(_unique(ids)[0])
        return self._compact(acc)

    def merge_accumulators(self, accs):
        return self._compact([ids for acc in accs for ids in acc])

    def _compact(self, acc):
        if sum(len(ids) for ids in acc) > self._COMPACT:
            return [_unique(np.concatenate(acc))[0]]
        return acc

    def extract_output(self, acc):
        return _unique(np.concatenate(acc))[0] if acc else np.array([], dtype=np.bytes_)


def _first_record(records: Iterable[dict]) -> dict:
    """A user listed twice: the smallest record wins, whatever the arrival order."""
    return min(records, key=lambda a: sorted(a.items()))


def _build_block(kv, catalog: np.ndarray):
    """(bucket, {"rows": fragments, "users": (user, attributes)}) -> (bucket, block).

    A block: ``"user"`` (sorted distinct ids, bytes), ``"length"`` (interactions
    per user), ``"item"`` (int32 catalog codes), ``"timestamp"``, ``"rating"``
    (all per interaction, user after user, each user's sorted by (timestamp,
    item id, rating): the order never depends on file order or sharding),
    ``"attributes"`` (user -> attribute dict) and ``"num_items"`` (catalog size).
    """
    bucket, grouped = kv
    fragments = list(grouped["rows"])
    if not fragments:
        return
    users, fragment_users = _unique(np.concatenate([f["user"] for f in fragments]))
    owner = np.repeat(fragment_users, np.concatenate([f["count"] for f in fragments]))
    item = _codes(np.concatenate([f["item"] for f in fragments]), catalog)
    timestamp = np.concatenate([f["timestamp"] for f in fragments])
    rating = np.concatenate([f["rating"] for f in fragments])
    del fragments
    # Catalog codes sort like the item ids; the item id, then the rating, break
    # timestamp ties.
    order = _sequence_order(owner, timestamp, item, rating)
    records: dict[bytes, list[dict]] = {}
    for u, attributes in grouped["users"]:
        records.setdefault(u, []).append(attributes)
    if records:
        present = set(users.tolist())
        records = {u: r for u, r in records.items() if u in present}
    yield (
        bucket,
        {
            "user": users,
            "length": np.bincount(owner, minlength=len(users)),
            "item": item[order],
            "timestamp": timestamp[order],
            "rating": rating[order],
            "attributes": {u: _first_record(r) for u, r in records.items()},
            "num_items": len(catalog),
        },
    )


# --------------------------------------------------------------------------
# Step 3: k-core
#
# Rounds never rewrite the blocks. Round j's data is the blocks minus two
# cumulative sets: the items found rare in rounds 0..j-1 (removed from every
# user), and the users found short in rounds 0..j-1. Item removal only
# shortens users, so a user is still there in round j exactly when its length
# without the items of rounds 0..j-2 is at least min_user. Each round is thus
# a vectorized count over the same blocks given (items removed before round
# j-1, items removed before round j): its `_KCoreState`.


@dataclasses.dataclass(frozen=True)
class _KCoreState:
    """Items removed before the previous round (None: this is round 0) and before this one."""

    removed_before_last: np.ndarray | None
    removed: np.ndarray  # sorted catalog codes


def _remaining_lengths(block: dict, removed: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(mask of the interactions whose item is not removed, or None: all; per-user lengths)."""
    if not len(removed):
        return None, block["length"]
    is_removed = np.zeros(block["num_items"], dtype=bool)
    is_removed[removed] = True
    keep = ~is_removed[block["item"]]
    running = np.concatenate([[0], np.cumsum(keep)])
    ends = np.cumsum(block["length"])
    return keep, running[ends] - running[ends - block["length"]]


def _k_core_view(block: dict, state: _KCoreState, min_user: int):
    """(users still there, mask of the interactions whose item is not removed or
    None: all, every user's length without the removed items)."""
    keep, lengths = _remaining_lengths(block, state.removed)
    if state.removed_before_last is None:
        present = np.ones(len(lengths), dtype=bool)
    else:
        present = _remaining_lengths(block, state.removed_before_last)[1] >= min_user
    return present, keep, lengths


def _sparse_counts(block: dict, users: np.ndarray, keep: np.ndarray | None, short: int = 0):
    """(item codes, their counts over `users` (a mask) and `keep`, `short`, catalog size)."""
    mask = np.repeat(users, block["length"])
    if keep is not None:
        mask &= keep
    counts = np.bincount(block["item"][mask], minlength=block["num_items"])
    codes = np.flatnonzero(counts)
    return codes, counts[codes], short, block["num_items"]


def _k_core_counts(kv, state: _KCoreState, min_user: int) -> tuple:
    """One block's part of a round: `_sparse_counts` over the users with at least
    `min_user` interactions, and the number of users shorter than that."""
    present, keep, lengths = _k_core_view(kv[1], state, min_user)
    long_enough = present & (lengths >= min_user)
    return _sparse_counts(kv[1], long_enough, keep, int((present & ~long_enough).sum()))


def _train_counts(kv, state: _KCoreState, min_user: int):
    """`_sparse_counts` of a train block as the k-core left it (nothing for other splits)."""
    if kv[0][0] == "train":
        present, keep, _ = _k_core_view(kv[1], state, min_user)
        yield _sparse_counts(kv[1], present, keep)


def _k_core_filter(block: dict, state: _KCoreState, min_user: int) -> dict:
    """A block as the k-core left it: its users still there, without removed items."""
    present, keep, lengths = _k_core_view(block, state, min_user)
    mask = np.repeat(present, block["length"])
    if keep is not None:
        mask &= keep
    if mask.all() and present.all():
        return block
    out = dict(block, user=block["user"][present], length=lengths[present])
    for column in ("item", "timestamp", "rating"):
        out[column] = block[column][mask]
    return out


class _SumCounts(beam.CombineFn):
    """Sums `_sparse_counts` parts: (dense per-item counts or None, summed short users)."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, acc, part):
        codes, counts, short, num_items = part
        total = np.zeros(num_items, dtype=np.int64) if acc[0] is None else acc[0]
        np.add.at(total, codes, counts)
        return total, acc[1] + short

    def merge_accumulators(self, accs):
        total, short = None, 0
        for counts, n in accs:
            short += n
            if counts is not None:
                total = counts.copy() if total is None else total + counts
        return total, short

    def extract_output(self, acc):
        return acc


def _rare_items(summed, min_item: int) -> tuple[np.ndarray, int]:
    """A round's result: (sorted codes of the items with fewer than `min_item`
    interactions among users that have at least `min_user`, number of users
    shorter than `min_user`)."""
    counts, short = summed
    if counts is None:
        return np.zeros(0, dtype=np.int64), short
    return np.flatnonzero((counts > 0) & (counts < min_item)), short


def _next_state(round_output, state: _KCoreState) -> _KCoreState:
    rare, _ = round_output
    return _KCoreState(state.removed, np.union1d(state.removed, rare).astype(np.int64))


def _k_core(p: beam.Pipeline, blocks, config: PreprocessConfig):
    """Iterated k-core on blocks; returns (the final `_KCoreState`, per-round stats).

    Beam graphs are static, so the rounds are unrolled `kcore_max_iterations`
    times; one more round only measures, and anything it would remove means the
    fixed point was not reached. `_k_core_filter` with the final state gives the
    filtered blocks.
    """
    min_u, min_i = config.min_user_interactions, config.min_item_interactions
    state = p | "KCoreStart" >> beam.Create([_KCoreState(None, np.zeros(0, dtype=np.int64))])
    stats = []
    for i in range(config.kcore_max_iterations + 1):
        result = (
            blocks
            | f"K{i}Count" >> beam.Map(_k_core_counts, beam.pvalue.AsSingleton(state), min_u)
            | f"K{i}Sum" >> beam.CombineGlobally(_SumCounts())
            | f"K{i}Round" >> beam.Map(_rare_items, min_i)
        )
        stats.append(
            result
            | f"K{i}Stats"
            >> beam.Map(
                lambda r, i=i: (
                    "kcore",
                    {"iteration": i, "users_removed": r[1], "items_removed": len(r[0])},
                )
            )
        )
        if i < config.kcore_max_iterations:
            state = result | f"K{i}Next" >> beam.Map(_next_state, beam.pvalue.AsSingleton(state))
    return state, stats


# --------------------------------------------------------------------------
# Step 4/5: split (in the bucket) and vocabularies


def _item_tables(train_counts, catalog: np.ndarray, item_genres: dict) -> dict:
    """Vocabularies and per-catalog-code lookup tables from train users' `_SumCounts`.

    Both vocabularies are frequency-ordered over train users' interactions,
    ties by token, reserved tokens first. Per code: ``"vocab_id"`` (OOV when
    no train user has the item) and the item's genres as genre vocab ids
    (``"genre_ids"`` from ``"genre_start"``, ``"genre_count"`` of them).
    """
    num_items = len(catalog)
    counts = train_counts[0]
    if counts is None:  # no train users
        counts = np.zeros(num_items, np.int64)
    seen = np.flatnonzero(counts)
    ranked = seen[np.lexsort((seen, -counts[seen]))]
    names = [i.decode("utf-8") for i in catalog.tolist()]
    reserved = len(F.RESERVED_TOKENS)
    vocab_id = np.full(num_items, F.OOV_ID, dtype=np.int64)
    vocab_id[ranked] = np.arange(reserved, reserved + len(ranked))
    genres = [item_genres.get(name, ()) for name in names]
    genre_counts: dict[str, int] = {}
    for code, n in zip(seen.tolist(), counts[seen].tolist()):
        for g in genres[code]:
            genre_counts[g] = genre_counts.get(g, 0) + n
    genre_tokens = list(F.RESERVED_TOKENS) + sorted(
        genre_counts, key=lambda g: (-genre_counts[g], g)
    )
    genre_index = {g: i for i, g in enumerate(genre_tokens)}
    genre_count = np.asarray([len(gs) for gs in genres], dtype=np.int64)
    return {
        "items": list(F.RESERVED_TOKENS) + [names[c] for c in ranked.tolist()],
        "genres": genre_tokens,
        "vocab_id": vocab_id,
        "genre_start": np.concatenate([[0], np.cumsum(genre_count)]).astype(np.int64),
        "genre_count": genre_count,
        "genre_ids": np.asarray(
            [genre_index.get(g, F.OOV_ID) for gs in genres for g in gs], dtype=np.int64
        ),
        "items_without_metadata": sum(name not in item_genres for name in names),
    }


# --------------------------------------------------------------------------
# Step 6: examples


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
_PARTS_DIR = "_parts"  # per-block sorted Examples, merged into shards, then deleted


def _part_path(root: str, bucket: tuple[str, int, int]) -> str:
    split, shard, part = bucket
    return posixpath.join(root, _PARTS_DIR, f"{split}-{shard:05d}-{part:03d}.bin")


def _write_part(path: str, records: list[tuple[bytes, bytes]]) -> None:
    """(user, serialized Example) records, in order, as length-prefixed pairs."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"".join(struct.pack("<II", len(k), len(v)) + k + v for k, v in records))


def _read_part(path: str) -> Iterator[tuple[bytes, bytes]]:
    with textio.open_binary(path) as f:
        while head := f.read(8):
            key_size, value_size = struct.unpack("<II", head)
            yield f.read(key_size), f.read(value_size)


class _WriteBlock(beam.DoFn):
    """Block, k-core filtered -> one `tf.train.Example` per user, sorted by user, in a part file.

    Main output: ((split, shard), part file path); tagged "stats": stat entries.
    """

    def __init__(self, config: PreprocessConfig, root: str):
        self._config = config
        self._root = root

    def process(self, kv, k_core, tables, catalog, attributes):
        cfg = self._config
        bucket, block = kv
        block = _k_core_filter(block, k_core, cfg.min_user_interactions)
        split = bucket[0]
        lengths = block["length"]
        if not len(lengths):
            return
        yield beam.pvalue.TaggedOutput("stats", (f"interactions_{split}", int(lengths.sum())))
        # `cut`, for all users at once.
        k = np.minimum(cfg.future_len, lengths - cfg.min_history_len)
        history_stop = lengths - k
        history_start = np.maximum(0, history_stop - cfg.max_len)
        longest = int(np.maximum(0, history_stop - history_start).max())
        yield beam.pvalue.TaggedOutput("stats", ("max_history_len", longest))

        items = block["item"]
        genre_count = tables["genre_count"][items]
        genre_end = np.cumsum(genre_count)
        genre_rows = np.repeat(
            tables["genre_start"][items] - (genre_end - genre_count), genre_count
        )
        genre_ids = tables["genre_ids"][genre_rows + np.arange(len(genre_rows))].tolist()
        genre_at = np.concatenate([[0], genre_end]).tolist()  # first genre of interaction i
        columns = (
            tables["vocab_id"][items].tolist(),
            catalog[items].tolist(),
            block["timestamp"].tolist(),
            block["rating"].tolist(),
        )
        genre_count = genre_count.tolist()
        starts = (np.cumsum(lengths) - lengths).tolist()
        user_attributes = block["attributes"]
        records, dropped = [], 0
        for user, n, start, h0, h1 in zip(
            block["user"].tolist(),
            lengths.tolist(),
            starts,
            history_start.tolist(),
            history_stop.tolist(),
        ):
            if n < cfg.min_history_len + 1:
                dropped += 1
                continue
            example = tf.train.Example()
            feats = example.features.feature
            _add_bytes(feats, F.USER_ID, [user])
            _add_ints(feats, F.HISTORY_LENGTH, [h1 - h0])
            for a, b, names in (
                (start + h0, start + h1, _HISTORY_FEATURES),
                (start + h1, start + n, _FUTURE_FEATURES),
            ):
                _add_ints(feats, names[0], columns[0][a:b])
                _add_bytes(feats, names[1], columns[1][a:b])
                _add_ints(feats, names[2], columns[2][a:b])
                _add_floats(feats, names[3], columns[3][a:b])
                _add_ints(feats, names[4], genre_ids[genre_at[a] : genre_at[b]])
                _add_ints(feats, names[5], genre_count[a:b])
            attrs = user_attributes.get(user, {})
            for name, classes in attributes:
                value = attrs.get(name)
                index = classes.index(value) if value in classes else -1
                _add_ints(feats, F.ATTRIBUTE_PREFIX + name, [index])
            records.append((user, example.SerializeToString(deterministic=True)))
        if dropped:
            yield beam.pvalue.TaggedOutput("stats", (_TOO_SHORT, dropped))
        if records:
            path = _part_path(self._root, bucket)
            _write_part(path, records)
            yield (split, bucket[1]), path


def shard_path(root: str, split: str, shard: int, num_shards: int) -> str:
    return posixpath.join(
        root, F.SPLIT_DIR.format(split), f"data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
    )


def _write_shard(kv, root: str, num_shards: int):
    """Merges a shard's sorted part files into its TFRecord file, streaming."""
    (split, shard), parts = kv
    path = shard_path(root, split, shard, num_shards)
    tf.io.gfile.makedirs(posixpath.dirname(path))
    readers = [_read_part(part) for part in sorted(p for p in parts if p is not None)]
    count = 0
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for _, serialized in heapq.merge(*readers, key=lambda record: record[0]):
            writer.write(serialized)
            count += 1
    return (f"users_{split}", count)


def _write_text(lines: Sequence[str], path: str) -> None:
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _write_bad(kv, root: str):
    name, records = kv
    records = sorted(records, key=lambda r: r.get("line", r.get("row")))
    _write_text(
        [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records],
        posixpath.join(root, F.BAD_RECORDS_DIR, name + ".jsonl"),
    )
    return ("bad_records", {name: len(records)})


def _write_vocab(tokens: list[str], path: str) -> tuple:
    _write_text(tokens, path)
    return ("vocab_size", {posixpath.basename(path): len(tokens)})


def _merge_stats(entries: Iterable[tuple[str, object]]) -> dict:
    out: dict = {"kcore": [], "bad_records": {}, "vocab_size": {}, "lines": {}}
    for key, value in entries:
        if key == "kcore":
            out["kcore"].append(value)
        elif key in ("bad_records", "vocab_size"):
            out[key].update(value)
        elif key == "attributes":
            out[key] = value
        elif key.startswith("max_"):
            out[key] = max(out.get(key, 0), value)
        elif key == "lines":
            table, n = value
            out["lines"][table] = out["lines"].get(table, 0) + n
        else:
            out[key] = out.get(key, 0) + value
    out["kcore"].sort(key=lambda s: s["iteration"])
    return out


def _attribute_classes(p: beam.Pipeline, users, config: PreprocessConfig, files: dict):
    """A singleton: ``[(attribute, [class, ...]), ...]``.

    Fixed per dataset, except for ``--dataset=interactions``, whose users
    file's values are counted (`interactions_source.attribute_classes`).
    """
    if config.dataset != "interactions" or "users" not in files:
        fixed = [(n, list(c)) for n, c in attribute_classes(config).items()]
        return p | "FixedAttributeClasses" >> beam.Create([fixed])
    own = config.interactions
    users_file = interactions_source.describe("users", files["users"])
    names = [n for _, n in interactions_source.attribute_names(users_file, own)]
    return (
        users
        | "AttributeValues" >> beam.FlatMap(lambda kv: kv[1].items())
        | "CountAttributeValues" >> beam.combiners.Count.PerElement()
        | "AllAttributeCounts" >> beam.combiners.ToList()
        | "AttributeClasses"
        >> beam.Map(interactions_source.attribute_classes, names, own.max_attribute_classes)
    )


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig, files: dict, root: str) -> None:
    """Adds every step to `p`; outputs go under `root` (the temporary version dir)."""
    if config.dataset == "synthetic":
        batches, items, users, bad, lines = _read_synthetic(p, config)
    elif config.source == "tfds":
        batches, items, users, bad, lines = _read_tfds(p, config)
    else:
        batches, items, users, bad, lines = _read_raw(p, config, files)
    # Plain str keys: GroupByKey needs deterministic coders (numpy.str_ is not).
    items = items | "ItemKeys" >> beam.Map(lambda r: (str(r[0]), tuple(str(g) for g in r[1])))
    users = users | "UserKeys" >> beam.Map(lambda r: (str(r[0]), dict(r[1])))
    attributes = _attribute_classes(p, users, config, files)

    catalog = (
        batches
        | "ItemIds" >> beam.Map(lambda batch: batch["item"])
        | "DistinctItems" >> beam.CombineGlobally(_DistinctIds())
    )
    fragments = batches | "ToBuckets" >> beam.FlatMap(_to_fragments, config)
    user_records = users | "UserBuckets" >> beam.Map(
        lambda kv: (bucket_of(kv[0].encode("utf-8"), config), (kv[0].encode("utf-8"), kv[1]))
    )
    blocks = (
        {"rows": fragments, "users": user_records}
        | "GroupBuckets" >> beam.CoGroupByKey()
        | "SortBlocks" >> beam.FlatMap(_build_block, beam.pvalue.AsSingleton(catalog))
    )
    k_core, kcore_stats = _k_core(p, blocks, config)

    item_genres = (
        items
        | "ItemByKey" >> beam.GroupByKey()
        | "FirstGenres" >> beam.Map(lambda kv: (kv[0], tuple(sorted(kv[1])[0])))
    )
    train_counts = (
        blocks
        | "TrainItems"
        >> beam.FlatMap(
            _train_counts, beam.pvalue.AsSingleton(k_core), config.min_user_interactions
        )
        | "CountTrainItems" >> beam.CombineGlobally(_SumCounts())
    )
    tables = train_counts | "ItemTables" >> beam.Map(
        _item_tables, beam.pvalue.AsSingleton(catalog), beam.pvalue.AsDict(item_genres)
    )
    parts = blocks | "MakeExamples" >> beam.ParDo(
        _WriteBlock(config, root),
        k_core=beam.pvalue.AsSingleton(k_core),
        tables=beam.pvalue.AsSingleton(tables),
        catalog=beam.pvalue.AsSingleton(catalog),
        attributes=beam.pvalue.AsSingleton(attributes),
    ).with_outputs("stats", main="parts")
    empty_shards = p | "AllShards" >> beam.Create(
        [((s, i), None) for s in F.SPLITS for i in range(config.num_shards)]
    )
    written = (
        (parts.parts, empty_shards)
        | "WithEmptyShards" >> beam.Flatten()
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(_write_shard, root, config.num_shards)
    )
    bad_written = (
        bad
        | "BadByFile" >> beam.Map(lambda r: (r["file"], r))
        | "GroupBad" >> beam.GroupByKey()
        | "WriteBad" >> beam.Map(_write_bad, root)
    )
    vocab_written = [
        tables
        | "WriteItemVocab"
        >> beam.Map(
            lambda t: _write_vocab(t["items"], posixpath.join(root, F.VOCAB_DIR, F.ITEM_VOCAB_FILE))
        ),
        tables
        | "WriteGenreVocab"
        >> beam.Map(
            lambda t: _write_vocab(
                t["genres"], posixpath.join(root, F.VOCAB_DIR, F.GENRE_VOCAB_FILE)
            )
        ),
    ]
    items_seen = tables | "ItemsWithoutMetadata" >> beam.Map(
        lambda t: ("items_without_metadata", t["items_without_metadata"])
    )
    lines_stat = lines | "LineStats" >> beam.Map(lambda tn: ("lines", tn))
    attributes_stat = attributes | "AttributeStats" >> beam.Map(lambda a: ("attributes", a))
    (
        [
            written,
            bad_written,
            parts.stats,
            items_seen,
            lines_stat,
            attributes_stat,
            *vocab_written,
            *kcore_stats,
        ]
        | "AllStats" >> beam.Flatten()
        | "MergeStats" >> beam.combiners.ToList()
        | "WriteStats"
        >> beam.Map(
            lambda entries: _write_text(
                [json.dumps(_merge_stats(entries), sort_keys=True)],
                posixpath.join(root, "_stats.json"),
            )
        )
    )


# --------------------------------------------------------------------------
# Schema and metadata


def schema_for(attributes: Iterable[str]):
    """The tensorflow_metadata Schema of the per-user Examples."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    scalars = {F.USER_ID: schema_pb2.BYTES, F.HISTORY_LENGTH: schema_pb2.INT}
    scalars.update({F.ATTRIBUTE_PREFIX + a: schema_pb2.INT for a in attributes})
    lists = {}
    for prefix in ("HISTORY", "FUTURE"):
        lists[getattr(F, f"{prefix}_ITEM_IDS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_RAW_ITEM_IDS")] = schema_pb2.BYTES
        lists[getattr(F, f"{prefix}_TIMESTAMPS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_RATINGS")] = schema_pb2.FLOAT
        lists[getattr(F, f"{prefix}_GENRE_IDS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_GENRE_COUNTS")] = schema_pb2.INT
    for name, kind in scalars.items():
        feature = schema.feature.add(name=name, type=kind)
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    for name, kind in lists.items():
        feature = schema.feature.add(name=name, type=kind)
        feature.value_count.min = 0
        feature.presence.min_fraction = 1.0
    return schema


class BadRecordsError(RuntimeError):
    """More unparsable input lines than --max_bad_fraction allows."""


class KCoreNotConvergedError(RuntimeError):
    """k-core filtering needed more than --kcore_max_iterations rounds."""


def _check(stats: dict, config: PreprocessConfig, tmp: str) -> None:
    bad = sum(stats["bad_records"].values())
    total = sum(stats["lines"].values())
    if total == 0:
        raise ValueError(f"no input records were read for --dataset={config.dataset}")
    if bad / total > config.max_bad_fraction:
        where = posixpath.join(tmp, F.BAD_RECORDS_DIR)
        per_file = ", ".join(f"{f}: {n}" for f, n in sorted(stats["bad_records"].items()))
        raise BadRecordsError(
            f"{bad} of {total} input records ({bad / total:.4%}) could not be parsed "
            f"({per_file}), more than --max_bad_fraction={config.max_bad_fraction}. "
            f"Each is listed with its file, line and reason in {where}/. Fix the input, "
            f"or raise --max_bad_fraction to skip them (they stay counted)."
        )
    last = stats["kcore"][-1]
    if last["users_removed"] or last["items_removed"]:
        raise KCoreNotConvergedError(
            f"k-core filtering did not converge in --kcore_max_iterations="
            f"{config.kcore_max_iterations} rounds (a further round would remove "
            f"{last['users_removed']} users and {last['items_removed']} items); "
            "raise --kcore_max_iterations."
        )


def _metadata(config, files, stats, attributes, version) -> dict:
    vocab = stats["vocab_size"]
    rounds = [s for s in stats["kcore"] if s["users_removed"] or s["items_removed"]]
    return {
        "dataset": config.dataset,
        "source": config.source,
        "version": version,
        "settings": config.output_settings(),
        "max_len": config.max_len,
        "max_history_len": stats.get("max_history_len", 0),  # longest history written
        "future_len": config.future_len,
        "item_feature": item_feature_name(config),
        # False when --dataset=interactions has no --rating_col (ratings written as 0).
        "has_ratings": config.dataset != "interactions" or config.interactions.has_ratings,
        "num_users": {s: stats.get(f"users_{s}", 0) for s in F.SPLITS},
        "num_interactions": {s: stats.get(f"interactions_{s}", 0) for s in F.SPLITS},
        "vocab_sizes": {"items": vocab[F.ITEM_VOCAB_FILE], "genres": vocab[F.GENRE_VOCAB_FILE]},
        "reserved_ids": {"pad": F.PAD_ID, "mask": F.MASK_ID, "oov": F.OOV_ID},
        "attributes": {name: {"classes": list(c)} for name, c in attributes.items()},
        "kcore": {
            "min_user_interactions": config.min_user_interactions,
            "min_item_interactions": config.min_item_interactions,
            "iterations": len(rounds),
            "rounds": stats["kcore"][:-1],
        },
        "split": {
            "train_percent": config.train_percent,
            "eval_percent": config.eval_percent,
            "test_percent": 100 - config.train_percent - config.eval_percent,
            "by": "sha256(user_id) % 100",
        },
        "num_shards": config.num_shards,
        "dropped_users": {_TOO_SHORT: stats.get(_TOO_SHORT, 0)},
        "items_without_metadata": stats.get("items_without_metadata", 0),
        "input_records": stats["lines"],
        "bad_records": {
            "total": sum(stats["bad_records"].values()),
            "by_file": stats["bad_records"],
            "max_bad_fraction": config.max_bad_fraction,
        },
        "source_files": {t: _fingerprint(p) for t, p in sorted(files.items())},
    }


def pipeline_options(beam_args: Sequence[str] = ()):
    """Beam `PipelineOptions` from the pass-through flags; ``--runner=DirectRunner``
    unless they name a runner."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, "--runner=DirectRunner")
    return PipelineOptions(args)


_DIRECT_RUNNER_NAMES = ("direct", "directrunner", "switchingdirectrunner")


def local_runner(options):
    """The runner object for `options` when they name the DirectRunner, else None.

    Beam's DirectRunner first tries its Prism runner, which downloads a binary
    from GitHub, and only then falls back to the FnApiRunner it uses for batch
    pipelines. We start that FnApiRunner directly, set up as DirectRunner does,
    so it honours ``--direct_num_workers`` and ``--direct_running_mode``. Other
    runners (None) are made by Beam from the options.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if not isinstance(name, str) or name.lower() not in _DIRECT_RUNNER_NAMES:
        return None
    from apache_beam.options.pipeline_options import DirectOptions

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1:
        logging.warning(
            "--direct_running_mode=multi_threading with several workers gave wrong output "
            "(blocks lost) and 'Invalid PaneInfoEncoding' crashes with Beam 2.77 on this "
            "pipeline; use multi_processing or in_memory"
        )
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(
        provision_info=fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
    )


def preprocess(config: PreprocessConfig) -> str:
    """Runs the pipeline unless its version already exists; returns the artifact dir."""
    files = resolve_inputs(config)
    version = version_of(config, files)
    final = posixpath.join(os.path.expanduser(config.output_dir), config.dataset, version)
    if tf.io.gfile.exists(posixpath.join(final, F.METADATA_FILE)):
        logging.info("reusing %s", final)
        return final
    tmp = final + ".partial"
    if tf.io.gfile.exists(tmp):  # left by an interrupted run: start clean
        tf.io.gfile.rmtree(tmp)
    tf.io.gfile.makedirs(tmp)

    options = pipeline_options(config.beam_args)
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        build_pipeline(p, config, files, tmp)
    parts = posixpath.join(tmp, _PARTS_DIR)
    if tf.io.gfile.exists(parts):
        tf.io.gfile.rmtree(parts)

    stats_path = posixpath.join(tmp, "_stats.json")
    with tf.io.gfile.GFile(stats_path) as f:
        stats = json.load(f)
    tf.io.gfile.remove(stats_path)
    _check(stats, config, tmp)
    attributes = {name: tuple(classes) for name, classes in stats["attributes"]}
    meta = _metadata(config, files, stats, attributes, version)
    _write_text([json.dumps(meta, indent=2, sort_keys=True)], posixpath.join(tmp, F.METADATA_FILE))
    from google.protobuf import text_format

    _write_text(
        [text_format.MessageToString(schema_for(attributes))],
        posixpath.join(tmp, F.SCHEMA_FILE),
    )
    tf.io.gfile.rename(tmp, final, overwrite=False)
    return final


# --------------------------------------------------------------------------
# Command line


def add_flags(parser: argparse.ArgumentParser, *, output_dir_alias: bool = True) -> None:
    """The preprocessing flags, shared with `bt_tf.train` (which preprocesses on demand).

    `--data_output_dir` is where artifacts go; here `--output_dir` is its alias,
    while `bt_tf.train` keeps `--output_dir` for the run directory.
    """
    d = PreprocessConfig()
    s = d.synthetic
    add = parser.add_argument
    add("--dataset", default=d.dataset, choices=DATASETS, help="which data (README: Datasets)")
    add(
        "--source",
        default=d.source,
        choices=("raw", "tfds"),
        help="raw files, or TFDS (ml-100k, ml-1m, ml-20m)",
    )
    add(
        "--data_dir",
        default=None,
        help="directory (or file) of the raw data; none: download MovieLens, generate synthetic",
    )
    names = ["--data_output_dir"] + (["--output_dir"] if output_dir_alias else [])
    add(
        *names,
        dest="data_output_dir",
        default=d.output_dir,
        help="where artifacts go (<dir>/<dataset>/<version>/; reused when present)",
    )
    add(
        "--cache_dir",
        default=None,
        help="downloads (none: ~/.cache/bt_tf/downloads) and TFDS data (none: TFDS's default)",
    )
    add(
        "--min_user_interactions",
        type=int,
        default=d.min_user_interactions,
        help="k-core: users with fewer interactions are dropped",
    )
    add(
        "--min_item_interactions",
        type=int,
        default=d.min_item_interactions,
        help="k-core: items with fewer interactions are dropped",
    )
    add(
        "--kcore_max_iterations",
        type=int,
        default=d.kcore_max_iterations,
        help="k-core rounds; more needed is an error",
    )
    add(
        "--future_len",
        type=int,
        default=d.future_len,
        help="each user's last interactions held out as the future (downstream labels)",
    )
    add(
        "--min_history_len",
        type=int,
        default=d.min_history_len,
        help="the future shrinks for short users so the history keeps this many",
    )
    add("--max_len", type=int, default=d.max_len, help="most recent history items kept")
    add("--num_shards", type=int, default=d.num_shards, help="TFRecord files per split")
    add(
        "--max_bad_fraction",
        type=float,
        default=d.max_bad_fraction,
        help="fraction of unparsable input records above which the run fails",
    )
    add("--chunk_bytes", type=int, default=d.chunk_bytes, help="bytes per parallel raw read")
    add("--tfds_shards", type=int, default=d.tfds_shards, help="parallel reads of a TFDS split")
    add("--synthetic_users", type=int, default=s.num_users, help="users of --dataset=synthetic")
    add("--synthetic_items", type=int, default=s.num_items, help="items of --dataset=synthetic")
    add("--synthetic_seed", type=int, default=s.seed, help="seed of --dataset=synthetic")
    _add_interactions_flags(parser)


def _add_interactions_flags(parser: argparse.ArgumentParser) -> None:
    o = interactions_source.InteractionsConfig()
    group = parser.add_argument_group(
        "--dataset=interactions (your own data; see pipelines/interactions_source.py)"
    )
    add = group.add_argument
    add("--user_col", default=o.user_col, help="user id column (default: %(default)s)")
    add("--item_col", default=o.item_col, help="item id column (default: %(default)s)")
    add(
        "--time_col",
        default=o.time_col,
        help="timestamp column: Unix s/ms or ISO 8601, naive = UTC (default: %(default)s)",
    )
    add(
        "--rating_col",
        default=o.rating_col,
        help="rating column; empty: no ratings, liked-item task unavailable (default: none)",
    )
    add(
        "--items_file",
        default=o.items_file,
        help="optional item file with --item_col and --category_col (categories = genres)",
    )
    add(
        "--category_col",
        default=o.category_col,
        help="item category column (default: %(default)s)",
    )
    add(
        "--category_sep",
        default=o.category_sep,
        help="separator inside a category value; empty: no splitting (default: %(default)s)",
    )
    add(
        "--users_file",
        default=o.users_file,
        help="optional user file: every column but --user_col becomes an attribute",
    )
    add(
        "--max_attribute_classes",
        type=int,
        default=o.max_attribute_classes,
        help="most frequent values kept per user attribute, rarer = unknown (default: %(default)s)",
    )


def _interactions_config(args: argparse.Namespace) -> interactions_source.InteractionsConfig:
    return interactions_source.InteractionsConfig(
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        items_file=args.items_file,
        category_col=args.category_col,
        category_sep=args.category_sep,
        users_file=args.users_file,
        max_attribute_classes=args.max_attribute_classes,
    )


def config_from_flags(args: argparse.Namespace, beam_args: Sequence[str] = ()) -> PreprocessConfig:
    """The config of parsed flags; `UserError` (naming the flag) for a bad combination."""
    try:
        return _config_from_flags(args, beam_args)
    except ValueError as err:
        raise UserError(str(err)) from None


def _config_from_flags(args: argparse.Namespace, beam_args: Sequence[str]) -> PreprocessConfig:
    return PreprocessConfig(
        dataset=args.dataset,
        source=args.source,
        data_dir=args.data_dir,
        output_dir=args.data_output_dir,
        cache_dir=args.cache_dir,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        kcore_max_iterations=args.kcore_max_iterations,
        future_len=args.future_len,
        min_history_len=args.min_history_len,
        max_len=args.max_len,
        num_shards=args.num_shards,
        max_bad_fraction=args.max_bad_fraction,
        chunk_bytes=args.chunk_bytes,
        tfds_shards=args.tfds_shards,
        synthetic=dataclasses.replace(
            synthetic.SyntheticConfig(),
            num_users=args.synthetic_users,
            num_items=args.synthetic_items,
            seed=args.synthetic_seed,
        ),
        interactions=_interactions_config(args),
        beam_args=tuple(beam_args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        "pipelines.preprocess",
        description=cli.summary(__doc__),
        usage="%(prog)s [--flag=VALUE ...]",
        epilog="Any other --flag is a Beam pipeline option (e.g. --runner=...).",
    )
    add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = preprocess(config_from_flags(args, beam_args))
    with tf.io.gfile.GFile(posixpath.join(path, F.METADATA_FILE)) as f:
        meta = json.load(f)
    print(
        f"wrote {path}\n  users {meta['num_users']}  interactions {meta['num_interactions']}\n"
        f"  vocab {meta['vocab_sizes']}  bad records {meta['bad_records']['total']}"
    )
    return path


if __name__ == "__main__":
    cli.run_main(main)
