"""The preprocessing steps as named Beam `PTransform`s (the pipeline: `pipelines.preprocess`).

    ReadSource     raw files / TFDS / the generator -> `Parsed` (interactions, items,
                   users, bad records, records read)
    AttributeClasses  the user attributes' classes (a singleton)
    Split          users -> (split, shard, part) buckets -> sorted blocks (`Blocks`)
    KCore          iterated k-core over the blocks -> its final state (`KCoreResult`)
    BuildVocab     item and genre vocabularies over train users (a singleton)
    MakeExamples   one `tf.train.Example` per user, merged into the shards (`Examples`)
    WriteBadRecords, WriteVocab, WriteStats   the other artifacts

Every record a step drops is counted by a `Metrics.counter` in the
``"preprocess"`` namespace (`DROP_COUNTERS`); the counts that `metadata.json`
reports travel as (key, value) stat entries merged by `metadata.merge_stats`.
The numpy work lives in `pipelines.columnar`, `pipelines.blocks` and
`pipelines.examples`; these transforms only wire it into Beam.

A transform that gives several PCollections returns a NamedTuple of them
(`Parsed`, `Blocks`, `KCoreResult`, `Examples`) and its ``expand`` has no return
annotation: Beam reads that annotation as the output type hint, accepts only
``PCollection[...]``, ``PDone`` or ``None`` there (not a tuple or dict of
PCollections), and logs a warning for anything else each time the transform is
applied. The docstrings name what each returns.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from bt_tf import features as F
from pipelines import (
    blocks,
    columnar,
    examples,
    inputs,
    interactions_source,
    synthetic,
    textio,
    tfds_source,
)
from pipelines.config import (
    STATS_FILE,
    PreprocessConfig,
    bad_records_path,
    part_path,
    shard_path,
    vocab_path,
)
from pipelines.metadata import merge_stats
from pipelines.sources import MAX_LINE_BYTES, BadRecord

COUNTER_NAMESPACE = "preprocess"
DROP_COUNTERS = (
    "bad_records",  # unparsable input lines / Parquet rows (routed to bad_records/)
    "duplicate_item_records",  # an item listed again: its first genres (sorted) win
    "duplicate_user_records",  # a user listed again: the smallest record wins
    "user_records_without_interactions",  # a user record whose user has no interactions
    "kcore_dropped_users",  # users the k-core removed
    "kcore_dropped_interactions",  # interactions the k-core removed (their user or item)
    examples.TOO_SHORT,  # users with too few interactions for a history and a future
)


def count(name: str, n: int) -> None:
    """Adds `n` to the drop counter `name` (one of `DROP_COUNTERS`)."""
    if n:
        Metrics.counter(COUNTER_NAMESPACE, name).inc(n)


# --------------------------------------------------------------------------
# ReadSource


class _Step(beam.PTransform):
    """A step set up by the run's config (and, for the readers, its input files)."""

    def __init__(self, config: PreprocessConfig, files: dict[str, str] | None = None):
        super().__init__()
        self._config = config
        self._files = files or {}


class Parsed(NamedTuple):
    """What a reader gives: five PCollections."""

    interactions: beam.PCollection  # columnar batches with positions (`pipelines.columnar`)
    items: beam.PCollection  # (item id, genres)
    users: beam.PCollection  # (user id, {attribute: value})
    bad: beam.PCollection  # one dict per bad record: file, path, line (or row), reason, text
    lines: beam.PCollection  # (table, records read, good and bad)


_OUTPUTS = ("items", "users", "bad", "lines")
_PIECE_BYTES = 4 << 20  # lines parsed at once by the vectorized path


def _emit(table: str, records: Iterable[tuple]):
    """Routes good records: interactions (with their input position appended) as
    columnar batches, others tagged by table."""
    if table == "interactions":
        yield from columnar.batched(records)
    else:
        for record in records:
            yield beam.pvalue.TaggedOutput(table, record)


def _emit_tail(table: str, bad: list[dict], good: int):
    """A chunk's (row group's) last outputs: its bad records, and the records it read."""
    count("bad_records", len(bad))
    for record in bad:
        yield beam.pvalue.TaggedOutput("bad", record)
    yield beam.pvalue.TaggedOutput("lines", (table, good + len(bad)))


