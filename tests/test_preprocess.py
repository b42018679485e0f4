"""The Beam preprocessing pipeline, end to end on DirectRunner, on raw-format fixtures."""

import argparse
import collections
import dataclasses
import filecmp
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from bt_tf import features as F
from bt_tf.errors import UserError
from pipelines import blocks, columnar, inputs, sources, synthetic, textio
from pipelines.config import PreprocessConfig, add_flags, config_from_flags
from pipelines.metadata import BadRecordsError
from pipelines.preprocess import local_runner, make_runner, pipeline_options, preprocess
from tests import rawdata

TINY = synthetic.SyntheticConfig(num_users=160, num_items=120, mean_len=30, max_len_seq=60)


def _config(tmp_path, **kw) -> PreprocessConfig:
    kw.setdefault("kcore_max_iterations", 4)
    kw.setdefault("num_shards", 2)
    return PreprocessConfig(output_dir=str(tmp_path / "out"), **kw)


def _examples(root: str) -> dict[str, list[dict]]:
    """Split -> parsed Examples as plain dicts of lists."""
    out = {}
    for split in F.SPLITS:
        files = sorted(tf.io.gfile.glob(os.path.join(root, F.SPLIT_DIR.format(split), "*.gz")))
        rows = []
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(record.numpy())
            row = {}
            for name, feat in ex.features.feature.items():
                kind = feat.WhichOneof("kind")
                values = list(getattr(feat, kind).value)
                row[name] = [v.decode() for v in values] if kind == "bytes_list" else values
            rows.append(row)
        out[split] = rows
    return out


def _serialized(root: str) -> dict[str, dict[str, bytes]]:
    """Split -> user id -> its serialized Example, whatever the shards."""
    out = {}
    for split in F.SPLITS:
        files = sorted(tf.io.gfile.glob(os.path.join(root, F.SPLIT_DIR.format(split), "*.gz")))
        users = {}
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(record.numpy())
            users[ex.features.feature[F.USER_ID].bytes_list.value[0].decode()] = record.numpy()
        out[split] = users
    return out


def _sequences(root: str) -> dict[str, list[tuple]]:
    """User -> (timestamp, raw item id) of its history then its future."""
    return {
        row[F.USER_ID][0]: list(
            zip(
                row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS],
                row[F.HISTORY_RAW_ITEM_IDS] + row[F.FUTURE_RAW_ITEM_IDS],
            )
        )
        for rows in _examples(root).values()
        for row in rows
    }


def _all_files(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def _k_core(interactions, min_user, min_item):
    """Reference iterated k-core on a list of (user, item, ...) tuples."""
    rows = list(interactions)
    while True:
        users = collections.Counter(r[0] for r in rows)
        rows2 = [r for r in rows if users[r[0]] >= min_user]
        items = collections.Counter(r[1] for r in rows2)
        rows2 = [r for r in rows2 if items[r[1]] >= min_item]
        if len(rows2) == len(rows):
            return rows
        rows = rows2


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthetic")
    config = _config(tmp, dataset="synthetic", synthetic=TINY, max_len=25, future_len=5)
    return config, preprocess(config)


def test_synthetic_artifacts_follow_the_data_contract(synthetic_run):
    config, root = synthetic_run
    assert root.startswith(os.path.join(config.output_dir, "synthetic", "v-"))
    files = _all_files(root)
    for split in F.SPLITS:
        for shard in range(2):
            name = f"Split-{split}/data-{shard:05d}-of-00002.tfrecord.gz"
            assert name in files
    assert {"schema.pbtxt", "metadata.json", "vocab/items.txt", "vocab/genres.txt"} <= set(files)
    meta = json.load(open(os.path.join(root, "metadata.json")))
    schema = text_format.Parse(open(os.path.join(root, "schema.pbtxt")).read(), schema_pb2.Schema())
    names = {f.name for f in schema.feature}
    assert {F.USER_ID, F.HISTORY_ITEM_IDS, F.FUTURE_RATINGS, "attr_segment"} <= names

    examples = _examples(root)
    items = open(os.path.join(root, "vocab/items.txt")).read().splitlines()
    genres = open(os.path.join(root, "vocab/genres.txt")).read().splitlines()
    assert items[:3] == list(F.RESERVED_TOKENS) and genres[:3] == list(F.RESERVED_TOKENS)
    assert meta["vocab_sizes"] == {"items": len(items), "genres": len(genres)}
    catalog = dict(synthetic.item_records(TINY))
    seen = set()
    for split, rows in examples.items():
        assert len(rows) == meta["num_users"][split]
        for row in rows:
            user = row[F.USER_ID][0]
            assert blocks.split_of(user, 80, 10) == split and user not in seen
            seen.add(user)
            n = row[F.HISTORY_LENGTH][0]
            assert 3 <= n <= 25 and len(row[F.HISTORY_ITEM_IDS]) == n
            assert len(row[F.FUTURE_ITEM_IDS]) == 5  # lengths >= 20 > 5 + 3
            stamps = row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS]
            assert stamps == sorted(stamps)
            for ids, raws, counts, gids in (
                (
                    F.HISTORY_ITEM_IDS,
                    F.HISTORY_RAW_ITEM_IDS,
                    F.HISTORY_GENRE_COUNTS,
                    F.HISTORY_GENRE_IDS,
                ),
                (
                    F.FUTURE_ITEM_IDS,
                    F.FUTURE_RAW_ITEM_IDS,
                    F.FUTURE_GENRE_COUNTS,
                    F.FUTURE_GENRE_IDS,
                ),
            ):
                for vocab_id, raw in zip(row[ids], row[raws]):
                    assert vocab_id == (items.index(raw) if raw in items else F.OOV_ID)
                expected = [g for raw in row[raws] for g in catalog[raw]]
                assert [genres[g] for g in row[gids]] == expected
                assert row[counts] == [len(catalog[raw]) for raw in row[raws]]
            assert row["attr_segment"][0] in range(5)
    assert len(seen) == TINY.num_users  # every user has >= 20 interactions: none dropped
    train = [
        r
        for row in examples["train"]
        for k in (F.HISTORY_RAW_ITEM_IDS, F.FUTURE_RAW_ITEM_IDS)
        for r in row[k]
    ]
    # vocab from train users only (a superset: truncated old history counts too)
    assert set(items[3:]) >= set(train)


