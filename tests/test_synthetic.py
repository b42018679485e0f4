"""The synthetic generator: determinism, formats, and that its planted structure is there.

The structure tests use the default config (6000 users, ~360k interactions)
and simple statistics a person can recompute; each prints its figure beside
the chance level it is compared with.
"""

import csv
import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipelines import synthetic as S

DEFAULT = S.SyntheticConfig()


def _concat_blocks(config):
    cols, users = [], []
    for block in range(S.num_blocks(config)):
        c, u = S.generate_block(config, block)
        cols.append(c)
        users.extend(u)
    return {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}, users


@pytest.fixture(scope="module")
def data():
    """Default dataset as index arrays: per interaction and per user."""
    cols, users = _concat_blocks(DEFAULT)
    records = S.item_records(DEFAULT)
    ids = np.array([r[0] for r in records])
    assert (ids[:-1] < ids[1:]).all()  # sorted, so searchsorted maps id -> index
    item = np.searchsorted(ids, cols["item"])
    assert (ids[item] == cols["item"]).all()
    num_genres = DEFAULT.num_genres
    # item -> genre membership matrix (primary and second genre), [items, genres]
    membership = np.zeros((len(records), num_genres))
    for i, (_, genres) in enumerate(records):
        for g in genres:
            membership[i, int(g[1:])] = 1.0
    change = np.flatnonzero(cols["user"][1:] != cols["user"][:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(item)]]))
    return {
        "item": item,
        "starts": starts,
        "lengths": lengths,
        "user": np.repeat(np.arange(len(starts)), lengths),
        "timestamp": cols["timestamp"],
        "rating": cols["rating"],
        "membership": membership,
        "primary": np.array([int(r[1][0][1:]) for r in records]),
        "segment": np.array([int(u[1]["segment"][1:]) for u in users]),
        "user_ids": [u[0] for u in users],
        "raw_users": cols["user"],
    }


def _genre_counts(data, mask):
    """Per-user genre counts over the interactions where ``mask`` holds: [users, genres]."""
    counts = np.zeros((len(data["starts"]), DEFAULT.num_genres))
    np.add.at(counts, data["user"][mask], data["membership"][data["item"][mask]])
    return counts