def bad_record(path: str, number: int, reason: str, line: bytes, key: str = "line") -> dict:
    """The bad_records/ entry of line (or Parquet row, ``key="row"``) `number` of `path`."""
    return {
        "file": os.path.basename(path),
        "path": path,
        key: number,
        "reason": reason,
        "text": line[:500].decode("utf-8", errors="backslashreplace"),
    }


class ParseChunk(beam.DoFn):
    """Parses the lines of one chunk; main output: columnar interaction batches.

    Tagged outputs: "items", "users" (records), "bad" (one dict per bad line),
    "lines" ((table, number of non-blank data lines)). MovieLens ratings lines
    are parsed with numpy (`columnar.parse_rating_lines`); all others, and any
    line it does not accept, one by one with the table's parser. Each
    interaction's position is (its file's rank, its line number).
    """

    def __init__(self, tables: dict, ranks: dict):
        self._tables = tables  # path -> sources.Table
        self._ranks = ranks  # path -> rank among the interaction files (`interaction_ranks`)

    def process(self, chunk: textio.Chunk, newlines_before: dict):
        table = self._tables[chunk.path]
        rank = self._ranks.get(chunk.path, 0)
        base = int(columnar.position(rank, 0))  # + line number: `columnar.position`
        layout = columnar.rating_lines_of(table.parse) if chunk.table == "interactions" else None
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
                ok, columns = columnar.parse_rating_lines(buf, starts, ends, layout)
                if len(columns["user"]):
                    counted += len(columns["user"])
                    where = columnar.position(rank, number + np.flatnonzero(ok))
                    yield columnar.with_positions(columns, where)
                slow = np.flatnonzero(~ok).tolist()
            for i in slow:
                line = piece[starts[i] : ends[i]]
                try:
                    if len(line) > MAX_LINE_BYTES:
                        raise BadRecord(
                            f"line of {len(line):,} bytes (at most {MAX_LINE_BYTES:,} are parsed)"
                        )
                    record = table.parse(line)
                except BadRecord as err:
                    bad.append(bad_record(chunk.path, number + i, str(err), line))
                    continue
                if record is not None:
                    counted += 1
                    records.append(record + (base + number + i,))
        yield from _emit(chunk.table, records)
        yield from _emit_tail(chunk.table, bad, counted)


class ParseParquet(beam.DoFn):
    """Reads one Parquet row group; the same outputs as `ParseChunk`.

    Bad rows are reported with their 1-based row number in the file (``"row"``);
    an interaction's position is (its file's rank, that row number).
    """

    def __init__(self, parsers: dict, ranks: dict):
        self._parsers = parsers  # path -> (columns, RowParser)
        self._ranks = ranks  # path -> rank among the interaction files

    def process(self, part: interactions_source.ParquetPart):
        columns, parser = self._parsers[part.path]
        base = int(columnar.position(self._ranks.get(part.path, 0), 0))
        bad, counted = [], {"n": 0}

        def records() -> Iterator[tuple]:
            for row, record, reason, values in interactions_source.read_parquet_part(
                part, columns, parser
            ):
                if record is None:
                    text = json.dumps(values, ensure_ascii=False, default=str)
                    bad.append(bad_record(part.path, row, reason, text.encode("utf-8"), key="row"))
                else:
                    counted["n"] += 1
                    yield record + (base + row,)

        yield from _emit(part.table, records())
        yield from _emit_tail(part.table, bad, counted["n"])


def interaction_ranks(files: dict[str, str]) -> dict[str, int]:
    """Interaction file path -> its rank in the sorted list of the run's interaction files.

    Labels are ``"interactions"`` or ``"interactions/<file name>"``
    (`inputs.resolve_inputs`): sorted labels are the files in sorted name
    order, the order `interactions_source.find_interaction_files` lists them.
    """
    labels = sorted(label for label in files if inputs.table_of(label) == "interactions")
    return {files[label]: rank for rank, label in enumerate(labels)}


