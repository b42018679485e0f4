"""Each step of the preprocessing pipeline on its own: a small `TestPipeline` + `assert_that`
(DirectRunner, in process), and the drop counters it reports."""

import collections
import json
import logging
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.typehints.decorators import IOTypeHints

from bt_tf import features as F
from pipelines import blocks, columnar, synthetic, transforms
from pipelines.config import InteractionsConfig, PreprocessConfig
from pipelines.examples import TOO_SHORT
from pipelines.metadata import merge_stats
from pipelines.preprocess import local_runner, pipeline_options

OWN = InteractionsConfig(user_col="u", item_col="i", time_col="t", rating_col="r")


def _pipeline() -> test_pipeline.TestPipeline:
    options = pipeline_options()
    return test_pipeline.TestPipeline(runner=local_runner(options), options=options)


def _run(p: test_pipeline.TestPipeline) -> dict[str, int]:
    """Runs `p`; its drop counters by name."""
    result = p.run()
    result.wait_until_finish()
    query = MetricsFilter().with_namespace(transforms.COUNTER_NAMESPACE)
    return {c.key.metric.name: c.committed for c in result.metrics().query(query)["counters"]}


def _batch(rows, first: int = 0) -> dict[str, np.ndarray]:
    """(user, item, timestamp, rating) rows -> a columnar batch; row k at input position
    ``first + k``."""
    users, items, stamps, ratings = zip(*rows)
    batch = {
        "user": np.array([u.encode() for u in users], dtype=np.bytes_),
        "item": np.array([i.encode() for i in items], dtype=np.bytes_),
        "timestamp": np.asarray(stamps, dtype=np.int64),
        "rating": np.asarray(ratings, dtype=np.float32),
    }
    return columnar.with_positions(batch, np.arange(first, first + len(rows)))


def _rows(batches) -> list[tuple]:
    """Columnar batches -> sorted (user, item, timestamp, rating) rows."""
    rows = []
    for b in batches:
        rows += zip(
            [u.decode() for u in b["user"].tolist()],
            [i.decode() for i in b["item"].tolist()],
            b["timestamp"].tolist(),
            b["rating"].tolist(),
        )
    return sorted(rows)


def _block_rows(kv) -> list[tuple]:
    """(bucket, block) -> (bucket, user, item code, timestamp) per interaction, in block order."""
    bucket, block = kv
    users = np.repeat(block["user"], block["length"]).tolist()
    return [
        (bucket, u.decode(), int(i), int(t))
        for u, i, t in zip(users, block["item"].tolist(), block["timestamp"].tolist())
    ]


def _blocks(rows, config, catalog=None, users=()):
    """(bucket, block) pairs of `rows`, built without Beam (`blocks.build_block`)."""
    batch = _batch(rows)
    catalog = np.unique(batch["item"]) if catalog is None else catalog
    out = []
    for bucket, fragment in blocks.to_fragments(batch, config):
        records = [
            (u.encode(), a) for u, a in users if blocks.bucket_of(u.encode(), config) == bucket
        ]
        out.append((bucket, blocks.build_block([fragment], records, catalog)[0]))
    return out, catalog


def test_read_source_routes_bad_lines_with_file_and_line_and_counts_them(tmp_path):
    data = tmp_path / "log.csv"
    data.write_text("u,i,t,r\na,x,10,4\nb,y,20,5\nc,z,soon,3\n\na,y,30,1\n")
    config = PreprocessConfig(dataset="interactions", data_dir=str(data), interactions=OWN)
    files = {"interactions/log.csv": str(data)}
    p = _pipeline()
    parsed = p | transforms.ReadSource(config, files)
    rows = parsed.interactions | beam.combiners.ToList() | beam.Map(_rows)
    assert_that(
        rows,
        equal_to([[("a", "x", 10, 4.0), ("a", "y", 30, 1.0), ("b", "y", 20, 5.0)]]),
        label="Good",
    )
    bad = parsed.bad | beam.Map(lambda r: (r["file"], r["line"], r["text"], "soon" in r["reason"]))
    assert_that(bad, equal_to([("log.csv", 4, "c,z,soon,3", True)]), label="Bad")
    assert_that(parsed.lines, equal_to([("interactions", 4)]), label="Lines")
    assert _run(p) == {"bad_records": 1}