def test_same_input_and_flags_give_byte_identical_files(synthetic_run, tmp_path):
    config, first = synthetic_run
    second = preprocess(dataclasses.replace(config, output_dir=str(tmp_path)))
    assert os.path.basename(second) == os.path.basename(first)
    files = _all_files(first)
    assert files == _all_files(second)
    match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)


def test_output_does_not_depend_on_how_users_are_bucketed(synthetic_run, tmp_path, monkeypatch):
    # Users are grouped in (split, shard, part) buckets whose sorted Examples are
    # merged per shard: one part or three per shard write the same bytes.
    config, first = synthetic_run
    for parts in (1, 3):
        monkeypatch.setattr(blocks, "PARTS_PER_SHARD", parts)
        other = preprocess(dataclasses.replace(config, output_dir=str(tmp_path / str(parts))))
        files = _all_files(first)
        assert files == _all_files(other) and not any("_parts" in f for f in files)
        _, mismatch, errors = filecmp.cmpfiles(first, other, files, shallow=False)
        assert mismatch == [] and errors == []


# The DirectRunner's multi-process mode: its SDK workers are separate processes, each
# running bundles of every step (docs/DATA.md, "Beam runners").
MULTI_PROCESS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


@pytest.mark.slow  # ~25 s on 2 cores: the SDK worker processes import TensorFlow
def test_multi_process_runner_writes_the_same_bytes_as_in_process(tmp_path, capsys):
    """Every artifact file, byte for byte: the Examples, schema, vocabularies, and
    metadata.json (which records no runner setting: Beam options are not in the version)."""
    config = _config(tmp_path / "in", dataset="synthetic", synthetic=TINY, max_len=25)
    runs, seconds = {}, {}
    for name, beam_args in (("in process", ()), ("2 processes", MULTI_PROCESS)):
        start = time.perf_counter()
        out = str(tmp_path / name.replace(" ", "_"))
        runs[name] = preprocess(dataclasses.replace(config, output_dir=out, beam_args=beam_args))
        seconds[name] = time.perf_counter() - start
    with capsys.disabled():
        print(f"\npreprocess wall time: {seconds}")
    first, second = runs.values()
    assert os.path.basename(first) == os.path.basename(second)
    files = _all_files(first)
    assert files == _all_files(second)
    assert {"metadata.json", "schema.pbtxt", "vocab/items.txt", "vocab/genres.txt"} <= set(files)
    assert sum(f.endswith(".tfrecord.gz") for f in files) == 2 * len(F.SPLITS)
    _, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert mismatch == [] and errors == []


def test_existing_version_is_reused_not_rewritten(synthetic_run):
    config, root = synthetic_run
    before = os.stat(os.path.join(root, "metadata.json")).st_mtime_ns
    assert preprocess(config) == root
    assert os.stat(os.path.join(root, "metadata.json")).st_mtime_ns == before