class ReadRaw(_Step):
    """Raw files -> `Parsed` (line-oriented files in parallel byte-range chunks, Parquet by
    row group)."""

    def expand(self, pbegin):
        tables, parquet = inputs.readers(self._config, self._files)
        ranks = interaction_ranks(self._files)
        by_label = sorted(self._files.items())
        plans = [
            c
            for label, path in by_label
            if path in tables
            for c in textio.plan_chunks(inputs.table_of(label), path, self._config.chunk_bytes)
        ]
        parts = [
            part
            for label, path in by_label
            if path in parquet
            for part in interactions_source.parquet_parts(inputs.table_of(label), path)
        ]
        branches = []
        if plans:
            branches.append(self._read_text(pbegin, tables, ranks, plans))
        if parts:
            branches.append(self._read_parquet(pbegin, parquet, ranks, parts))
        if len(branches) == 1:
            return Parsed(*(getattr(branches[0], tag) for tag in Parsed._fields))
        return Parsed(
            *(
                tuple(getattr(b, tag) for b in branches)
                | f"Merge{tag.capitalize()}Branches" >> beam.Flatten()
                for tag in Parsed._fields
            )
        )

    @staticmethod
    def _read_text(pbegin, tables: dict, ranks: dict, plans: list):
        """Chunks of line-oriented files -> `ParseChunk`'s outputs (exact line numbers)."""
        chunks = pbegin | "Chunks" >> beam.Create(plans)
        newlines = (
            chunks
            | "CountNewlines" >> beam.Map(textio.count_newlines)
            | "NewlineTable" >> beam.combiners.ToDict()
            | "FirstLines" >> beam.Map(textio.first_line_numbers, plans)
        )
        return (
            chunks
            | "SpreadChunks" >> beam.Reshuffle()
            | "Parse"
            >> beam.ParDo(
                ParseChunk(tables, ranks), beam.pvalue.AsSingleton(newlines)
            ).with_outputs(*_OUTPUTS, main="interactions")
        )

    @staticmethod
    def _read_parquet(pbegin, parsers: dict, ranks: dict, parts: list):
        """Parquet row groups -> `ParseParquet`'s outputs."""
        return (
            pbegin
            | "RowGroups" >> beam.Create(parts)
            | "SpreadRowGroups" >> beam.Reshuffle()
            | "ReadParquet"
            >> beam.ParDo(ParseParquet(parsers, ranks)).with_outputs(*_OUTPUTS, main="interactions")
        )


def tfds_shard(shard: int, dataset: str, num_shards: int, data_dir: str | None):
    """One shard of a TFDS MovieLens split: interactions batched, other tables tagged.

    An interaction's position is its example's index in the TFDS train split
    (`tfds_source.shard_start`), the same for any number of shards; when TFDS
    does not know the split's size (mock data), (shard, index in the shard).
    """
    rows = []
    for table, record in tfds_source.tfds_records(dataset, shard, num_shards, data_dir):
        if table == "interactions":
            rows.append(record)
        else:
            yield beam.pvalue.TaggedOutput(table, record)
    yield beam.pvalue.TaggedOutput("lines", ("interactions", len(rows)))
    start = tfds_source.shard_start(dataset, shard, num_shards, data_dir)  # now prepared
    if start is None:
        start = int(columnar.position(shard, 0))
    yield from columnar.batched(r + (start + i,) for i, r in enumerate(rows))


def _user_json(record: tuple) -> tuple[str, str]:
    """(user, attributes) -> (user, attributes as canonical JSON): hashable, for Distinct."""
    return record[0], json.dumps(record[1], sort_keys=True)


def _user_from_json(kv: tuple[str, str]) -> tuple[str, dict]:
    return kv[0], json.loads(kv[1])


class ReadTfds(_Step):
    """TFDS ``movielens/*-ratings`` -> `Parsed`: every rating repeats its item and user, so
    both are made distinct."""

    def expand(self, pbegin):
        cfg = self._config
        parsed = (
            pbegin
            | "TfdsShards" >> beam.Create(range(cfg.tfds_shards))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadTfds"
            >> beam.FlatMap(tfds_shard, cfg.dataset, cfg.tfds_shards, cfg.cache_dir).with_outputs(
                "items", "users", "lines", main="interactions"
            )
        )
        items = parsed.items | "DistinctTfdsItems" >> beam.Distinct()
        users = (
            parsed.users
            | "UserJson" >> beam.Map(_user_json)
            | "DistinctUsers" >> beam.Distinct()
            | "UserRecords" >> beam.Map(_user_from_json)
        )
        bad = pbegin | "NoBadRecords" >> beam.Create([])
        return Parsed(parsed.interactions, items, users, bad, parsed.lines)


