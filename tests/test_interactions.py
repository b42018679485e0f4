"""`--dataset=interactions`: a user's own CSV / TSV / JSON lines / Parquet files."""

import argparse
import collections
import dataclasses
import datetime
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from bt_tf import features as F
from bt_tf.evaluation import eval_data, tasks
from pipelines import inputs, textio
from pipelines import interactions_source as own
from pipelines.config import PreprocessConfig, add_flags, config_from_flags
from pipelines.metadata import BadRecordsError
from pipelines.preprocess import preprocess
from pipelines.sources import BadRecord
from tests import rawdata

COLS = own.InteractionsConfig(rating_col="rating")
COLS_NR = own.InteractionsConfig()  # no rating column


def _read_text(f: own.InputFile, config=COLS, chunk_bytes=200):
    """Reads a text file the way the pipeline does: byte-range chunks, numbered lines."""
    table = own.text_table(f, config)
    chunks = textio.plan_chunks(f.table, f.path, chunk_bytes)
    before = textio.first_line_numbers(dict(map(textio.count_newlines, chunks)), chunks)
    good, bad = [], []
    for chunk in chunks:
        for number, line in textio.read_lines(chunk, before[chunk.key]):
            if table.header and number == 1:
                continue
            try:
                record = table.parse(line)
            except BadRecord as err:
                bad.append((number, line, str(err)))
                continue
            if record is not None:
                good.append(record)
    return good, bad


def _read_parquet(f: own.InputFile, config=COLS):
    columns, parser = own.row_parser(f, config)
    good, bad = [], []
    for part in own.parquet_parts(f.table, f.path):
        for row, record, reason, values in own.read_parquet_part(part, columns, parser):
            if record is None:
                bad.append((row, values, reason))
            else:
                good.append(record)
    return good, bad


def _read(f: own.InputFile, config=COLS):
    return _read_parquet(f, config) if f.format == "parquet" else _read_text(f, config)


def _write(path, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


# --- timestamps -------------------------------------------------------------

T = 881250949  # 1997-12-04T15:55:49Z


@pytest.mark.parametrize(
    "value, expected",
    [
        (T, T),
        (str(T), T),
        (f" {T} ", T),
        (T * 1000 + 999, T),  # milliseconds, floored
        (str(T * 1000), T),
        (T * 1_000_000 + 5, T),  # microseconds
        (T * 1_000_000_000, T),  # nanoseconds
        (T + 0.9, T),
        ("881250949.9", T),
        (99_999_999_999, 99_999_999_999),  # below 1e11: seconds (year 5138)
        (100_000_000_000, 100_000_000),  # from 1e11: milliseconds (1973-03-03)
        (-86_400, -86_400),
        ("1997-12-04T15:55:49Z", T),
        ("1997-12-04T15:55:49+00:00", T),
        ("1997-12-04 15:55:49", T),  # naive = UTC
        ("1997-12-04T16:55:49+01:00", T),
        ("1997-12-04T16:55:49+0100", T),
        ("1997-12-04T10:25:49-05:30", T),
        ("1997-12-04T15:55:49.999Z", T),
        ("1997-12-04", T - (15 * 3600 + 55 * 60 + 49)),
        ("19971204T155549", T),
        ("1969-12-31T23:59:59.5Z", -1),  # floored, not truncated toward 0
        (datetime.datetime(1997, 12, 4, 15, 55, 49), T),
    ],
)
def test_parse_time_accepts_unix_units_by_magnitude_and_iso_8601(value, expected):
    got = own.parse_time(value)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "missing timestamp"),
        ("", "empty timestamp"),
        ("  ", "empty timestamp"),
        ("yesterday", "timestamp 'yesterday' is neither Unix time (s/ms) nor ISO 8601"),
        ("1997-13-04", "is neither Unix time"),
        ("04/12/1997", "is neither Unix time"),
        (True, "must be a number or an ISO 8601 string"),
        (float("nan"), "must be finite"),
        ([T], "got list"),
    ],
)
def test_parse_time_rejects_with_a_reason(value, reason):
    with pytest.raises(BadRecord) as err:
        own.parse_time(value)
    assert reason in str(err.value)