def test_ml1m_k_core_order_split_and_attributes(tmp_path):
    fixture = rawdata.write_ml1m(tmp_path / "raw", num_users=40, num_items=60, per_user=(4, 16))
    config = _config(
        tmp_path,
        dataset="ml-1m",
        data_dir=fixture["data_dir"],
        min_user_interactions=6,
        min_item_interactions=4,
        kcore_max_iterations=8,
        future_len=3,
    )
    root = preprocess(config)
    meta = json.load(open(os.path.join(root, "metadata.json")))
    expected = _k_core(fixture["interactions"], 6, 4)
    assert meta["kcore"]["iterations"] >= 2  # the fixture needs iterating
    got = collections.Counter()
    users = dict(fixture["users"])
    classes = meta["attributes"]
    in_order = rawdata.time_order(expected)
    for rows in _examples(root).values():
        for row in rows:
            user = row[F.USER_ID][0]
            raw = row[F.HISTORY_RAW_ITEM_IDS] + row[F.FUTURE_RAW_ITEM_IDS]
            stamps = row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS]
            # chronological, timestamp ties in file order
            assert list(zip(stamps, raw)) == [(t, i) for t, i, _ in in_order[user]]
            got.update((user, item) for item in raw)
            for name in ("gender", "age", "occupation"):
                value = classes[name]["classes"][row[F.ATTRIBUTE_PREFIX + name][0]]
                assert value == users[user][name]
    assert got == collections.Counter((r[0], r[1]) for r in expected)
    assert sum(meta["num_interactions"].values()) == len(expected)
    # item vocab: train users' interactions, by descending count, ties by id
    train_users = {u for u, *_ in expected if blocks.split_of(u, 80, 10) == "train"}
    counts = collections.Counter(i for u, i, *_ in expected if u in train_users)
    items = open(os.path.join(root, "vocab/items.txt")).read().splitlines()
    assert items[3:] == sorted(counts, key=lambda i: (-counts[i], i))


# burst=4: every user's last 4 ratings share a second, in the file by descending item id.
_ML100K_FIXTURE = dict(num_users=40, num_items=60, per_user=(4, 16), seed=7, burst=4)
_ML100K_BAD_DATA = ["196\t242\t3", "196\t242\t9\t881250949"]
_ML100K_BAD_ITEM = "9999|Bad (1999)|01-Jan-1999||url|" + "|".join(["0"] * 18 + ["2"])
_ML100K_BAD_USER = "3|twenty|M|student|12345"


def _ml100k_config(tmp_path, data_dir, **kw) -> PreprocessConfig:
    return _config(
        tmp_path,
        dataset="ml-100k",
        data_dir=data_dir,
        min_user_interactions=6,
        min_item_interactions=4,
        future_len=3,
        max_bad_fraction=0.05,
        **kw,
    )


@pytest.fixture(scope="module")
def ml100k_run(tmp_path_factory):
    """Raw ml-100k fixture with bad lines in u.data, u.item and u.user, preprocessed."""
    tmp = tmp_path_factory.mktemp("ml100k")
    fixture = rawdata.write_ml100k(tmp / "raw", bad_lines=_ML100K_BAD_DATA, **_ML100K_FIXTURE)
    for role, line in (("items", _ML100K_BAD_ITEM), ("users", _ML100K_BAD_USER)):
        with open(fixture["paths"][role], "ab") as f:
            f.write(line.encode() + b"\n")
    config = _ml100k_config(tmp, fixture["data_dir"])
    return fixture, config, preprocess(config)