def synthetic_block(block: int, config: synthetic.SyntheticConfig):
    """One block of generated users: users tagged, interactions as columnar batches.

    Positions are (block, row in the block): ties keep the generation order.
    """
    interactions, users = synthetic.generate_block(config, block)
    for user in users:
        yield beam.pvalue.TaggedOutput("users", user)
    n = len(interactions["user"])
    yield beam.pvalue.TaggedOutput("lines", ("interactions", n))
    interactions = dict(interactions, user=columnar.utf8(interactions["user"]))
    interactions["item"] = columnar.utf8(interactions["item"])
    for start in range(0, n, columnar.BATCH_ROWS):
        batch = {k: v[start : start + columnar.BATCH_ROWS] for k, v in interactions.items()}
        rows = np.arange(start, start + len(batch["user"]))
        yield columnar.with_positions(batch, columnar.position(block, rows))


class ReadSynthetic(_Step):
    """The seeded generator (`pipelines.synthetic`) -> `Parsed`, a block of users at a time."""

    def expand(self, pbegin):
        cfg = self._config.synthetic
        parsed = (
            pbegin
            | "Blocks" >> beam.Create(range(synthetic.num_blocks(cfg)))
            | "SpreadBlocks" >> beam.Reshuffle()
            | "Generate"
            >> beam.FlatMap(synthetic_block, cfg).with_outputs(
                "users", "lines", main="interactions"
            )
        )
        items = pbegin | "Catalog" >> beam.Create(synthetic.item_records(cfg))
        bad = pbegin | "NoBadRecords" >> beam.Create([])
        return Parsed(parsed.interactions, items, parsed.users, bad, parsed.lines)


def item_key(record: tuple) -> tuple[str, tuple[str, ...]]:
    """(item id, genres) with plain str: GroupByKey needs deterministic coders
    (numpy.str_ is not)."""
    return str(record[0]), tuple(str(g) for g in record[1])


def user_key(record: tuple) -> tuple[str, dict]:
    """(user id, attributes) with a plain str id and a plain dict."""
    return str(record[0]), dict(record[1])


class ReadSource(_Step):
    """The dataset's reader (synthetic, TFDS or raw files) -> `Parsed`; items and users keyed
    by str."""

    def expand(self, pbegin):
        if self._config.dataset == "synthetic":
            parsed = pbegin | "Synthetic" >> ReadSynthetic(self._config)
        elif self._config.source == "tfds":
            parsed = pbegin | "Tfds" >> ReadTfds(self._config)
        else:
            parsed = pbegin | "Raw" >> ReadRaw(self._config, self._files)
        return parsed._replace(
            items=parsed.items | "ItemKeys" >> beam.Map(item_key),
            users=parsed.users | "UserKeys" >> beam.Map(user_key),
        )


# --------------------------------------------------------------------------
# AttributeClasses


def _attribute_values(user: tuple[str, dict]):
    return user[1].items()


class AttributeClasses(_Step):
    """Users -> a singleton ``[(attribute, [class, ...]), ...]``.

    Fixed per dataset, except for ``--dataset=interactions``, whose users
    file's values are counted (`interactions_source.attribute_classes`).
    """

    def expand(self, users):
        config = self._config
        if config.dataset != "interactions" or "users" not in self._files:
            fixed = [(n, list(c)) for n, c in inputs.attribute_classes(config).items()]
            return users.pipeline | "FixedAttributeClasses" >> beam.Create([fixed])
        own = config.interactions
        users_file = interactions_source.describe("users", self._files["users"])
        names = [n for _, n in interactions_source.attribute_names(users_file, own)]
        return (
            users
            | "AttributeValues" >> beam.FlatMap(_attribute_values)
            | "CountAttributeValues" >> beam.combiners.Count.PerElement()
            | "AllAttributeCounts" >> beam.combiners.ToList()
            | "AttributeClasses"
            >> beam.Map(interactions_source.attribute_classes, names, own.max_attribute_classes)
        )