# --- every format through the pipeline's readers -----------------------------


def test_every_format_reads_to_the_expected_records(tmp_path):
    fixture = rawdata.write_interactions(
        tmp_path,
        formats=("csv", "tsv", "jsonl", "parquet"),
        num_users=14,
        per_user=(4, 10),
        bad_lines=["1600000000,,1000", 'x,"unclosed,1000,u001,4.0'],
        parquet_bad_rows=2,
        row_group_size=8,
    )
    seen_styles = collections.Counter()
    for path in fixture["paths"]:
        f = own.describe("interactions", path)
        assert f.format == os.path.splitext(path)[1][1:]
        assert set(f.columns) == {"timestamp", "note", "item_id", "user_id", "rating"}
        good, bad = _read(f)
        assert good == fixture["files"][path], f.format
        assert all(type(t) is int and type(r) is float for _, _, t, r in good)
        expected_bad = [(n, raw) for name, n, raw in fixture["bad"] if path.endswith(name)]
        if f.format == "parquet":
            assert len(own.parquet_parts("interactions", path)) > 2  # several row groups
            assert [(row, reason) for row, _, reason in bad] == [
                (n, "timestamp 'yesterday' is neither Unix time (s/ms) nor ISO 8601")
                for n, _ in expected_bad
            ]
            assert bad[0][1]["timestamp"] == "yesterday" and bad[0][1]["user_id"] == "u000"
        else:
            assert [(n, line) for n, line, _ in bad] == expected_bad
        if f.format == "csv":
            assert [reason for *_, reason in bad] == [
                "expected 5 ','-separated fields (as in the header), got 3",
                "malformed ','-separated line: unexpected end of data",
            ]
        seen_styles[f.format] = len(good)
    assert sum(seen_styles.values()) == len(fixture["interactions"])
    # The quoted user id (comma and quotes inside) survives every format.
    quoted = rawdata._own_user_id(3)
    for path in fixture["paths"]:
        assert quoted in {r[0] for r in fixture["files"][path]}


def test_csv_columns_by_header_with_quotes_bom_crlf_and_extra_columns(tmp_path):
    path = _write(
        tmp_path / "log.csv",
        '\ufeffscore,when,"who",what,extra\r\n'
        '4.5,2021-01-02T03:04:05Z,"Smith, J. ""JJ""",sku-1,"a,b"\r\n'
        "1,1609556645000, bob ,sku-2,\r\n"
        "\r\n"
        "3,1609556645,bob,sku-3\r\n"
        '3,1609556645,"bob,sku-4,x\r\n'
        "3,1609556645,,sku-5,x\r\n"
        "three,1609556645,bob,sku-6,x\r\n",
    )
    config = own.InteractionsConfig(
        user_col="who", item_col="what", time_col="when", rating_col="score"
    )
    f = own.describe("interactions", path)
    assert f.columns == ("score", "when", "who", "what", "extra")
    good, bad = _read_text(f, config, chunk_bytes=40)
    assert good == [
        ('Smith, J. "JJ"', "sku-1", 1609556645, 4.5),
        ("bob", "sku-2", 1609556645, 1.0),
    ]
    assert [(n, reason) for n, _, reason in bad] == [
        (5, "expected 5 ','-separated fields (as in the header), got 4"),
        (6, "malformed ','-separated line: unexpected end of data"),
        (7, "empty who"),
        (8, "non-numeric score 'three'"),
    ]