def test_ml100k_end_to_end_follows_the_data_contract(ml100k_run):
    fixture, config, root = ml100k_run
    assert root.startswith(os.path.join(config.output_dir, "ml-100k", "v-"))
    files = _all_files(root)
    for split in F.SPLITS:
        for shard in range(2):
            assert f"Split-{split}/data-{shard:05d}-of-00002.tfrecord.gz" in files
    assert {"schema.pbtxt", "metadata.json", "vocab/items.txt", "vocab/genres.txt"} <= set(files)
    schema = text_format.Parse(open(os.path.join(root, "schema.pbtxt")).read(), schema_pb2.Schema())
    kinds = {f.name: f.type for f in schema.feature}
    for name in ("gender", "age", "occupation"):
        assert kinds[F.ATTRIBUTE_PREFIX + name] == schema_pb2.INT

    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["dataset"] == "ml-100k" and meta["source"] == "raw"
    assert meta["item_feature"] == "genre"
    assert meta["attributes"] == {
        "gender": {"classes": ["F", "M"]},
        "age": {"classes": ["1", "18", "25", "35", "45", "50", "56"]},
        "occupation": {"classes": list(rawdata.ML100K_OCCUPATIONS)},
    }
    # Bad lines: routed with file, exact line number and reason; counted.
    assert meta["bad_records"]["by_file"] == {"u.data": 2, "u.item": 1, "u.user": 1}
    bad = {
        name: [json.loads(x) for x in open(os.path.join(root, "bad_records", name + ".jsonl"))]
        for name in ("u.data", "u.item", "u.user")
    }
    assert [(r["line"], r["text"].encode()) for r in bad["u.data"]] == fixture["bad_lines"]
    assert [r["reason"] for r in bad["u.data"]] == [
        "expected 4 tab-separated fields, got 3",
        "rating must be an integer 1-5, got '9'",
    ]
    assert [(r["line"], r["reason"]) for r in bad["u.item"]] == [
        (fixture["num_lines"]["items"] + 1, "genre flag 'Western' must be 0 or 1, got '2'")
    ]
    assert [(r["line"], r["reason"]) for r in bad["u.user"]] == [
        (fixture["num_lines"]["users"] + 1, "age must be a whole number of years, got 'twenty'")
    ]
    assert meta["input_records"] == {
        "interactions": fixture["num_lines"]["interactions"],
        "items": fixture["num_lines"]["items"] + 1,
        "users": fixture["num_lines"]["users"] + 1,
    }

    items = open(os.path.join(root, "vocab/items.txt")).read().splitlines()
    genres = open(os.path.join(root, "vocab/genres.txt")).read().splitlines()
    assert meta["vocab_sizes"] == {"items": len(items), "genres": len(genres)}
    assert "unknown" not in genres and set(genres[3:]) <= set(rawdata.ML100K_GENRES[1:])
    expected = _k_core(fixture["interactions"], 6, 4)
    assert meta["kcore"]["iterations"] >= 2  # the fixture needs iterating
    catalog, users = dict(fixture["items"]), dict(fixture["users"])
    in_order = rawdata.time_order(expected)
    got = collections.Counter()
    examples = _examples(root)
    for split, rows in examples.items():
        assert len(rows) == meta["num_users"][split]
        for row in rows:
            user = row[F.USER_ID][0]
            assert blocks.split_of(user, 80, 10) == split
            raw = row[F.HISTORY_RAW_ITEM_IDS] + row[F.FUTURE_RAW_ITEM_IDS]
            stamps = row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS]
            assert list(zip(stamps, raw)) == [(t, i) for t, i, _ in in_order[user]]
            assert len(row[F.FUTURE_ITEM_IDS]) == 3 and row[F.HISTORY_LENGTH][0] >= 3
            got.update((user, item) for item in raw)
            for name in ("gender", "age", "occupation"):
                value = meta["attributes"][name]["classes"][row[F.ATTRIBUTE_PREFIX + name][0]]
                assert value == users[user][name]
            hist = row[F.HISTORY_RAW_ITEM_IDS]
            assert [genres[g] for g in row[F.HISTORY_GENRE_IDS]] == [
                g for i in hist for g in catalog[i]
            ]
            assert row[F.HISTORY_GENRE_COUNTS] == [len(catalog[i]) for i in hist]
    assert got == collections.Counter((r[0], r[1]) for r in expected)
    assert sum(meta["num_interactions"].values()) == len(expected)
    assert meta["max_history_len"] == max(
        r[F.HISTORY_LENGTH][0] for rows in examples.values() for r in rows
    )
    # unknown-only and unflagged movies were kept, with zero genres
    assert any(
        c == 0 for rows in examples.values() for r in rows for c in r[F.HISTORY_GENRE_COUNTS]
    )


