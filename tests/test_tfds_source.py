"""`pipelines.tfds_source`: TFDS MovieLens read shard by shard into raw-source records.

Two kinds of tests:

* `tfds.testing.mock_data`: the real `tfds.builder`/`as_dataset` path with
  random examples. mock_data draws ClassLabels as ints in [0, num_classes),
  bools at random, floats in [0, 1), ints in [0, 255) and strings of
  ' abcdefghij'; it ignores split slicing (every sub-split yields the same
  examples), so it checks types and mappings, not sharding.
* A real TFDS build of `movielens/*-ratings` from raw fixture files (only the
  HTTP download is replaced by the fixture directory, as TFDS's own builder
  tests do). This checks that shards partition the split and that the TFDS
  source yields exactly the records the raw parsers give for the same data.
"""

import collections
from unittest import mock

import pytest
import rawdata
import tensorflow_datasets as tfds

from pipelines import sources, tfds_source


def _by_kind(records):
    out = collections.defaultdict(list)
    for kind, record in records:
        out[kind].append(record)
    return out


# --- attributes and argument checks ------------------------------------------


def test_attributes_match_raw_source():
    assert tfds_source.tfds_attributes("ml-1m") == sources.get_source("ml-1m").attributes
    assert tfds_source.tfds_attributes("ml-100k") == sources.get_source("ml-100k").attributes
    assert dict(tfds_source.tfds_attributes("ml-20m")) == {}
    with pytest.raises(
        ValueError, match="no TFDS dataset for 'yelp'; valid: ml-100k, ml-1m, ml-20m"
    ):
        tfds_source.tfds_attributes("yelp")


@pytest.mark.parametrize("shard, num_shards", [(2, 2), (-1, 3), (0, 0)])
def test_shard_out_of_range(shard, num_shards):
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        next(tfds_source.tfds_records("ml-1m", shard, num_shards))


# --- mock_data ----------------------------------------------------------------


def test_mock_ml1m_types_and_attribute_mapping():
    n = 12
    with tfds.testing.mock_data(num_examples=n):
        examples = list(tfds.as_numpy(tfds.load("movielens/1m-ratings", split="train")))
        records = list(tfds_source.tfds_records("ml-1m", 0, 1))
        info = tfds.builder("movielens/1m-ratings").info
        assert tfds_source.shard_start("ml-1m", 0, 1) is None  # no split sizes: unknown
    assert [kind for kind, _ in records] == ["interactions", "items", "users"] * n
    got = _by_kind(records)
    genre_names = info.features["movie_genres"].feature.names
    occupation_names = info.features["user_occupation_label"].names
    classes = tfds_source.tfds_attributes("ml-1m")
    for ex, inter, item, user in zip(examples, got["interactions"], got["items"], got["users"]):
        user_id, item_id, ts, rating = inter
        assert (type(user_id), type(item_id), type(ts), type(rating)) == (str, str, int, float)
        assert user_id == ex["user_id"].decode() == user[0]
        assert item_id == ex["movie_id"].decode() == item[0]
        assert 0 <= ts < 255 and ts == ex["timestamp"]  # mock ints are in [0, 255)
        assert 0.0 <= rating < 1.0  # mock floats are in [0, 1)
        expected = [genre_names[g] for g in ex["movie_genres"]]
        expected = ["Children's" if g == "Children" else g for g in expected]
        assert list(item[1]) == [g for g in expected if g != "(no genres listed)"]
        attrs = user[1]
        assert set(attrs) == {"gender", "age", "occupation"}
        assert attrs["gender"] == ("M" if ex["user_gender"] else "F")
        assert attrs["age"] == "1"  # mock ages are < 1, below the first bucket
        # Mock occupation texts are random, so the label decides.
        label = occupation_names[ex["user_occupation_label"]]
        if label in ("entertainment", "librarian"):
            assert attrs["occupation"] == "0"
        elif label == "student":
            assert attrs["occupation"] == "4"
        else:
            assert tfds_source._ML1M_OCCUPATIONS[int(attrs["occupation"])] == label
        for name, value in attrs.items():
            assert value in classes[name]