def test_tsv_and_json_lines_values_of_any_json_type(tmp_path):
    tsv = _write(tmp_path / "a.tsv", 'item_id\tuser_id\ttimestamp\n9\t"x\ty"\t5\n7\t5" tall\t6\n')
    good, bad = _read_text(own.describe("interactions", tsv), own.InteractionsConfig())
    assert good == [("x\ty", "9", 5, 0.0), ('5" tall', "7", 6, 0.0)] and bad == []

    lines = [
        {"user_id": 12, "item_id": 3.0, "timestamp": "2021-01-02", "extra": {"a": 1}},
        {"user_id": "12", "item_id": "b", "timestamp": 1609545600123},
        [1, 2],
        {"user_id": True, "item_id": "b", "timestamp": 1},
        {"user_id": "u", "timestamp": 1},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    jsonl = _write(tmp_path / "b.json", text)
    good, bad = _read_text(own.describe("interactions", jsonl), own.InteractionsConfig())
    assert good == [("12", "3", 1609545600, 0.0), ("12", "b", 1609545600, 0.0)]
    assert [(n, reason.split(":")[0]) for n, _, reason in bad] == [
        (3, "expected a JSON object, got list"),
        (4, "user_id must be a string or a number, got True"),
        (5, "missing item_id"),
        (6, "broken JSON"),
    ]


def test_parquet_typed_columns_row_groups_and_row_numbers(tmp_path):
    stamps = [datetime.datetime(2021, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)] * 5
    stamps[3] = None
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "item_id": pa.array(["a", "b", "a", "b", "a"]).dictionary_encode(),
            "timestamp": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            "rating": pa.array([1.0, None, 3.0, 4.0, 5.0]),
        }
    )
    path = str(tmp_path / "log.parquet")
    pq.write_table(table, path, row_group_size=2)
    f = own.describe("interactions", path)
    assert len(own.parquet_parts("interactions", path)) == 3
    good, bad = _read_parquet(f)
    t = 1609556645
    assert good == [("1", "a", t, 1.0), ("3", "a", t, 3.0), ("5", "a", t, 5.0)]
    assert [(row, reason) for row, _, reason in bad] == [
        (2, "missing rating"),
        (4, "missing timestamp"),
    ]
    # Dates and naive nanosecond timestamps.
    day = pa.table(
        {
            "user_id": ["u"],
            "item_id": ["i"],
            "timestamp": pa.array([datetime.date(2021, 1, 2)], pa.date32()),
        }
    )
    pq.write_table(day, str(tmp_path / "day.parquet"))
    good, _ = _read_parquet(own.describe("interactions", str(tmp_path / "day.parquet")), COLS_NR)
    assert good == [("u", "i", 1609545600, 0.0)]
    ns = pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": pa.array([t * 10**9 + 1])})
    ns = ns.set_column(2, "timestamp", ns["timestamp"].cast(pa.timestamp("ns")))
    pq.write_table(ns, str(tmp_path / "ns.parquet"))
    good, _ = _read_parquet(own.describe("interactions", str(tmp_path / "ns.parquet")), COLS_NR)
    assert good == [("u", "i", t, 0.0)]


# --- files and columns --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_missing_column_names_the_file_the_column_and_the_columns_found(tmp_path, fmt):
    path = str(tmp_path / f"log.{fmt}")
    if fmt == "csv":
        _write(path, "user,item_id,timestamp\nu,i,1\n")
    elif fmt == "jsonl":
        _write(path, '{"user": "u", "item_id": "i", "timestamp": 1}\n')
    else:
        pq.write_table(pa.table({"user": ["u"], "item_id": ["i"], "timestamp": [1]}), path)
    with pytest.raises(ValueError) as err:
        own.resolve_files(own.InteractionsConfig(), str(tmp_path))
    assert str(err.value) == (
        f"{path}: no column 'user_id' (--user_col) in this interactions file; "
        "columns found: 'user', 'item_id', 'timestamp'"
    )


