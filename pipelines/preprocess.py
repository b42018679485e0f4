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
   line numbers (`pipelines.textio`), Parquet files into row groups
   (`pipelines.interactions_source`); unparsable lines go to `bad_records/`.
2. group: interactions are grouped per user and sorted by (timestamp, item id).
3. k-core: per-user item lists are filtered alternately by user length and
   item count, unrolled `kcore_max_iterations` times; the run fails if that
   was not enough to converge.
4. split: a stable hash of the user id gives train/eval/test.
5. vocab: item and genre vocabularies, frequency-ordered over train users only.
6. examples: history/future cut, one `tf.train.Example` per user, written to a
   fixed number of shards per split, sorted by user id (byte-identical reruns).
Everything is written to `<version>.partial/` and renamed at the very end, so
an interrupted run leaves no partial version and a rerun starts clean.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
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


def _columnar(rows: list[tuple]) -> dict[str, np.ndarray]:
    users, items, stamps, ratings = zip(*rows)
    return {
        "user": np.asarray(users, dtype=str),
        "item": np.asarray(items, dtype=str),
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


class _ParseChunk(beam.DoFn):
    """Parses the lines of one chunk; main output: columnar interaction batches.

    Tagged outputs: "items", "users" (records), "bad" (one dict per bad line),
    "lines" ((table, number of non-blank data lines)).
    """

    def __init__(self, tables: dict):
        self._tables = tables  # path -> sources.Table

    def setup(self):
        from pipelines import sources

        self._bad_record = sources.BadRecord

    def process(self, chunk: textio.Chunk, newlines_before: dict):
        table = self._tables[chunk.path]
        bad, counted = [], {"n": 0}

        def records() -> Iterator[tuple]:
            """Good records; bad lines are collected in `bad` (they are few)."""
            for line_number, line in textio.read_lines(chunk, newlines_before[chunk.key]):
                if table.header and line_number == 1:
                    continue
                try:
                    record = table.parse(line)
                except self._bad_record as err:
                    bad.append(_bad(chunk.path, line_number, str(err), line))
                    continue
                if record is not None:
                    counted["n"] += 1
                    yield record

        yield from _emit(chunk.table, records())
        for record in bad:
            yield beam.pvalue.TaggedOutput("bad", record)
        yield beam.pvalue.TaggedOutput("lines", (chunk.table, counted["n"] + len(bad)))


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
# Step 2: group per user


def split_by_user(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, dict]]:
    """Columnar batch -> (user id, that user's columnar rows) pairs."""
    order = np.argsort(batch["user"], kind="stable")
    users = batch["user"][order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    for start, end in zip(starts, ends):
        rows = order[start:end]
        yield str(users[start]), {k: v[rows] for k, v in batch.items() if k != "user"}


def merge_user(kv: tuple[str, Iterable[dict]]) -> tuple[str, dict]:
    """All parts of one user's rows -> one sequence sorted by (timestamp, item id).

    The item id, then the rating, break timestamp ties, so the order never
    depends on file order or on how the input was sharded.
    """
    user, parts = kv
    parts = list(parts)
    seq = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    order = np.lexsort((seq["rating"], seq["item"], seq["timestamp"]))
    return user, {k: v[order] for k, v in seq.items()}


# --------------------------------------------------------------------------
# Step 3: k-core


class _CountIds(beam.CombineFn):
    """Counts string ids arriving as numpy arrays (one array per element).

    The accumulator buffers arrays and compacts them into (unique ids, counts)
    once more than `_COMPACT` ids are buffered, so adding is O(len(input)).
    """

    _COMPACT = 1 << 20

    def create_accumulator(self):
        return {"ids": [], "counts": [], "size": 0}

    def add_input(self, acc, ids):
        acc["ids"].append(ids)
        acc["counts"].append(np.ones(len(ids), dtype=np.int64))
        acc["size"] += len(ids)
        return self._compact(acc) if acc["size"] > self._COMPACT else acc

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for acc in accs:
            merged["ids"] += acc["ids"]
            merged["counts"] += acc["counts"]
            merged["size"] += acc["size"]
        return self._compact(merged) if merged["size"] > self._COMPACT else merged

    @staticmethod
    def _compact(acc):
        if not acc["ids"]:
            return {"ids": [np.array([], dtype=str)], "counts": [np.array([], np.int64)], "size": 0}
        ids, counts = np.concatenate(acc["ids"]), np.concatenate(acc["counts"])
        unique, inverse = np.unique(ids, return_inverse=True)
        totals = np.bincount(inverse.ravel(), weights=counts, minlength=len(unique))
        return {"ids": [unique], "counts": [totals.astype(np.int64)], "size": len(unique)}

    def extract_output(self, acc):
        acc = self._compact(acc)
        return acc["ids"][0], acc["counts"][0]


_KCORE_BLOCK = 2000  # users per k-core element: rounds cost O(blocks), not O(users)


def _to_block(users: list) -> dict[str, np.ndarray]:
    """[(user, items)] -> one columnar block of many users' item lists."""
    return {
        "user": np.asarray([u for u, _ in users], dtype=str),
        "length": np.asarray([len(items) for _, items in users], dtype=np.int64),
        "item": np.concatenate([items for _, items in users]),
        "position": np.concatenate([np.arange(len(items), dtype=np.int32) for _, items in users]),
    }


def _from_block(block: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Block -> (user, positions of its surviving interactions)."""
    ends = np.cumsum(block["length"])
    for user, start, end in zip(block["user"].tolist(), ends - block["length"], ends):
        yield user, block["position"][start:end]


class _KCoreRound(beam.CombineFn):
    """One k-core round's global view over blocks of users.

    Output: (sorted item ids with fewer than `min_item` interactions among
    users that have at least `min_user`, number of users shorter than `min_user`).
    """

    def __init__(self, min_user: int, min_item: int):
        self._min_user, self._min_item = min_user, min_item
        self._count = _CountIds()

    def create_accumulator(self):
        return self._count.create_accumulator(), 0

    def add_input(self, acc, block):
        long_enough = block["length"] >= self._min_user
        items = block["item"][np.repeat(long_enough, block["length"])]
        return self._count.add_input(acc[0], items), acc[1] + int((~long_enough).sum())

    def merge_accumulators(self, accs):
        accs = list(accs)
        return self._count.merge_accumulators([a[0] for a in accs]), sum(a[1] for a in accs)

    def extract_output(self, acc):
        ids, n = self._count.extract_output(acc[0])
        return np.sort(ids[n < self._min_item]), acc[1]


def _k_core_step(block, last_round, min_user: int):
    """Drops the users the last round found short, then its rare items."""
    rare, _ = last_round
    long_enough = block["length"] >= min_user
    keep = np.repeat(long_enough, block["length"])
    if len(rare):
        keep &= ~np.isin(block["item"], rare)
    if keep.all():
        return block
    owner = np.repeat(np.arange(len(block["length"])), block["length"])
    lengths = np.bincount(owner[keep], minlength=len(block["length"]))
    return {
        "user": block["user"][long_enough],
        "length": lengths[long_enough],
        "item": block["item"][keep],
        "position": block["position"][keep],
    }


def _k_core(user_seqs, catalog, config: PreprocessConfig):
    """Iterated k-core on users' item lists; returns (kept, per-round stats).

    `catalog` is the sorted array of distinct item ids (a singleton PCollection).
    `kept` maps each surviving user to the positions (into its sorted sequence)
    of the interactions that survive. Beam graphs are static, so the rounds are
    unrolled `kcore_max_iterations` times; one more round only measures, and
    anything it would remove means the fixed point was not reached. Rounds
    work on blocks of `_KCORE_BLOCK` users with vectorized numpy, so a round's
    cost is a pass over the data in a few hundred elements.
    """
    min_u, min_i = config.min_user_interactions, config.min_item_interactions
    # Rounds carry int32 item codes (index into the sorted distinct item ids),
    # not strings: 8 bytes per interaction and integer set operations.
    kept = (
        user_seqs
        | "Project"
        >> beam.Map(
            lambda kv, ids: (kv[0], np.searchsorted(ids, kv[1]["item"]).astype(np.int32)),
            beam.pvalue.AsSingleton(catalog),
        )
        | "BatchUsers"
        >> beam.BatchElements(min_batch_size=_KCORE_BLOCK, max_batch_size=_KCORE_BLOCK)
        | "ToBlocks" >> beam.Map(_to_block)
    )
    rounds = []
    for i in range(config.kcore_max_iterations + 1):
        if i:
            kept = kept | f"K{i}Filter" >> beam.Map(
                _k_core_step, beam.pvalue.AsSingleton(rounds[-1]), min_u
            )
        rounds.append(kept | f"K{i}Round" >> beam.CombineGlobally(_KCoreRound(min_u, min_i)))
    stats = [
        r
        | f"K{i}Stats"
        >> beam.Map(
            lambda r, i=i: (
                "kcore",
                {"iteration": i, "users_removed": r[1], "items_removed": len(r[0])},
            )
        )
        for i, r in enumerate(rounds)
    ]
    return kept | "FromBlocks" >> beam.FlatMap(_from_block), stats


def _apply_k_core(kv):
    user, grouped = kv
    if not grouped["kept"]:
        return
    (positions,) = grouped["kept"]
    (seq,) = grouped["seq"]
    user_records = grouped["user"]
    # A user listed twice: the smallest record wins, whatever the arrival order.
    attributes = min(user_records, key=lambda a: sorted(a.items())) if user_records else {}
    yield user, {k: v[positions] for k, v in seq.items()}, attributes


# --------------------------------------------------------------------------
# Step 4/5: split and vocabularies


def split_of(user_id: str, train_percent: int, eval_percent: int) -> str:
    """Stable split by a hash of the user id (the same on every machine and run)."""
    bucket = int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < train_percent:
        return "train"
    return "eval" if bucket < train_percent + eval_percent else "test"


def _frequency_vocab(counts: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """Tokens by descending count, ties by token: reserved ids first."""
    ids, n = counts
    order = np.lexsort((ids, -n))
    return list(F.RESERVED_TOKENS) + [str(t) for t in ids[order]]


def _train_genres(row, item_genres: dict) -> np.ndarray:
    _, seq, _ = row
    return np.asarray(
        [g for item in seq["item"] for g in item_genres.get(str(item), ())], dtype=str
    )


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


def _int_feature(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _bytes_feature(values) -> tf.train.Feature:
    return tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values])
    )


def _float_feature(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


class _MakeExample(beam.DoFn):
    """(user, seq, attributes) -> ((split, shard), (user, serialized Example))."""

    def __init__(self, config: PreprocessConfig):
        self._config = config

    def process(self, row, item_vocab, genre_vocab, item_genres, attributes):
        user, seq, attrs = row
        cfg = self._config
        split = split_of(user, cfg.train_percent, cfg.eval_percent)
        n = len(seq["item"])
        if n < cfg.min_history_len + 1:
            yield beam.pvalue.TaggedOutput("dropped", _TOO_SHORT)
            return
        history, future = cut(n, cfg.future_len, cfg.min_history_len, cfg.max_len)
        feats = {
            F.USER_ID: _bytes_feature([user]),
            F.HISTORY_LENGTH: _int_feature([history.stop - history.start]),
        }
        for part, names in (
            (
                history,
                (
                    F.HISTORY_ITEM_IDS,
                    F.HISTORY_RAW_ITEM_IDS,
                    F.HISTORY_TIMESTAMPS,
                    F.HISTORY_RATINGS,
                    F.HISTORY_GENRE_IDS,
                    F.HISTORY_GENRE_COUNTS,
                ),
            ),
            (
                future,
                (
                    F.FUTURE_ITEM_IDS,
                    F.FUTURE_RAW_ITEM_IDS,
                    F.FUTURE_TIMESTAMPS,
                    F.FUTURE_RATINGS,
                    F.FUTURE_GENRE_IDS,
                    F.FUTURE_GENRE_COUNTS,
                ),
            ),
        ):
            raw = [str(i) for i in seq["item"][part]]
            genres = [item_genres.get(i, ()) for i in raw]
            feats[names[0]] = _int_feature([item_vocab.get(i, F.OOV_ID) for i in raw])
            feats[names[1]] = _bytes_feature(raw)
            feats[names[2]] = _int_feature(seq["timestamp"][part].tolist())
            feats[names[3]] = _float_feature(seq["rating"][part].tolist())
            feats[names[4]] = _int_feature(
                [genre_vocab.get(g, F.OOV_ID) for gs in genres for g in gs]
            )
            feats[names[5]] = _int_feature([len(gs) for gs in genres])
        for name, classes in attributes:
            value = attrs.get(name)
            index = classes.index(value) if value in classes else -1
            feats[F.ATTRIBUTE_PREFIX + name] = _int_feature([index])
        example = tf.train.Example(features=tf.train.Features(feature=feats))
        shard = int(hashlib.sha256(user.encode("utf-8")).hexdigest()[:8], 16) % cfg.num_shards
        yield (split, shard), (user, example.SerializeToString(deterministic=True))


def shard_path(root: str, split: str, shard: int, num_shards: int) -> str:
    return posixpath.join(
        root, F.SPLIT_DIR.format(split), f"data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
    )


def _write_shard(kv, root: str, num_shards: int):
    (split, shard), records = kv
    path = shard_path(root, split, shard, num_shards)
    tf.io.gfile.makedirs(posixpath.dirname(path))
    records = sorted(r for r in records if r is not None)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for _, serialized in records:
            writer.write(serialized)
    return (f"users_{split}", len(records))


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

    user_seqs = (
        batches
        | "SplitByUser" >> beam.FlatMap(split_by_user)
        | "GroupByUser" >> beam.GroupByKey()
        | "SortUser" >> beam.Map(merge_user)
    )
    catalog = (
        user_seqs
        | "AllItems" >> beam.Map(lambda kv: kv[1]["item"])
        | "DistinctItems" >> beam.CombineGlobally(_CountIds())
        | "SortedItemIds" >> beam.Map(lambda counts: counts[0])
    )
    kept, kcore_stats = _k_core(user_seqs, catalog, config)
    rows = (
        {"seq": user_seqs, "kept": kept, "user": users}
        | "JoinUser" >> beam.CoGroupByKey()
        | "ApplyKCore" >> beam.FlatMap(_apply_k_core)
    )
    item_genres = (
        items
        | "ItemByKey" >> beam.GroupByKey()
        | "FirstGenres" >> beam.Map(lambda kv: (kv[0], tuple(sorted(kv[1])[0])))
    )
    split = lambda row: split_of(row[0], config.train_percent, config.eval_percent)  # noqa: E731
    train_rows = rows | "TrainUsers" >> beam.Filter(lambda row: split(row) == "train")
    item_vocab = (
        train_rows
        | "TrainItems" >> beam.Map(lambda row: row[1]["item"])
        | "CountTrainItems" >> beam.CombineGlobally(_CountIds())
        | "ItemVocab" >> beam.Map(_frequency_vocab)
    )
    genre_vocab = (
        train_rows
        | "TrainGenres" >> beam.Map(_train_genres, beam.pvalue.AsDict(item_genres))
        | "CountTrainGenres" >> beam.CombineGlobally(_CountIds())
        | "GenreVocab" >> beam.Map(_frequency_vocab)
    )
    vocab_index = lambda tokens: {t: i for i, t in enumerate(tokens)}  # noqa: E731
    examples = rows | "MakeExamples" >> beam.ParDo(
        _MakeExample(config),
        item_vocab=beam.pvalue.AsSingleton(item_vocab | "ItemIndex" >> beam.Map(vocab_index)),
        genre_vocab=beam.pvalue.AsSingleton(genre_vocab | "GenreIndex" >> beam.Map(vocab_index)),
        item_genres=beam.pvalue.AsDict(item_genres),
        attributes=beam.pvalue.AsSingleton(attributes),
    ).with_outputs("dropped", main="examples")
    empty_shards = p | "AllShards" >> beam.Create(
        [((s, i), None) for s in F.SPLITS for i in range(config.num_shards)]
    )
    written = (
        (examples.examples, empty_shards)
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
        item_vocab
        | "WriteItemVocab"
        >> beam.Map(_write_vocab, posixpath.join(root, F.VOCAB_DIR, F.ITEM_VOCAB_FILE)),
        genre_vocab
        | "WriteGenreVocab"
        >> beam.Map(_write_vocab, posixpath.join(root, F.VOCAB_DIR, F.GENRE_VOCAB_FILE)),
    ]
    interactions = rows | "CountInteractions" >> beam.Map(
        lambda row: (f"interactions_{split(row)}", len(row[1]["item"]))
    )
    dropped = examples.dropped | "CountDropped" >> beam.Map(lambda reason: (reason, 1))
    longest = (
        rows
        | "HistoryLengths"
        >> beam.Map(
            lambda row: cut(
                len(row[1]["item"]), config.future_len, config.min_history_len, config.max_len
            )[0]
        )
        | "LongestHistory" >> beam.Map(lambda h: ("max_history_len", max(0, h.stop - h.start)))
    )
    items_seen = catalog | "ItemsWithoutMetadata" >> beam.Map(
        lambda ids, genres: ("items_without_metadata", int(sum(i not in genres for i in ids))),
        beam.pvalue.AsDict(item_genres),
    )
    lines_stat = lines | "LineStats" >> beam.Map(lambda tn: ("lines", tn))
    attributes_stat = attributes | "AttributeStats" >> beam.Map(lambda a: ("attributes", a))
    (
        [
            written,
            bad_written,
            interactions,
            dropped,
            longest,
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

    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(config.beam_args))
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, config, files, tmp)

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