def test_mock_ml100k_types_and_attribute_mapping():
    n = 40
    with tfds.testing.mock_data(num_examples=n):
        examples = list(tfds.as_numpy(tfds.load("movielens/100k-ratings", split="train")))
        records = list(tfds_source.tfds_records("ml-100k", 0, 1, batch_size=16))
        info = tfds.builder("movielens/100k-ratings").info
    assert [kind for kind, _ in records] == ["interactions", "items", "users"] * n
    got = _by_kind(records)
    genre_names = info.features["movie_genres"].feature.names
    label_names = info.features["user_occupation_label"].names
    classes = tfds_source.tfds_attributes("ml-100k")
    seen_unknown = False
    for ex, inter, item, user in zip(examples, got["interactions"], got["items"], got["users"]):
        user_id, item_id, ts, rating = inter
        assert (type(user_id), type(item_id), type(ts), type(rating)) == (str, str, int, float)
        assert user_id == ex["user_id"].decode() == user[0]
        assert item_id == ex["movie_id"].decode() == item[0]
        expected = [genre_names[g] for g in ex["movie_genres"]]
        seen_unknown |= "Unknown" in expected
        expected = ["Children's" if g == "Children" else g for g in expected]
        assert list(item[1]) == [g for g in expected if g not in ("Unknown", "(no genres listed)")]
        attrs = user[1]
        assert attrs["gender"] == ("M" if ex["user_gender"] else "F")
        assert attrs["age"] == "1"  # mock raw ages are < 1 year
        # Mock occupation texts are random strings, so the label decides.
        label = label_names[ex["user_occupation_label"]]
        expected_word = tfds_source._LABEL_FALLBACK_100K.get(label, "other")
        assert attrs["occupation"] == expected_word
        for name, value in attrs.items():
            assert value in classes[name]
    assert seen_unknown  # the "Unknown" class was drawn and dropped


def test_mock_ml20m_has_no_users():
    with tfds.testing.mock_data(num_examples=5):
        kinds = [kind for kind, _ in tfds_source.tfds_records("ml-20m", 0, 1)]
    assert kinds == ["interactions", "items"] * 5


# --- real TFDS build from raw fixture files -----------------------------------


def _build(tmp_path_factory, name, writer, **kwargs):
    pytest.importorskip(
        "importlib_resources",
        reason="TFDS 4.9.x download_and_prepare imports importlib_resources without "
        "declaring it (tensorflow/datasets#11212); pip install importlib-resources",
    )
    raw = tmp_path_factory.mktemp(f"raw-{name}")
    summary = writer(raw / name, **kwargs)
    data_dir = tmp_path_factory.mktemp(f"tfds-{name}")
    # TFDS's builder downloads <name>.zip and reads <extracted>/<name>/; hand it
    # the fixture directory instead of the download.
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(raw)
    ):
        tfds_source.prepare_tfds(name, data_dir=str(data_dir))
    return summary, str(data_dir)


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory):
    return _build(
        tmp_path_factory, "ml-1m", rawdata.write_ml1m, num_users=15, per_user=(2, 8), seed=1
    )


@pytest.fixture(scope="module")
def ml20m(tmp_path_factory):
    return _build(
        tmp_path_factory, "ml-20m", rawdata.write_ml20m, num_users=12, per_user=(2, 7), seed=2
    )


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    return _build(
        tmp_path_factory, "ml-100k", rawdata.write_ml100k, num_users=16, per_user=(2, 8), seed=4
    )