def test_attribute_classes_are_counted_from_a_users_file(tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("u,tier\na,gold\nb,gold\nc,blue\n")
    own = InteractionsConfig(users_file=str(users), user_col="u")
    config = PreprocessConfig(dataset="interactions", data_dir=str(tmp_path), interactions=own)
    p = _pipeline()
    records = p | beam.Create([("a", {"tier": "gold"}), ("b", {"tier": "gold"}), ("c", {})])
    classes = records | transforms.AttributeClasses(config, {"users": str(users)})
    assert_that(classes, equal_to([[("tier", ["gold"])]]))
    _run(p)


def test_split_buckets_users_and_sorts_each_users_interactions():
    config = PreprocessConfig(num_shards=2)
    rows = [("a", "y", 30, 1.0), ("b", "x", 5, 2.0), ("a", "z", 10, 3.0), ("a", "x", 10, 4.0)]
    users = [("a", {"g": "1"}), ("a", {"g": "0"}), ("ghost", {"g": "1"})]
    p = _pipeline()
    batches = p | "Batches" >> beam.Create([_batch(rows[:2]), _batch(rows[2:], first=2)])
    split = (batches, p | "Users" >> beam.Create(users)) | transforms.Split(config)
    assert_that(split.catalog | beam.Map(list), equal_to([[b"x", b"y", b"z"]]), label="Catalog")
    bucket = {u: blocks.bucket_of(u.encode(), config) for u in "ab"}
    # By time; "z" and "x" share a timestamp: input order (z first), not id order.
    expected = [(bucket["a"], "a", 2, 10), (bucket["a"], "a", 0, 10), (bucket["a"], "a", 1, 30)]
    expected.append((bucket["b"], "b", 0, 5))
    assert_that(split.blocks | beam.FlatMap(_block_rows), equal_to(expected), label="Blocks")
    attributes = split.blocks | beam.FlatMap(lambda kv: kv[1]["attributes"].items())
    assert_that(attributes, equal_to([(b"a", {"g": "0"})]), label="Attributes")
    assert _run(p) == {"duplicate_user_records": 1, "user_records_without_interactions": 1}


def test_build_block_breaks_ties_by_position_whatever_the_fragment_order():
    """A user's same-second interactions: by input position, wherever (in which
    fragment, in what arrival order) the rows come from; other users' rows too."""
    config = PreprocessConfig(num_shards=1)
    # "a" has 4 interactions at t=7 in input order w, z, x, y (positions 3, 5, 8, 9),
    # spread over three batches; "b" one at t=7 and one earlier.
    rows = [
        ("a", "w", 7, 5.0, 3),
        ("b", "x", 7, 1.0, 4),
        ("a", "z", 7, 1.0, 5),
        ("a", "v", 2, 2.0, 6),
        ("b", "y", 1, 3.0, 7),
        ("a", "x", 7, 4.0, 8),
        ("a", "y", 7, 4.0, 9),
    ]
    batches = []
    for part in (rows[:2], rows[2:5], rows[5:]):
        batch = _batch([r[:4] for r in part])
        batches.append(columnar.with_positions(batch, np.asarray([r[4] for r in part])))
    catalog = np.unique(np.concatenate([b["item"] for b in batches]))

    def block_of(fragment_batches):
        fragments = [f for b in fragment_batches for _, f in blocks.to_fragments(b, config)]
        return blocks.build_block(fragments, [], catalog)[0]

    first = block_of(batches)
    names = [catalog[c].decode() for c in first["item"]]
    assert first["user"].tolist() == [b"a", b"b"] and first["length"].tolist() == [5, 2]
    assert names == ["v", "w", "z", "x", "y", "y", "x"]
    assert first["timestamp"].tolist() == [2, 7, 7, 7, 7, 1, 7]
    assert first["rating"].tolist() == [2.0, 5.0, 1.0, 4.0, 4.0, 3.0, 1.0]
    for order in ([2, 1, 0], [1, 2, 0], [2, 0, 1]):
        other = block_of([batches[i] for i in order])
        for key in ("user", "length", "item", "timestamp", "rating"):
            assert other[key].tolist() == first[key].tolist(), (order, key)

    # Batches and fragments carry 4-byte offsets from a base; positions 2**40 apart
    # (two files' ranks in one batch, which the readers never make) keep 8 bytes, and
    # their order.
    fragments = {f["user"][0]: f for _, f in blocks.to_fragments(batches[1], config)}
    assert {u: int(f["position_base"]) for u, f in fragments.items()} == {b"a": 5, b"b": 5}
    assert fragments[b"a"]["position"].tolist() == [0, 1]  # positions 5 and 6
    assert fragments[b"b"]["position"].tolist() == [2]  # position 7
    assert fragments[b"a"]["position"].dtype == np.uint32
    wide = _batch([("a", "x", 7, 1.0), ("a", "y", 7, 1.0), ("a", "z", 7, 1.0)])
    where = columnar.position(np.array([1, 0, 1]), np.array([2, 9, 1]))
    (_, fragment), *_ = blocks.to_fragments(columnar.with_positions(wide, where), config)
    assert fragment["position"].dtype == np.int64
    block = blocks.build_block([fragment], [], np.array([b"x", b"y", b"z"]))[0]
    assert block["item"].tolist() == [1, 2, 0]  # y (file 0), then z (file 1, line 1), x


def test_k_core_iterates_to_the_fixed_point_and_reports_each_round():
    # min 2/2: item "w" is rare; without it user "c" is short, which makes "v" rare.
    config = PreprocessConfig(
        min_user_interactions=2, min_item_interactions=2, kcore_max_iterations=3
    )
    rows = [
        (u, i, t, 1.0)
        for t, (u, i) in enumerate(
            [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "v"), ("c", "w"), ("d", "v")]
        )
    ]
    block_kvs, catalog = _blocks(rows, config)
    p = _pipeline()
    result = p | beam.Create(block_kvs) | transforms.KCore(config)
    removed = result.state | beam.Map(lambda s: [catalog[c].decode() for c in s.removed])
    assert_that(removed, equal_to([["v", "w"]]), label="Removed")
    rounds = result.stats | beam.Map(
        lambda kv: (kv[1]["iteration"], kv[1]["users_removed"], kv[1]["items_removed"])
    )
    # Round 0: "w" (and "v": only one user long enough has it) rare; "d" short.
    assert_that(rounds, equal_to([(0, 1, 2), (1, 1, 0), (2, 0, 0), (3, 0, 0)]), label="Rounds")
    _run(p)