def test_items_file_without_its_category_column_is_an_error(tmp_path):
    _write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\n")
    items = _write(tmp_path / "items.csv", "item_id,genres\ni,A|B\n")
    with pytest.raises(ValueError, match=r"items.csv: no column 'categories' \(--category_col\)"):
        own.resolve_files(own.InteractionsConfig(items_file=items), str(tmp_path))
    config = own.InteractionsConfig(items_file=items, category_col="genres")
    assert own.resolve_files(config, str(tmp_path)) == {
        "interactions/log.csv": str(tmp_path / "log.csv"),
        "items": items,
    }


def test_file_discovery_is_sorted_skips_hidden_and_excludes_item_and_user_files(tmp_path):
    header = "user_id,item_id,timestamp\nu,i,1\n"
    for name in ("b.csv", "A.TSV", ".hidden.csv", "_SUCCESS", "notes.txt", "items.csv"):
        _write(tmp_path / name, header.replace(",", "\t") if name.endswith("TSV") else header)
    one_row = pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": [1]})
    pq.write_table(one_row, str(tmp_path / "c.pq"))
    (tmp_path / "sub.csv").mkdir()
    _write(tmp_path / "sub.csv" / "d.csv", header)
    items = _write(tmp_path / "items.csv", "item_id,categories\ni,A\n")
    files = own.resolve_files(own.InteractionsConfig(items_file=items), str(tmp_path))
    assert list(files) == [
        "interactions/A.TSV",
        "interactions/b.csv",
        "interactions/c.pq",
        "items",
    ]
    # data_dir may be one file.
    one = own.resolve_files(own.InteractionsConfig(), str(tmp_path / "b.csv"))
    assert one == {"interactions/b.csv": str(tmp_path / "b.csv")}