def test_same_second_ratings_keep_file_order_across_history_and_future(ml100k_run, tmp_path):
    """SASRec's and RecBole's order: by time, ties in file order (a stable sort of u.data).
    The fixture writes each user's last 4 same-second ratings by DESCENDING item id, so
    the old tie-break (ascending id) would put them the other way round."""
    fixture, config, root = ml100k_run
    in_order = rawdata.time_order(_k_core(fixture["interactions"], 6, 4))
    crossing = 0
    for rows in _examples(root).values():
        for row in rows:
            seq = in_order[row[F.USER_ID][0]]
            history, future = row[F.HISTORY_RAW_ITEM_IDS], row[F.FUTURE_RAW_ITEM_IDS]
            assert history + future == [i for _, i, _ in seq]
            assert future == [i for _, i, _ in seq[-3:]]
            tail = row[F.HISTORY_TIMESTAMPS][-1:] + row[F.FUTURE_TIMESTAMPS]
            if len(set(tail)) == 1:  # the burst spans the history's end and the future
                assert history[-1:] + future == sorted(history[-1:] + future, reverse=True)
                crossing += 1
    # Users left by the k-core with 4 same-second ratings last (their burst, or what
    # the k-core left of it plus an earlier rating at the same second).
    spanning = sum(len(seq) >= 4 and seq[-4][0] == seq[-1][0] for seq in in_order.values())
    print(f"users whose same-second ratings span history and future: {crossing}")
    assert crossing == spanning > 0

    # The same Examples whatever the read chunks and the number of shards.
    other = preprocess(
        dataclasses.replace(config, output_dir=str(tmp_path), chunk_bytes=97, num_shards=3)
    )
    assert os.path.basename(other) != os.path.basename(root)  # num_shards is in the version
    assert _serialized(other) == _serialized(root)


def _tfds_config(tmp_path, tfds_dir: str, shards: int) -> PreprocessConfig:
    return dataclasses.replace(
        _ml100k_config(tmp_path, None), source="tfds", cache_dir=tfds_dir, tfds_shards=shards
    )


# ~10 s on 2 quiet cores. In the default suite: the TFDS source through the pipeline (below)
# and its reader (test_tfds_source.py).
@pytest.mark.slow
def test_ml100k_tfds_source_writes_the_same_users_as_raw_ties_in_tfds_order(ml100k_run, tmp_path):
    """TFDS `movielens/100k-ratings` built from the same data (minus the bad lines): the
    same users, interactions and vocabularies; a user's same-second ratings in TFDS's
    example order (TFDS stores u.data shuffled), the same for any --tfds_shards."""
    from unittest import mock

    import tensorflow_datasets as tfds

    from pipelines import tfds_source

    pytest.importorskip(
        "importlib_resources", reason="TFDS 4.9.x download_and_prepare needs importlib_resources"
    )
    fixture, raw_config, raw_root = ml100k_run
    clean = rawdata.write_ml100k(tmp_path / "clean" / "ml-100k", **_ML100K_FIXTURE)
    assert clean["interactions"] == fixture["interactions"]
    tfds_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(tmp_path / "clean")
    ):
        tfds_source.prepare_tfds("ml-100k", data_dir=tfds_dir)
    root = preprocess(_tfds_config(tmp_path, tfds_dir, 3))
    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["source"] == "tfds" and meta["bad_records"]["total"] == 0
    assert meta["tie_order"].startswith("TFDS example order")
    raw_meta = json.load(open(os.path.join(raw_root, "metadata.json")))
    for key in ("attributes", "num_users", "num_interactions", "vocab_sizes", "max_history_len"):
        assert meta[key] == raw_meta[key], key
    vocab = ["vocab/items.txt", "vocab/genres.txt"]
    _, mismatch, errors = filecmp.cmpfiles(raw_root, root, vocab, shallow=False)
    assert mismatch == [] and errors == []

    builder = tfds.builder(tfds_source.TFDS_NAMES["ml-100k"], data_dir=tfds_dir)
    tfds_rows = [
        (ex["user_id"].decode(), ex["movie_id"].decode(), int(ex["timestamp"]), 0.0)
        for ex in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))
    ]
    tfds_order = rawdata.time_order(_k_core(tfds_rows, 6, 4))
    file_order = rawdata.time_order(_k_core(fixture["interactions"], 6, 4))
    got, got_raw = _sequences(root), _sequences(raw_root)
    assert set(got) == set(got_raw)
    differ = 0
    for user, seq in got.items():
        assert seq == [(t, i) for t, i, _ in tfds_order[user]]
        assert got_raw[user] == [(t, i) for t, i, _ in file_order[user]]
        assert sorted(seq) == sorted(got_raw[user])
        differ += seq != got_raw[user]
    assert differ > 0  # TFDS's order is not the file's

    # Shards are consecutive ranges of one order: 2 shards write the same bytes as 3.
    two = preprocess(_tfds_config(tmp_path / "two", tfds_dir, 2))
    files = [f for f in _all_files(root) if f.startswith(("Split-", "vocab/"))]
    assert len(files) == 2 * 3 + 2
    _, mismatch, errors = filecmp.cmpfiles(root, two, files, shallow=False)
    assert mismatch == [] and errors == []