def test_build_vocab_ranks_train_items_by_count_and_first_genres_win():
    config = PreprocessConfig(
        min_user_interactions=1, min_item_interactions=1, train_percent=100, eval_percent=0
    )
    rows = [
        ("a", "x", 1, 1.0),
        ("a", "y", 2, 1.0),
        ("b", "y", 3, 1.0),
        ("b", "z", 4, 1.0),
        ("c", "y", 5, 1.0),
    ]
    block_kvs, catalog = _blocks(rows, config)
    items = [("y", ("drama",)), ("x", ("comedy", "drama")), ("y", ("action",))]
    p = _pipeline()
    state = p | "State" >> beam.Create([blocks.KCoreState(None, np.zeros(0, dtype=np.int64))])
    tables = (p | "Blocks" >> beam.Create(block_kvs), p | "Items" >> beam.Create(items)) | (
        transforms.BuildVocab(config, state, p | "Catalog" >> beam.Create([catalog]))
    )
    vocabs = tables | beam.Map(
        lambda t: (t["items"][3:], t["genres"][3:], t["items_without_metadata"])
    )
    # y: 3 users, x and z: 1 (ties by id); genres: action (y, 3), comedy and drama (x, 1).
    assert_that(vocabs, equal_to([(["y", "x", "z"], ["action", "comedy", "drama"], 1)]))
    assert _run(p) == {"duplicate_item_records": 1}