@pytest.mark.parametrize("num_shards", [1, 3, 4])
def test_shards_partition_the_split(ml1m, num_shards):
    summary, data_dir = ml1m
    n = len(summary["interactions"])
    shards = [
        _by_kind(tfds_source.tfds_records("ml-1m", s, num_shards, data_dir=data_dir))
        for s in range(num_shards)
    ]
    sizes = [len(shard["interactions"]) for shard in shards]
    # even_splits: sizes differ by at most one, remainder on the first shards.
    assert sizes == [n // num_shards + (s < n % num_shards) for s in range(num_shards)]
    seen = [set(shard["interactions"]) for shard in shards]
    for i in range(num_shards):
        for j in range(i + 1, num_shards):
            assert not seen[i] & seen[j]
    assert set().union(*seen) == set(summary["interactions"])
    assert all(len(s["items"]) == len(s["users"]) == len(s["interactions"]) for s in shards)
    # Consecutive ranges of the split's one order: shard_start + i is the index in it.
    whole = _by_kind(tfds_source.tfds_records("ml-1m", 0, 1, data_dir=data_dir))["interactions"]
    for s, shard in enumerate(shards):
        start = tfds_source.shard_start("ml-1m", s, num_shards, data_dir=data_dir)
        assert shard["interactions"] == whole[start : start + sizes[s]]


def test_more_shards_than_examples(ml1m):
    summary, data_dir = ml1m
    n = len(summary["interactions"])
    last = list(tfds_source.tfds_records("ml-1m", n - 1, n + 2, data_dir=data_dir))
    empty = list(tfds_source.tfds_records("ml-1m", n + 1, n + 2, data_dir=data_dir))
    assert [kind for kind, _ in last] == ["interactions", "items", "users"]
    assert empty == []


def test_ml1m_tfds_records_equal_raw_records(ml1m):
    summary, data_dir = ml1m
    got = _by_kind(tfds_source.tfds_records("ml-1m", 0, 1, data_dir=data_dir, batch_size=7))
    assert sorted(got["interactions"]) == sorted(summary["interactions"])
    rated = {item for _, item, _, _ in summary["interactions"]}
    # Same genre names as movies.dat, including "Children's" (TFDS renames it).
    assert dict(got["items"]) == {i: g for i, g in summary["items"] if i in rated}
    assert any("Children's" in g for _, g in got["items"])
    assert dict(got["users"]) == dict(summary["users"])
    # The occupation codes round-trip through TFDS's occupation text exactly.
    assert {a["occupation"] for _, a in got["users"]} == {
        a["occupation"] for _, a in summary["users"]
    }


def test_ml20m_tfds_records_equal_raw_records(ml20m):
    summary, data_dir = ml20m
    got = _by_kind(tfds_source.tfds_records("ml-20m", 0, 1, data_dir=data_dir))
    assert set(got) == {"interactions", "items"}
    assert sorted(got["interactions"]) == sorted(summary["interactions"])
    assert {r for *_, r in got["interactions"]} - {h / 2 for h in range(1, 11)} == set()
    rated = {item for _, item, _, _ in summary["interactions"]}
    expected_items = {i: g for i, g in summary["items"] if i in rated}
    assert dict(got["items"]) == expected_items
    assert () in expected_items.values()  # a "(no genres listed)" movie was rated


def test_ml100k_tfds_records_equal_raw_records(ml100k):
    """TFDS's own u.data/u.item/u.user parsing, mapped back, equals the raw readers."""
    summary, data_dir = ml100k
    got = _by_kind(tfds_source.tfds_records("ml-100k", 0, 1, data_dir=data_dir, batch_size=7))
    assert sorted(got["interactions"]) == sorted(summary["interactions"])
    rated = {item for _, item, _, _ in summary["interactions"]}
    expected_items = {i: g for i, g in summary["items"] if i in rated}
    assert dict(got["items"]) == expected_items
    assert () in expected_items.values()  # an unknown-only or unflagged movie was rated
    assert any("Children's" in g for _, g in got["items"])
    assert dict(got["users"]) == dict(summary["users"])
    # Every age bucket boundary of the fixture came through raw_user_age alike.
    assert {a["age"] for _, a in got["users"]} == set(sources.ML1M_ATTRIBUTES["age"])
    # Sharded reads partition the split.
    shards = [
        _by_kind(tfds_source.tfds_records("ml-100k", s, 3, data_dir=data_dir)) for s in range(3)
    ]
    assert sorted(r for sh in shards for r in sh["interactions"]) == sorted(summary["interactions"])