def test_bad_lines_are_routed_counted_and_fail_above_threshold(tmp_path):
    bad = [
        "12::1097::4",
        "abc::1097::4::978301953",
        "12::1097::five::978301953",
        b"\xff\xfe::1::2::3",
    ]
    fixture = rawdata.write_ml1m(tmp_path / "raw", num_users=30, per_user=12, bad_lines=bad)
    config = _config(tmp_path, dataset="ml-1m", data_dir=fixture["data_dir"])
    with pytest.raises(BadRecordsError) as err:
        preprocess(config)
    message = str(err.value)
    assert "4 of" in message and "ratings.dat: 4" in message and "bad_records" in message
    (build,) = glob.glob(inputs.artifact_dir(config) + ".partial-*")  # this run's, kept
    assert f"in {os.path.join(build, 'bad_records')}/" in message  # named in the error
    partial = os.path.join(build, "bad_records", "ratings.dat.jsonl")
    assert not os.path.exists(inputs.artifact_dir(config))  # nothing published
    records = [json.loads(line) for line in open(partial)]
    assert [r["line"] for r in records] == [line for line, _ in fixture["bad_lines"]]
    assert all(r["file"] == "ratings.dat" and r["reason"] for r in records)

    # Asked to skip them: they are skipped and counted, the run succeeds.
    lenient = dataclasses.replace(config, max_bad_fraction=0.05)
    root = preprocess(lenient)
    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["bad_records"]["total"] == 4 and meta["bad_records"]["by_file"] == {
        "ratings.dat": 4
    }
    kept = open(os.path.join(root, "bad_records", "ratings.dat.jsonl")).read().splitlines()
    assert len(kept) == 4


# ~8 s on 2 quiet cores (two preprocessings). In the default suite: byte-range chunks and
# their line numbers in the own-log reader (test_interactions.py, chunk_bytes=40 and 64).
@pytest.mark.slow
def test_small_read_chunks_give_the_same_output_and_line_numbers(tmp_path):
    fixture = rawdata.write_ml1m(
        tmp_path / "raw", num_users=30, per_user=12, bad_lines=["1::2", "x::y::z::w"]
    )
    roots = []
    for chunk_bytes in (1 << 20, 97):
        config = _config(
            tmp_path / str(chunk_bytes),
            dataset="ml-1m",
            data_dir=fixture["data_dir"],
            chunk_bytes=chunk_bytes,
            max_bad_fraction=0.1,
        )
        roots.append(preprocess(config))
    files = _all_files(roots[0])
    assert files == _all_files(roots[1])
    _, mismatch, _ = filecmp.cmpfiles(roots[0], roots[1], files, shallow=False)
    assert mismatch == []
    lines = [
        json.loads(x)["line"] for x in open(os.path.join(roots[1], "bad_records/ratings.dat.jsonl"))
    ]
    assert lines == [line for line, _ in fixture["bad_lines"]]


# (parser, lines); "+" marks the lines the vectorized reader must take itself.
_RATING_LINES = {
    ",": (
        sources.parse_ml20m_rating,
        [
            "+1,2,3.5,1112486027",
            "+1,2,4,1",
            "+007,0,0.5,0001",
            "+9,9,5.0,123456789012345678",
            "+1,2,1.0,1\r",
            "1,2,5.5,1",
            "1,2,0.0,1",
            "1,2,0,1",
            "1,2,4.50,1",
            "1,2, 4,1",
            "1,2,4.5e0,1",
            "1,2,4_5,1",
            "1,2,nan,1",
            "1,2,.5,1",
            "1,2,5.,1",
            "a,2,3.0,1",
            "1,b,3.0,1",
            "1,2,3.0",
            "1,2,3.0,4,5",
            "1,,3.0,4",
            ",1,3.0,4",
            "1,2,3.0,",
            "1,2,3.0,-4",
            "1,2,3.0,1234567890123456789",
            "1,2,3.0, 4",
            "",
            "   ",
            "1;2;3.0;4",
            "1,2,3.0,4\r\r",
            "\xb2,2,3.0,4",
            "1,2,3.0,\xd9\xa3",
        ],
    ),
    "::": (
        sources.parse_ml1m_rating,
        [
            "+1::1193::5::978300760",
            "+01::2::1::0",
            "1::2::4.5::3",
            "1::2::0::3",
            "1::2::6::3",
            "1:::2::5::3",
            "1::2:::5::3",
            "1::2::5:::3",
            "1:2::5::3::",
            "1::2::5",
            "1::2::5::3::4",
            "::2::5::3",
            "1::2::5::",
            "1::2::5::3a",
            "",
        ],
    ),
    "\t": (
        sources.parse_ml100k_rating,
        ["+196\t242\t3\t881250949", "196\t242\t3.0\t1", "196 242 3 1", "196\t242\t3", ""],
    ),
}