# --------------------------------------------------------------------------
# Split: buckets of users -> sorted blocks


class DistinctIds(beam.CombineFn):
    """Sorted distinct values of numpy bytes arrays (one array per input)."""

    _COMPACT = 1 << 20  # compact the buffered arrays beyond this many values

    def create_accumulator(self):
        return []

    def add_input(self, acc, ids):
        acc.append(columnar.unique(ids)[0])
        return self._compact(acc)

    def merge_accumulators(self, accs):
        return self._compact([ids for acc in accs for ids in acc])

    def _compact(self, acc):
        if sum(len(ids) for ids in acc) > self._COMPACT:
            return [columnar.unique(np.concatenate(acc))[0]]
        return acc

    def extract_output(self, acc):
        return columnar.unique(np.concatenate(acc))[0] if acc else np.array([], dtype=np.bytes_)


class Blocks(NamedTuple):
    catalog: beam.PCollection  # singleton: sorted distinct item ids (bytes)
    blocks: beam.PCollection  # ((split, shard, part), block): `blocks.build_block`


def _item_ids(batch: dict) -> np.ndarray:
    return batch["item"]


def _user_bucket(user: tuple[str, dict], config: PreprocessConfig):
    """(user, attributes) -> (bucket, (user as UTF-8 bytes, attributes))."""
    key = user[0].encode("utf-8")
    return blocks.bucket_of(key, config), (key, user[1])


def _build_block(kv, catalog: np.ndarray):
    """(bucket, {"rows": fragments, "users": records}) -> (bucket, block); none without rows."""
    bucket, grouped = kv
    fragments = list(grouped["rows"])
    if not fragments:
        count("user_records_without_interactions", len(list(grouped["users"])))
        return
    block, drops = blocks.build_block(fragments, grouped["users"], catalog)
    for reason, n in drops.items():
        count(reason, n)
    yield bucket, block


class Split(_Step):
    """(interactions, users) -> `Blocks`: each user's (split, shard, part) bucket from a
    hash of its id (`blocks.bucket_of`), the buckets grouped into sorted blocks."""

    def expand(self, interactions_and_users):
        batches, users = interactions_and_users
        catalog = (
            batches
            | "ItemIds" >> beam.Map(_item_ids)
            | "DistinctItems" >> beam.CombineGlobally(DistinctIds())
        )
        fragments = batches | "ToBuckets" >> beam.FlatMap(blocks.to_fragments, self._config)
        user_records = users | "UserBuckets" >> beam.Map(_user_bucket, self._config)
        grouped = (
            {"rows": fragments, "users": user_records}
            | "GroupBuckets" >> beam.CoGroupByKey()
            | "SortBlocks" >> beam.FlatMap(_build_block, beam.pvalue.AsSingleton(catalog))
        )
        return Blocks(catalog, grouped)


# --------------------------------------------------------------------------
# KCore


class SumCounts(beam.CombineFn):
    """Sums `blocks` sparse counts: (dense per-item counts or None, summed short users)."""

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


class KCoreResult(NamedTuple):
    state: beam.PCollection  # singleton `blocks.KCoreState`: apply with `blocks.k_core_filter`
    stats: beam.PCollection  # ("kcore", {"iteration", "users_removed", "items_removed"})


def _round_stat(round_output, iteration: int) -> tuple[str, dict]:
    rare, short = round_output
    return "kcore", {"iteration": iteration, "users_removed": short, "items_removed": len(rare)}