def _read_shards(root: str) -> dict[str, list[str]]:
    out = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(root, "Split-*", "*.gz"))):
        users = [
            tf.train.Example.FromString(r.numpy()).features.feature[F.USER_ID].bytes_list.value[0]
            for r in tf.data.TFRecordDataset(path, compression_type="GZIP")
        ]
        out[os.path.relpath(path, root)] = [u.decode() for u in users]
    return out


def test_make_examples_writes_every_shard_sorted_and_counts_drops(tmp_path):
    config = PreprocessConfig(
        num_shards=2, min_user_interactions=2, min_history_len=2, future_len=1
    )
    # "a": 5 interactions (kept), "b": 2 (too short for a history of 2 and a future),
    # "c": 1 (dropped by the k-core, which needs 2).
    rows = [("a", "x", t, 1.0) for t in range(5)] + [("b", "x", 7, 1.0), ("b", "x", 8, 1.0)]
    rows.append(("c", "x", 9, 1.0))
    block_kvs, catalog = _blocks(rows, config)
    tables = blocks.item_tables((np.array([8]), 0), catalog, {})
    root = str(tmp_path)
    p = _pipeline()
    side = {
        "k_core": p
        | "State" >> beam.Create([blocks.KCoreState(np.zeros(0, np.int64), np.zeros(0, np.int64))]),
        "tables": p | "Tables" >> beam.Create([tables]),
        "catalog": p | "Catalog" >> beam.Create([catalog]),
        "attributes": p | "Attributes" >> beam.Create([[]]),
    }
    out = p | "Blocks" >> beam.Create(block_kvs) | transforms.MakeExamples(config, root, **side)
    split = {u: blocks.bucket_of(u.encode(), config)[0] for u in "ab"}
    users = out.shards | "SumUsers" >> beam.CombinePerKey(sum)
    expected = {f"users_{s}": int(s == split["a"]) for s in F.SPLITS}
    assert_that(users, equal_to(list(expected.items())), label="Users")
    interactions = collections.Counter()
    for u, n in (("a", 5), ("b", 2)):  # as the k-core left them, before the history cut
        interactions[f"interactions_{split[u]}"] += n
    merged = out.stats | beam.combiners.ToList() | beam.Map(merge_stats)
    expected_stats = merge_stats([("max_history_len", 4), (TOO_SHORT, 1)]) | interactions
    assert_that(merged, equal_to([expected_stats]), label="Stats")
    counters = _run(p)
    assert counters == {
        "kcore_dropped_users": 1,
        "kcore_dropped_interactions": 1,
        "users_too_short_for_future": 1,
    }
    shards = _read_shards(root)
    assert len(shards) == 3 * 2 and sum(shards.values(), []) == ["a"]


def test_write_bad_records_sorts_each_files_records_by_line(tmp_path):
    bad = [
        {"file": "f.csv", "line": 9, "reason": "r"},
        {"file": "g.csv", "row": 2, "reason": "r"},
        {"file": "f.csv", "line": 3, "reason": "r"},
    ]
    p = _pipeline()
    stats = p | beam.Create(bad) | transforms.WriteBadRecords(str(tmp_path))
    expected = [("bad_records", {"f.csv": 2}), ("bad_records", {"g.csv": 1})]
    assert_that(stats, equal_to(expected))
    _run(p)
    lines = [json.loads(line)["line"] for line in open(tmp_path / "bad_records" / "f.csv.jsonl")]
    assert lines == [3, 9]
    assert json.loads(open(tmp_path / "bad_records" / "g.csv.jsonl").read())["row"] == 2