@pytest.mark.parametrize("sep", list(_RATING_LINES))
def test_vectorized_rating_reader_matches_the_line_parser(sep):
    parse, lines = _RATING_LINES[sep]
    fast = [line.startswith("+") for line in lines]
    raw = [line.lstrip("+").encode("latin-1") for line in lines]
    data = b"\n".join(raw) + b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends = textio.line_bounds(buf)
    assert len(starts) == len(lines)
    ok, columns = columnar.parse_rating_lines(buf, starts, ends, columnar.rating_lines_of(parse))
    assert ok.tolist() == fast
    expected = [parse(data[a:b]) for a, b, taken in zip(starts, ends, ok) if taken]
    got = list(
        zip(
            [u.decode() for u in columns["user"].tolist()],
            [i.decode() for i in columns["item"].tolist()],
            columns["timestamp"].tolist(),
            columns["rating"].tolist(),
        )
    )
    assert got == expected


def test_k_core_drops_a_user_whose_every_item_was_rare(tmp_path):
    # User 9's only item is rare in round 0; round 1 finds 9 empty, hence short;
    # round 2 must no longer see it.
    raw = tmp_path / "raw"
    raw.mkdir()
    ratings = ["userId,movieId,rating,timestamp", "9,99,4.0,5"]
    ratings += [f"{u},{i},3.0,{i}" for u in (1, 2, 3) for i in (10, 11)]
    (raw / "ratings.csv").write_text("\n".join(ratings) + "\n")
    movies = ["movieId,title,genres", "10,A (1990),Drama", "11,B (1991),Comedy", "99,C (1992),"]
    (raw / "movies.csv").write_text("\n".join(movies) + "\n")
    config = _config(
        tmp_path,
        dataset="ml-20m",
        data_dir=str(raw),
        min_user_interactions=1,
        min_item_interactions=2,
        future_len=1,
        min_history_len=1,
    )
    root = preprocess(config)
    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["kcore"]["rounds"][:3] == [
        {"iteration": 0, "users_removed": 0, "items_removed": 1},
        {"iteration": 1, "users_removed": 1, "items_removed": 0},
        {"iteration": 2, "users_removed": 0, "items_removed": 0},
    ]
    users = sorted(r[F.USER_ID][0] for rows in _examples(root).values() for r in rows)
    assert users == ["1", "2", "3"] and sum(meta["num_interactions"].values()) == 6


def test_pipeline_options_name_the_direct_runner_unless_given_one(caplog):
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from apache_beam.testing.util import assert_that, equal_to

    default = pipeline_options(["--direct_num_workers=2"])
    assert default.view_as(StandardOptions).runner == "DirectRunner"
    assert default.view_as(DirectOptions).direct_num_workers == 2
    for given, name in (
        (["--runner=PrismRunner"], "PrismRunner"),
        (["--runner", "FlinkRunner", "--parallelism=2"], "FlinkRunner"),
    ):
        options = pipeline_options(given)
        assert options.view_as(StandardOptions).runner == name
        assert local_runner(options) is None  # Beam makes it from the options
    # The DirectRunner runs batch pipelines without first trying (downloading) Prism.
    default = pipeline_options()
    with caplog.at_level(logging.INFO):
        with beam.Pipeline(runner=local_runner(default), options=default) as p:
            assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * x), equal_to([1, 4, 9]))
    assert "prism" not in caplog.text.lower()


def test_bad_beam_options_and_runners_are_user_errors(capsys):
    """Beam's own parser prints its whole usage and exits; an unknown runner raises a
    ValueError: both become one `UserError` before any work."""
    with pytest.raises(UserError, match=r"^Beam pipeline option: argument --direct_num_workers: "):
        pipeline_options(["--direct_num_workers=abc"])
    assert "usage:" not in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^--runner=NoSuchRunner: Unexpected pipeline runner"):
        make_runner(pipeline_options(["--runner=NoSuchRunner"]))
    assert make_runner(pipeline_options()) is not None