class KCore(_Step):
    """Blocks -> `KCoreResult`: iterated k-core (see `pipelines.blocks`, "k-core").

    Beam graphs are static, so the rounds are unrolled `kcore_max_iterations`
    times; one more round only measures, and anything it would remove means the
    fixed point was not reached (`metadata.check_stats` fails the run).
    """

    def expand(self, block_pcoll):
        config = self._config
        min_u, min_i = config.min_user_interactions, config.min_item_interactions
        start = blocks.KCoreState(None, np.zeros(0, dtype=np.int64))
        state = block_pcoll.pipeline | "KCoreStart" >> beam.Create([start])
        stats = []
        for i in range(config.kcore_max_iterations + 1):
            result = (
                block_pcoll
                | f"K{i}Count"
                >> beam.Map(blocks.k_core_counts, beam.pvalue.AsSingleton(state), min_u)
                | f"K{i}Sum" >> beam.CombineGlobally(SumCounts())
                | f"K{i}Round" >> beam.Map(blocks.rare_items, min_i)
            )
            stats.append(result | f"K{i}Stats" >> beam.Map(_round_stat, i))
            if i < config.kcore_max_iterations:
                state = result | f"K{i}Next" >> beam.Map(
                    blocks.next_state, beam.pvalue.AsSingleton(state)
                )
        return KCoreResult(state, stats | "KCoreStats" >> beam.Flatten())


# --------------------------------------------------------------------------
# BuildVocab


def first_genres(kv: tuple[str, Iterable[tuple[str, ...]]]) -> tuple[str, tuple[str, ...]]:
    """An item listed more than once: its smallest genre tuple wins."""
    records = sorted(kv[1])
    count("duplicate_item_records", len(records) - 1)
    return kv[0], tuple(records[0])


class BuildVocab(_Step):
    """(blocks, items) -> a singleton of `blocks.item_tables`: the item and genre
    vocabularies over train users as the k-core left them, and per-item lookups."""

    def __init__(self, config: PreprocessConfig, k_core, catalog):
        super().__init__(config)
        self._k_core = k_core
        self._catalog = catalog

    def expand(self, blocks_and_items):
        block_pcoll, items = blocks_and_items
        item_genres = (
            items | "ItemByKey" >> beam.GroupByKey() | "FirstGenres" >> beam.Map(first_genres)
        )
        train_counts = (
            block_pcoll
            | "TrainItems"
            >> beam.FlatMap(
                blocks.train_counts,
                beam.pvalue.AsSingleton(self._k_core),
                self._config.min_user_interactions,
            )
            | "CountTrainItems" >> beam.CombineGlobally(SumCounts())
        )
        return train_counts | "ItemTables" >> beam.Map(
            blocks.item_tables,
            beam.pvalue.AsSingleton(self._catalog),
            beam.pvalue.AsDict(item_genres),
        )


# --------------------------------------------------------------------------
# MakeExamples


# Main output declared: Beam's inference would count the tagged "stats" in it.
@beam.typehints.with_output_types(tuple[tuple[str, int], str])
class WriteBlock(beam.DoFn):
    """Block -> k-core filter -> one Example per user, sorted by user, in a part file.

    Main output: ((split, shard), part file path); tagged "stats": stat entries.
    """

    def __init__(self, config: PreprocessConfig, root: str):
        self._config = config
        self._root = root

    def process(self, kv, k_core, tables, catalog, attributes):
        cfg = self._config
        bucket, block = kv
        kept = blocks.k_core_filter(block, k_core, cfg.min_user_interactions)
        count("kcore_dropped_users", len(block["user"]) - len(kept["user"]))
        count("kcore_dropped_interactions", len(block["item"]) - len(kept["item"]))
        if not len(kept["length"]):
            return
        out = examples.encode_block(kept, tables, catalog, attributes, cfg)
        split = bucket[0]
        yield beam.pvalue.TaggedOutput("stats", (f"interactions_{split}", out.interactions))
        yield beam.pvalue.TaggedOutput("stats", ("max_history_len", out.max_history_len))
        if out.too_short:
            count(examples.TOO_SHORT, out.too_short)
            yield beam.pvalue.TaggedOutput("stats", (examples.TOO_SHORT, out.too_short))
        if out.records:
            path = part_path(self._root, bucket)
            examples.write_part(path, out.records)
            yield (split, bucket[1]), path


def write_shard(kv, root: str, num_shards: int) -> tuple[str, int]:
    """((split, shard), part paths or None) -> the shard's TFRecord file; its user count stat."""
    (split, shard), parts = kv
    path = shard_path(root, split, shard, num_shards)
    return f"users_{split}", examples.merge_parts([p for p in parts if p is not None], path)