def test_no_data_files_empty_files_and_json_arrays_are_clear_errors(tmp_path):
    _write(tmp_path / "notes.txt", "hello")
    with pytest.raises(FileNotFoundError, match=r"no interaction files .* found: notes.txt"):
        own.resolve_files(own.InteractionsConfig(), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        own.resolve_files(own.InteractionsConfig(), str(tmp_path / "nope"))
    _write(tmp_path / "empty.csv", "")
    with pytest.raises(ValueError, match=r"interactions file is empty \(0 bytes\): .*empty.csv"):
        own.resolve_files(own.InteractionsConfig(), str(tmp_path))
    os.remove(tmp_path / "empty.csv")
    _write(tmp_path / "log.json", '[{"user_id": "u", "item_id": "i", "timestamp": 1}]')
    with pytest.raises(ValueError, match=r"log.json holds a JSON array; write JSON lines"):
        own.resolve_files(own.InteractionsConfig(), str(tmp_path))


def test_item_categories_and_user_attributes(tmp_path):
    items = own.RowParser("items", ("item_id", "categories"), "|")
    assert items(["7", " A | B |A||"]) == ("7", ("A", "B"))
    assert items([7, ["x", 3, None, "x"]]) == ("7", ("x", "3"))
    assert items(["7", None]) == items(["7", ""]) == ("7", ())
    assert own.RowParser("items", ("i", "c"), "")(["7", "A|B"]) == ("7", ("A|B",))

    users = _write(tmp_path / "users.csv", "Home Country,user_id,age (years),plan\nDE,u1,31,\n")
    f = own.describe("users", users)
    assert own.attribute_names(f, COLS) == (
        ("Home Country", "Home_Country"),
        ("age (years)", "age_years"),
        ("plan", "plan"),
    )
    columns, parser = own.row_parser(f, COLS)
    assert columns == ("user_id", "Home Country", "age (years)", "plan")
    assert parser(["u1", "DE", "31", ""]) == ("u1", {"Home_Country": "DE", "age_years": "31"})
    assert parser(["u1", None, 31.0, True]) == ("u1", {"age_years": "31", "plan": "true"})

    counts = [(("g", "M"), 5), (("g", "F"), 5), (("g", "X"), 1), (("age", "30"), 2)]
    assert own.attribute_classes(counts, ["g", "age", "none"], 2) == [
        ("g", ["F", "M"]),  # by count, ties by value, capped
        ("age", ["30"]),
        ("none", []),
    ]


def test_config_rejects_ambiguous_columns_and_missing_data_dir():
    with pytest.raises(ValueError, match="--user_col and --item_col both name column 'id'"):
        own.InteractionsConfig(user_col="id", item_col="id")
    with pytest.raises(ValueError, match="--time_col must name a column"):
        own.InteractionsConfig(time_col="")
    with pytest.raises(ValueError, match="--dataset=interactions needs --data_dir"):
        PreprocessConfig(dataset="interactions")
    with pytest.raises(ValueError, match="apply to --dataset=interactions only"):
        PreprocessConfig(dataset="ml-1m", interactions=own.InteractionsConfig(users_file="u"))


def test_flags_reach_the_config_and_column_flags_change_the_version(tmp_path):
    _write(tmp_path / "log.csv", "u,i,t,r\nu1,i1,1,5\n")
    parser = argparse.ArgumentParser()
    add_flags(parser)
    argv = [
        "--dataset=interactions",
        f"--data_dir={tmp_path}",
        "--user_col=u",
        "--item_col=i",
        "--time_col=t",
        "--rating_col=r",
        "--category_sep=,",
        "--max_attribute_classes=7",
    ]
    config = config_from_flags(parser.parse_args(argv))
    assert config.interactions == own.InteractionsConfig(
        user_col="u",
        item_col="i",
        time_col="t",
        rating_col="r",
        category_sep=",",
        max_attribute_classes=7,
    )
    files = inputs.resolve_inputs(config)
    assert files == {"interactions/log.csv": str(tmp_path / "log.csv")}
    version = inputs.version_of(config, files)
    assert inputs.version_of(config, files) == version
    for change in ({"rating_col": ""}, {"category_sep": "|"}, {"max_attribute_classes": 8}):
        other = dataclasses.replace(
            config, interactions=dataclasses.replace(config.interactions, **change)
        )
        assert inputs.version_of(other, files) != version, change
    # Other datasets' versions do not see the interactions settings.
    ml = PreprocessConfig(dataset="ml-1m")
    assert "interactions" not in ml.output_settings()
    assert PreprocessConfig(
        dataset="synthetic", interactions=config.interactions
    ).output_settings() == (PreprocessConfig(dataset="synthetic").output_settings())


# --- end to end ---------------------------------------------------------------


def _config(tmp_path, **kw) -> PreprocessConfig:
    kw.setdefault("kcore_max_iterations", 4)
    kw.setdefault("num_shards", 2)
    kw.setdefault("future_len", 3)
    return PreprocessConfig(output_dir=str(tmp_path / "out"), dataset="interactions", **kw)


def _examples(root: str) -> dict[str, list[dict]]:
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


def _k_core(rows, min_user, min_item):
    while True:
        users = collections.Counter(r[0] for r in rows)
        kept = [r for r in rows if users[r[0]] >= min_user]
        items = collections.Counter(r[1] for r in kept)
        kept = [r for r in kept if items[r[1]] >= min_item]
        if len(kept) == len(rows):
            return rows
        rows = kept


def _meta(root):
    with open(os.path.join(root, F.METADATA_FILE)) as f:
        return json.load(f)


def test_end_to_end_every_format_with_items_users_and_bad_records(tmp_path):
    fixture = rawdata.write_interactions(
        tmp_path / "raw",
        formats=("csv", "tsv", "jsonl", "parquet"),
        num_users=30,
        per_user=(6, 16),
        bad_lines=["1600000000,,1000"],
        parquet_bad_rows=1,
        row_group_size=32,
    )
    own_config = own.InteractionsConfig(
        rating_col="rating", items_file=fixture["items_path"], users_file=fixture["users_path"]
    )
    config = _config(
        tmp_path, data_dir=fixture["data_dir"], interactions=own_config, max_bad_fraction=0.01
    )
    root = preprocess(config)
    assert root.startswith(os.path.join(config.output_dir, "interactions", "v-"))
    names = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
    assert {"schema.pbtxt", "metadata.json", "vocab/items.txt", "vocab/genres.txt"} <= names
    assert {f"Split-{s}/data-0000{i}-of-00002.tfrecord.gz" for s in F.SPLITS for i in (0, 1)} <= (
        names
    )

    meta = _meta(root)
    assert meta["dataset"] == "interactions" and meta["item_feature"] == "category"
    assert meta["has_ratings"] is True
    assert meta["attributes"] == {
        "age": {"classes": ["20", "25", "30", "35"]},  # 8, 8, 7, 7 users
        "country": {"classes": ["DE", "FR", "US"]},  # every 6th user has none
        "gender": {"classes": ["F", "M"]},
    }
    assert meta["input_records"] == {
        "interactions": len(fixture["interactions"]) + 2,
        "items": len(fixture["items"]),
        "users": len(fixture["users"]),
    }
    assert meta["bad_records"]["by_file"] == {"part-0-csv.csv": 1, "part-3-parquet.parquet": 1}
    bad = {
        name: [json.loads(x) for x in open(os.path.join(root, "bad_records", name + ".jsonl"))]
        for name in meta["bad_records"]["by_file"]
    }
    (csv_bad,), (pq_bad,) = bad["part-0-csv.csv"], bad["part-3-parquet.parquet"]
    assert (csv_bad["line"], csv_bad["text"].encode()) == fixture["bad"][0][1:]
    assert csv_bad["reason"] == "expected 5 ','-separated fields (as in the header), got 3"
    assert pq_bad["row"] == fixture["bad"][1][1] and "'yesterday'" in pq_bad["reason"]
    assert sorted(meta["source_files"]) == [
        "interactions/part-0-csv.csv",
        "interactions/part-1-tsv.tsv",
        "interactions/part-2-jsonl.jsonl",
        "interactions/part-3-parquet.parquet",
        "items",
        "users",
    ]

    genres = open(os.path.join(root, "vocab/genres.txt")).read().splitlines()
    assert set(genres[3:]) <= set(rawdata.OWN_CATEGORIES) and "Music, Film & TV" in genres
    categories, attributes = dict(fixture["items"]), fixture["attributes"]
    expected = _k_core(fixture["interactions"], 5, 5)
    ratings = {(u, i, t): r for u, i, t, r in expected}
    kept = set(expected)
    # The files one after the other in sorted name order, each in line (row) order.
    in_files = [r for path in sorted(fixture["files"]) for r in fixture["files"][path]]
    in_order = rawdata.time_order([r for r in in_files if r in kept])
    got = []
    for split, rows in _examples(root).items():
        assert len(rows) == meta["num_users"][split]
        for row in rows:
            user = row[F.USER_ID][0]
            raw = row[F.HISTORY_RAW_ITEM_IDS] + row[F.FUTURE_RAW_ITEM_IDS]
            stamps = row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS]
            scores = row[F.HISTORY_RATINGS] + row[F.FUTURE_RATINGS]
            assert list(zip(stamps, raw, scores)) == in_order[user]
            assert scores == [ratings[(user, i, t)] for i, t in zip(raw, stamps)]
            got += [(user, i, t) for i, t in zip(raw, stamps)]
            hist = row[F.HISTORY_RAW_ITEM_IDS]
            assert [genres[g] for g in row[F.HISTORY_GENRE_IDS]] == [
                c for i in hist for c in categories[i]
            ]
            for name, spec in meta["attributes"].items():
                index = row[F.ATTRIBUTE_PREFIX + name][0]
                value = attributes[user].get(name)
                assert index == (spec["classes"].index(value) if value else -1)
    assert sorted(got) == sorted((u, i, t) for u, i, t, _ in expected)
    assert any("," in u for u, _, _ in got)  # the quoted user id went all the way

    assert set(eval_data.available_tasks(root)) >= {
        tasks.LIKED_ITEM,
        tasks.FAVORITE_GENRE,
        "attr_age",
        "attr_country",
        "attr_gender",
    }