def test_same_config_same_data_and_different_seed_different_data():
    a, ua = S.generate_block(DEFAULT, 1)
    S._build_catalog.cache_clear()  # the catalog must come from the seed, not the cache
    b, ub = S.generate_block(S.SyntheticConfig(), 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert ua == ub
    c, _ = S.generate_block(S.SyntheticConfig(seed=1), 1)
    n = min(len(a["item"]), len(c["item"]))
    assert (a["item"][:n] != c["item"][:n]).mean() > 0.9


def test_block_does_not_depend_on_num_users():
    small = S.SyntheticConfig(num_users=2500)
    large = S.SyntheticConfig(num_users=3000)
    assert S.num_blocks(small) == 3 and S.num_blocks(large) == 3
    assert S.item_records(small) == S.item_records(large)
    for block in (0, 2):
        a, ua = S.generate_block(small, block)
        b, ub = S.generate_block(large, block)
        n = len(a["item"])
        assert ub[: len(ua)] == ua
        for key in a:
            np.testing.assert_array_equal(a[key], b[key][:n])
    a, ua = S.generate_block(small, 2)
    assert len(ua) == 500 and ua[0][0] == "u002000" and ua[-1][0] == "u002499"
    assert set(a["user"]) == {u for u, _ in ua}


def test_shapes_dtypes_and_ids(data):
    cols, users = S.generate_block(DEFAULT, 0)
    assert set(cols) == {"user", "item", "timestamp", "rating"}
    n = len(cols["item"])
    assert all(v.shape == (n,) for v in cols.values())
    assert cols["user"].dtype.kind == "U" and cols["item"].dtype.kind == "U"
    assert cols["timestamp"].dtype == np.int64 and cols["rating"].dtype == np.float32
    assert all(re.fullmatch(r"u\d{6}", u) for u in np.unique(cols["user"]))
    assert all(re.fullmatch(r"i\d{5}", i) for i in np.unique(cols["item"]))
    assert set(np.unique(cols["rating"]).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert [u for u, _ in users] == [f"u{i:06d}" for i in range(1000)]
    assert {a["segment"] for _, a in users} == set(S.ATTRIBUTES["segment"])
    assert S.ATTRIBUTES == {"segment": ("s0", "s1", "s2", "s3", "s4")}

    records = S.item_records(DEFAULT)
    assert len(records) == 1500 and records[42][0] == "i00042"
    assert (
        type(records[0][0]) is str and type(users[0][0]) is str
    )  # picklable, JSON-able
    assert all(re.fullmatch(r"g\d\d", g) for _, gs in records for g in gs)
    assert all(len(gs) in (1, 2) and len(set(gs)) == len(gs) for _, gs in records)
    assert len({gs[0] for _, gs in records}) == DEFAULT.num_genres

    # Whole default dataset: 6000 users, lengths in [20, 100] with mean ~40.
    lengths = data["lengths"]
    assert len(lengths) == 6000 and data["user_ids"][-1] == "u005999"
    assert lengths.min() >= 20 and lengths.max() <= 100
    print(f"mean length {lengths.mean():.1f} (config 40), max {lengths.max()}")
    assert abs(lengths.mean() - 40) < 2


def test_timestamps_non_decreasing_per_user_with_ties(data):
    ts = data["timestamp"]
    same_user = data["user"][1:] == data["user"][:-1]
    diffs = np.diff(ts)[same_user]
    assert (diffs >= 0).all()
    tie_rate = (diffs == 0).mean()
    print(f"tie rate {tie_rate:.3f} (config tie_p {DEFAULT.tie_p})")
    assert 0.03 < tie_rate < 0.08
    assert ts.min() >= 946_684_800  # 2000-01-01


def test_future_favorite_genre_is_predictable_from_history(data):
    last10 = np.concatenate(
        [np.arange(s + n - 10, s + n) for s, n in zip(data["starts"], data["lengths"])]
    )
    future = np.zeros(len(data["item"]), bool)
    future[last10] = True
    fav_history = _genre_counts(data, ~future).argmax(1)
    fav_future = _genre_counts(data, future).argmax(1)
    rate = (fav_history == fav_future).mean()
    # Chance: the same comparison against a random other user's history.
    perm = np.random.default_rng(0).permutation(len(fav_history))
    chance = (fav_history[perm] == fav_future).mean()
    print(f"favorite genre last-10 == history: {rate:.3f}, chance {chance:.3f}")
    assert rate > 0.6 and rate > 4 * chance


@pytest.mark.parametrize("markov_p", [0.0, 0.4, 0.7])
def test_consecutive_successor_rate_matches_markov_p(markov_p):
    config = S.SyntheticConfig(num_users=2000, markov_p=markov_p)
    cols, _ = _concat_blocks(config)
    item = np.array([int(i[1:]) for i in cols["item"]])
    same_user = cols["user"][1:] == cols["user"][:-1]
    prev, nxt = item[:-1][same_user], item[1:][same_user]
    successors = S._catalog(config).successors
    rate = (successors[prev] == nxt[:, None]).any(1).mean()
    print(f"markov_p {markov_p}: successor rate {rate:.3f}")
    # Base draws hit a successor by accident only a few percent of the time.
    assert markov_p - 0.01 < rate < markov_p + 0.04


def test_ratings_higher_on_users_top_genre(data):
    top = _genre_counts(data, np.ones(len(data["item"]), bool)).argmax(1)
    on_top = data["primary"][data["item"]] == top[data["user"]]
    mean_top = data["rating"][on_top].mean()
    mean_other = data["rating"][~on_top].mean()
    liked = (data["rating"] >= 4).mean()
    print(
        f"mean rating top genre {mean_top:.2f}, others {mean_other:.2f}; liked share {liked:.2f}"
    )
    assert mean_top - mean_other > 0.8
    assert 0.35 < liked < 0.7  # the liked-item task is not degenerate


def test_segment_predictable_from_history_genre_counts(data):
    counts = _genre_counts(data, np.ones(len(data["item"]), bool))
    x = counts / counts.sum(1, keepdims=True)
    y = data["segment"]
    clf = LogisticRegression(max_iter=1000).fit(x[:4000], y[:4000])
    acc = clf.score(x[4000:], y[4000:])
    majority = np.bincount(y[4000:]).max() / len(y[4000:])
    print(f"segment accuracy {acc:.3f}, majority {majority:.3f}")
    assert acc > majority + 0.3


def test_popularity_is_zipf_like(data):
    counts = np.sort(np.bincount(data["item"], minlength=DEFAULT.num_items))[::-1]
    share = counts[: DEFAULT.num_items // 10].sum() / counts.sum()
    print(f"top 10% of items carry {share:.3f} of interactions (uniform: 0.10)")
    assert share > 0.45
    assert (counts > 0).mean() > 0.9  # the tail is still used


def test_write_movielens_csv_round_trip(tmp_path):
    config = S.SyntheticConfig(num_users=1500)
    out = S.write_movielens_csv(config, str(tmp_path))
    cols, _ = _concat_blocks(config)
    with open(out["ratings_path"], newline="") as f:
        lines = f.read().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    rows = list(csv.reader(lines[1:]))
    assert out["num_ratings"] == len(rows) == len(cols["item"])
    assert out["num_users"] == 1500 and out["num_items"] == 1500
    assert [int(r[0]) for r in rows] == [int(u[1:]) for u in cols["user"]]
    assert [int(r[1]) for r in rows] == [int(i[1:]) for i in cols["item"]]
    assert [float(r[2]) for r in rows] == cols["rating"].tolist()
    assert [int(r[3]) for r in rows] == cols["timestamp"].tolist()
    assert re.fullmatch(r"\d+,\d+,[1-5]\.0,\d+", lines[1])

    with open(out["movies_path"], newline="", encoding="utf-8") as f:
        text = f.read()
    movies = list(csv.reader(text.splitlines()))
    assert movies[0] == ["movieId", "title", "genres"]
    records = S.item_records(config)
    assert len(movies) - 1 == len(records)
    for (movie_id, _title, genres), (raw_id, raw_genres) in zip(movies[1:], records):
        assert int(movie_id) == int(raw_id[1:])
        assert genres.split("|") == list(raw_genres)
    assert any("," in title for _, title, _ in movies[1:])
    assert '"Synthetic Film 0, The (1950)"' in text  # quoted like the real file


def test_invalid_config_says_what_is_wrong():
    with pytest.raises(ValueError, match="min_len <= mean_len"):
        S.SyntheticConfig(min_len=30, mean_len=20)
    with pytest.raises(ValueError, match="markov_p"):
        S.SyntheticConfig(markov_p=1.5)
    with pytest.raises(ValueError, match="out of range"):
        S.generate_block(DEFAULT, 6)