class Examples(NamedTuple):
    shards: beam.PCollection  # ("users_<split>", Examples written): one per shard
    stats: beam.PCollection  # interactions per split, longest history, users too short


class MakeExamples(_Step):
    """Blocks -> `Examples`: every user's Example in its split's shard under `root`
    (each of the `num_shards` shards of every split is written, empty or not)."""

    def __init__(self, config: PreprocessConfig, root: str, *, k_core, tables, catalog, attributes):
        super().__init__(config)
        self._root = root
        self._side = {
            "k_core": k_core,
            "tables": tables,
            "catalog": catalog,
            "attributes": attributes,
        }

    def expand(self, block_pcoll):
        num_shards = self._config.num_shards
        side = {name: beam.pvalue.AsSingleton(p) for name, p in self._side.items()}
        parts = block_pcoll | "WriteParts" >> beam.ParDo(
            WriteBlock(self._config, self._root), **side
        ).with_outputs("stats", main="parts")
        every_shard = block_pcoll.pipeline | "AllShards" >> beam.Create(
            [((s, i), None) for s in F.SPLITS for i in range(num_shards)]
        )
        written = (
            (parts.parts, every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(write_shard, self._root, num_shards)
        )
        return Examples(written, parts.stats)


# --------------------------------------------------------------------------
# The other artifacts


def _bad_by_file(record: dict) -> tuple[str, dict]:
    return record["file"], record


def write_bad(kv, root: str) -> tuple[str, dict]:
    """(file name, its bad records) -> bad_records/<file>.jsonl, by line (row) number."""
    name, records = kv
    records = sorted(records, key=lambda r: r.get("line", r.get("row")))
    textio.write_text(
        [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records],
        bad_records_path(root, name),
    )
    return "bad_records", {name: len(records)}


class WriteBadRecords(beam.PTransform):
    """Bad records -> one JSON-lines file per input file; a stat entry per file."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, bad):
        return (
            bad
            | "BadByFile" >> beam.Map(_bad_by_file)
            | "GroupBad" >> beam.GroupByKey()
            | "WriteBad" >> beam.Map(write_bad, self._root)
        )


def write_vocab(tables: dict, key: str, path: str) -> tuple[str, dict]:
    """Vocabulary `key` ("items" or "genres") of `tables`, one token a line."""
    tokens = tables[key]
    textio.write_text(tokens, path)
    return "vocab_size", {posixpath.basename(path): len(tokens)}


def _items_without_metadata(tables: dict) -> tuple[str, int]:
    return "items_without_metadata", tables["items_without_metadata"]


class WriteVocab(beam.PTransform):
    """Item tables -> vocab/items.txt and vocab/genres.txt; their stat entries."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, tables):
        items_path = vocab_path(self._root, F.ITEM_VOCAB_FILE)
        genres_path = vocab_path(self._root, F.GENRE_VOCAB_FILE)
        return [
            tables | "WriteItemVocab" >> beam.Map(write_vocab, "items", items_path),
            tables | "WriteGenreVocab" >> beam.Map(write_vocab, "genres", genres_path),
            tables | "ItemsWithoutMetadata" >> beam.Map(_items_without_metadata),
        ] | "VocabStats" >> beam.Flatten()


def _keyed(value, key: str) -> tuple[str, object]:
    return key, value


def write_stats(entries: list, root: str) -> None:
    """Every stat entry, merged (`metadata.merge_stats`), as `root`/_stats.json."""
    textio.write_text(
        [json.dumps(merge_stats(entries), sort_keys=True)], posixpath.join(root, STATS_FILE)
    )


class WriteStats(beam.PTransform):
    """Stat entries (with the records read and the attribute classes) -> _stats.json."""

    def __init__(self, root: str, *, lines, attributes):
        super().__init__()
        self._root = root
        self._lines = lines
        self._attributes = attributes

    def expand(self, stats):
        lines = self._lines | "LineStats" >> beam.Map(_keyed, "lines")
        attributes = self._attributes | "AttributeStats" >> beam.Map(_keyed, "attributes")
        return (
            (stats, lines, attributes)
            | "AllStats" >> beam.Flatten()
            | "MergeStats" >> beam.combiners.ToList()
            | "WriteStats" >> beam.Map(write_stats, self._root)
        )