def test_end_to_end_without_optional_files_or_ratings(tmp_path):
    fixture = rawdata.write_interactions(
        tmp_path / "raw",
        num_users=24,
        per_user=12,
        ratings=False,
        items_file=None,
        users_file=None,
        bad_lines=["1600000000,oops"],
    )
    # Not a k-core test: few rounds keep the two runs short.
    config = _config(
        tmp_path, data_dir=fixture["data_dir"], kcore_max_iterations=2, min_item_interactions=2
    )
    with pytest.raises(BadRecordsError, match=r"1 of \d+ input records .*part-0-csv.csv: 1"):
        preprocess(config)

    root = preprocess(dataclasses.replace(config, max_bad_fraction=0.01))
    meta = _meta(root)
    assert meta["has_ratings"] is False and meta["attributes"] == {}
    assert meta["vocab_sizes"]["genres"] == F.NUM_RESERVED
    assert meta["items_without_metadata"] == len({i for _, i, _, _ in fixture["interactions"]})
    assert meta["bad_records"]["by_file"] == {"part-0-csv.csv": 1}
    schema = open(os.path.join(root, F.SCHEMA_FILE)).read()
    assert F.ATTRIBUTE_PREFIX not in schema
    rows = [r for rs in _examples(root).values() for r in rs]
    assert rows and all(set(r[F.HISTORY_RATINGS] + r[F.FUTURE_RATINGS]) == {0.0} for r in rows)
    assert all(r[F.HISTORY_GENRE_IDS] == [] and r[F.FUTURE_GENRE_COUNTS] for r in rows)

    available = eval_data.available_tasks(root)
    assert tasks.NEXT_ITEM in available
    assert tasks.LIKED_ITEM not in available and tasks.FAVORITE_GENRE not in available
    with pytest.raises(ValueError, match="liked_item.*no ratings"):
        eval_data.load_eval_data(root, tasks=[tasks.LIKED_ITEM])