def test_ml20m_and_yelp_raw_formats(tmp_path):
    ml = rawdata.write_ml20m(tmp_path / "ml20m", num_users=30, per_user=12)
    root = preprocess(_config(tmp_path, dataset="ml-20m", data_dir=ml["data_dir"]))
    rows = [r for rs in _examples(root).values() for r in rs]
    ratings = {x for r in rows for x in r[F.HISTORY_RATINGS] + r[F.FUTURE_RATINGS]}
    assert ratings <= {x / 2 for x in range(1, 11)} and any(x % 1 for x in ratings)

    yelp = rawdata.write_yelp(tmp_path / "yelp", num_users=30, per_user=12)
    root = preprocess(_config(tmp_path, dataset="yelp", data_dir=yelp["data_dir"]))
    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["item_feature"] == "category" and meta["attributes"] == {}
    rows = [r for rs in _examples(root).values() for r in rs]
    assert all(len(r[F.USER_ID][0]) == 22 for r in rows)
    categories = dict(yelp["items"])
    for r in rows:
        # businesses with null/empty categories contribute zero genre ids
        assert r[F.HISTORY_GENRE_COUNTS] == [len(categories[b]) for b in r[F.HISTORY_RAW_ITEM_IDS]]
    assert any(c == 0 for r in rows for c in r[F.HISTORY_GENRE_COUNTS])


def test_missing_input_names_the_path_and_files(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        preprocess(_config(tmp_path, dataset="ml-1m", data_dir=str(tmp_path / "raw")))
    with pytest.raises(FileNotFoundError, match="yelp.com/dataset"):
        preprocess(_config(tmp_path, dataset="yelp", data_dir=str(tmp_path / "raw")))


# ~15 s on 2 quiet cores (two processes). In the default suite: a held version's lock stops a
# preprocessing (test_locks.py), a killed holder's lock is taken over (test_locks.py).
@pytest.mark.slow
def test_killed_run_leaves_no_version_and_a_rerun_completes(tmp_path):
    """Killed mid-build: no version, only its own build directory; the rerun takes over
    the dead process's lock (a notice names it), removes that build and publishes."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "pipelines.preprocess", "--dataset=synthetic",
        f"--output_dir={out}", "--synthetic_users=160", "--synthetic_items=120",
        "--kcore_max_iterations=4", "--num_shards=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill it mid-flight: once it has written its first Examples (to part files).
    while time.time() < deadline and not list((out / "synthetic").glob("*.partial-*/_parts/*")):
        time.sleep(0.01)
    partial = list((out / "synthetic").glob("*.partial-*"))
    assert partial, "the run never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dirs = [p for p in (out / "synthetic").iterdir() if p.is_dir()]
    assert dirs == partial  # complete or absent: no version

    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"took over the lock of {out / 'synthetic'}" in finished.stderr
    assert f"from PID {proc.pid} on " in finished.stderr
    versions = [p for p in (out / "synthetic").iterdir() if p.is_dir()]
    assert len(versions) == 1 and ".partial" not in versions[0].name
    assert (versions[0] / "metadata.json").exists()


def test_tfds_source_through_the_pipeline(tmp_path):
    """`--source=tfds` on the real TFDS code path with mock examples."""
    import tensorflow_datasets as tfds

    config = _config(
        tmp_path,
        dataset="ml-1m",
        source="tfds",
        tfds_shards=1,  # mock_data ignores split slicing: one shard, no duplicates
        min_user_interactions=1,
        min_item_interactions=1,
        min_history_len=1,
        future_len=1,
    )
    with tfds.testing.mock_data(num_examples=300):
        root = preprocess(config)
    meta = json.load(open(os.path.join(root, "metadata.json")))
    assert meta["source"] == "tfds" and meta["input_records"] == {"interactions": 300}
    assert set(meta["attributes"]) == {"gender", "age", "occupation"}
    rows = [r for rs in _examples(root).values() for r in rs]
    kept = sum(len(r[F.HISTORY_ITEM_IDS]) + len(r[F.FUTURE_ITEM_IDS]) for r in rows)
    dropped = meta["dropped_users"]["users_too_short_for_future"]
    assert sum(meta["num_users"].values()) == len(rows)
    assert kept == sum(meta["num_interactions"].values()) - dropped  # one-rating users drop
    assert sum(meta["num_interactions"].values()) == 300


def test_dataset_and_source_flags_accept_ml100k():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--dataset=ml-100k", "--source=tfds"])
    config = config_from_flags(args)
    assert (config.dataset, config.source) == ("ml-100k", "tfds")
    assert inputs.item_feature_name(config) == "genre"
    with pytest.raises(ValueError, match="--source=tfds exists only for ml-100k, ml-1m, ml-20m"):
        PreprocessConfig(dataset="yelp", source="tfds")


def test_config_module_imports_neither_beam_nor_tensorflow():
    # bt_tf builds its flags and run config from pipelines.config: it must stay light.
    code = (
        "import sys, pipelines.config; "
        "print([m for m in ('tensorflow', 'apache_beam') if m in sys.modules])"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