def test_write_vocab_writes_both_vocabularies(tmp_path):
    tables = {
        "items": ["<pad>", "<mask>", "<oov>", "x"],
        "genres": ["<pad>", "<mask>", "<oov>"],
        "items_without_metadata": 1,
    }
    p = _pipeline()
    stats = p | beam.Create([tables]) | transforms.WriteVocab(str(tmp_path))
    expected = [
        ("vocab_size", {"items.txt": 4}),
        ("vocab_size", {"genres.txt": 3}),
        ("items_without_metadata", 1),
    ]
    assert_that(stats, equal_to(expected))
    _run(p)
    assert open(tmp_path / "vocab" / "items.txt").read() == "<pad>\n<mask>\n<oov>\nx\n"
    assert open(tmp_path / "vocab" / "genres.txt").read() == "<pad>\n<mask>\n<oov>\n"


def test_write_stats_merges_every_entry_into_one_file(tmp_path):
    entries = [
        ("bad_records", {"f.csv": 2}),
        ("kcore", {"iteration": 1, "users_removed": 0, "items_removed": 0}),
        ("kcore", {"iteration": 0, "users_removed": 3, "items_removed": 1}),
        ("users_train", 4),
        ("users_train", 5),
        ("max_history_len", 7),
        ("max_history_len", 2),
    ]
    p = _pipeline()
    _ = (
        p
        | "Entries" >> beam.Create(entries)
        | transforms.WriteStats(
            str(tmp_path),
            lines=p | "Lines" >> beam.Create([("interactions", 12), ("interactions", 3)]),
            attributes=p | "Attributes" >> beam.Create([[("tier", ["gold"])]]),
        )
    )
    _run(p)
    stats = json.load(open(tmp_path / "_stats.json"))
    assert stats["bad_records"] == {"f.csv": 2} and stats["lines"] == {"interactions": 15}
    assert [r["iteration"] for r in stats["kcore"]] == [0, 1]
    assert stats["users_train"] == 9 and stats["max_history_len"] == 7
    assert stats["attributes"] == [["tier", ["gold"]]]


def test_read_synthetic_generates_every_user_and_the_catalog():
    tiny = synthetic.SyntheticConfig(
        num_users=30, num_items=40, min_len=5, mean_len=8, max_len_seq=20, block_size=16
    )
    expected = sum(
        len(synthetic.generate_block(tiny, b)[0]["user"]) for b in range(synthetic.num_blocks(tiny))
    )
    p = _pipeline()
    parsed = p | transforms.ReadSource(PreprocessConfig(synthetic=tiny), {})
    rows = parsed.interactions | beam.combiners.ToList() | beam.Map(lambda b: len(_rows(b)))
    assert_that(rows, equal_to([expected]), label="Rows")
    lines = parsed.lines | beam.CombinePerKey(sum)
    assert_that(lines, equal_to([("interactions", expected)]), label="Lines")
    users = parsed.users | "CountUsers" >> beam.combiners.Count.Globally()
    assert_that(users, equal_to([30]), label="Users")
    items = parsed.items | "CountItems" >> beam.combiners.Count.Globally()
    assert_that(items, equal_to([40]), label="Items")
    assert_that(parsed.bad, equal_to([]), label="NoBad")
    assert _run(p) == {}


def test_beam_accepts_every_transforms_type_hints(caplog):
    """Beam reads ``expand``'s return annotation as the output type hint and warns, each time
    the transform is applied, about anything but a PCollection, PDone or None: the steps
    that give a NamedTuple of PCollections (`Parsed`, `Blocks`, ...) leave it out."""
    steps = [
        c
        for c in vars(transforms).values()
        if isinstance(c, type)
        and issubclass(c, beam.PTransform)
        and c.__module__ == transforms.__name__
    ]
    assert {"ReadSource", "ReadRaw", "Split", "KCore", "MakeExamples"} <= {
        c.__name__ for c in steps
    }
    with caplog.at_level(logging.WARNING):
        for step in steps:  # what `PTransform.default_type_hints` does with each
            hints = IOTypeHints.from_callable(step.expand)  # None: no annotation at all
            if hints is not None:
                hints.strip_pcoll()
    assert not caplog.records, [r.getMessage() for r in caplog.records]