def test_several_files_order_ties_by_file_rank_then_line(tmp_path):
    """Same-second interactions spread over files: by (timestamp, rank of the file in
    sorted name order, line or row), whatever the generation order or the item ids."""
    fixture = rawdata.write_interactions(
        tmp_path / "raw",
        formats=("parquet", "csv", "jsonl", "tsv"),  # part-0-parquet.parquet, part-1-csv.csv, ...
        num_users=20,
        per_user=(6, 12),
        items_file=None,
        users_file=None,
        burst=4,  # each user's last 4 share a second, written over 4 files
        row_group_size=8,
    )
    config = _config(
        tmp_path,
        data_dir=fixture["data_dir"],
        interactions=COLS,
        min_user_interactions=1,
        min_item_interactions=1,
        future_len=2,
        min_history_len=1,
        chunk_bytes=64,
    )
    root = preprocess(config)
    assert _meta(root)["tie_order"].startswith("input order")
    in_files = [r for path in sorted(fixture["files"]) for r in fixture["files"][path]]
    in_order = rawdata.time_order(in_files)
    generated = rawdata.time_order(fixture["interactions"])
    not_generated = 0
    for rows in _examples(root).values():
        for row in rows:
            user = row[F.USER_ID][0]
            raw = row[F.HISTORY_RAW_ITEM_IDS] + row[F.FUTURE_RAW_ITEM_IDS]
            stamps = row[F.HISTORY_TIMESTAMPS] + row[F.FUTURE_TIMESTAMPS]
            scores = row[F.HISTORY_RATINGS] + row[F.FUTURE_RATINGS]
            assert list(zip(stamps, raw, scores)) == in_order[user]
            burst = raw[-4:]
            assert len(set(stamps[-4:])) == 1 and burst != sorted(burst)  # not id order
            not_generated += in_order[user] != generated[user]
    assert not_generated > 0  # a burst that wraps from the last file to the first
