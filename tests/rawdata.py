"""Fixture writers: small datasets in the exact raw layouts of FORMATS.md.

Each writer creates the files of one source in `data_dir` (created if needed)
from a seed, and returns a summary the tests compare against:

``{"data_dir": str, "paths": {role: path}, "interactions": [...],
"items": [...], "users": [...], "bad_lines": [(line_number, raw_bytes)],
"num_lines": {role: lines in the file including header and bad lines}}``

`interactions`, `items` and `users` are the records the parsers of
`pipelines.sources` must produce for the good lines, in file order, as plain
tuples; line numbers are 1-based and count the header. `bad_lines` are written
raw into the interactions file, spread over it at fixed positions (bad line
``i`` of ``n`` goes before good line ``(i + 1) * G // (n + 1)`` of ``G``).

The values are built so that edge cases appear in every fixture: latin-1 and
UTF-8 titles with commas, quotes, parentheses and colons; the first user has
three ratings with the same timestamp (tie-break tests), and with ``burst=k``
every user's last k ratings share one timestamp and are written in DESCENDING
item-id order (file order, not id order, must decide); item popularity is
skewed (k-core tests find rare items); some movies have no genres and some
businesses null or empty categories; ML-100K users cover every age bucket
boundary and zip codes with letters, and its movies include ``unknown``-only,
all-zero and ``unknown`` plus real genre flags and empty release dates.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import string
from collections.abc import Sequence

import numpy as np

ML100K_GENRES = (  # u.genre order
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML100K_OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment",
    "executive", "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none",
    "other", "programmer", "retired", "salesman", "scientist", "student", "technician",
    "writer",
)  # fmt: skip
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML20M_GENRES = tuple(g if g != "Children's" else "Children" for g in ML1M_GENRES) + ("IMAX",)
YELP_CATEGORIES = (
    "Restaurants", "Breakfast & Brunch", "Coffee & Tea", "Bars", "Nightlife",
    "Pizza", "Italian", "Mexican", "Shopping", "Beauty & Spas", "Nail Salons",
    "Auto Repair", "Automotive", "Food", "Bakeries", "Sushi Bars", "Japanese",
)  # fmt: skip

# Titles with the awkward characters of the real files (no '::' inside).
ML_TITLES = (
    "Misérables, Les (1995)",
    "Toy Story (1995)",
    "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
    '"Great Performances" Cats (1998)',
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)",
    "Shawshank Redemption, The (1994)",
    "Nikita (La Femme Nikita) (1990)",
    "Crème de la crème, La 'Special' (1998)",
)
ML100K_BASE_TIME = 874724710  # 1997-09-20, start of the ML-100K period
ML1M_BASE_TIME = 956703932  # 2000-04-25, start of the ML-1M period
ML20M_BASE_TIME = 1104537600  # 2005-01-01
YELP_BASE_TIME = 1262304000  # 2010-01-01
_ID_ALPHABET = string.ascii_letters + string.digits + "-_"


def _per_user_counts(rng, num_users: int, per_user) -> list[int]:
    if isinstance(per_user, int):
        return [per_user] * num_users
    low, high = per_user
    return [int(c) for c in rng.integers(low, high + 1, size=num_users)]


def _pick_items(rng, num_items: int, count: int) -> list[int]:
    """`count` distinct item indices, popular (low) indices more likely."""
    if count > num_items:
        raise ValueError(f"per_user={count} exceeds num_items={num_items}")
    weights = 1.0 / (np.arange(num_items) + 1.0) ** 0.8
    return [
        int(i) for i in rng.choice(num_items, size=count, replace=False, p=weights / weights.sum())
    ]


def _user_events(rng, counts, num_items, base_time, star_values, burst=0, ids=None):
    """Per user: list of (item_index, timestamp, rating), in file (not time) order.

    The first user's first three events share one timestamp. With `burst`, each
    user's last `burst` events (by time) share the timestamp of the first of
    them and keep their slots in the file, filled in descending ``ids[item]``
    order (string order, the old tie-break's reverse); `burst` draws nothing
    from `rng`, so the other values are the same as without it.
    """
    events = []
    for u, count in enumerate(counts):
        items = _pick_items(rng, num_items, count)
        gaps = rng.integers(1, 86_400, size=count)
        start = base_time + int(rng.integers(0, 30 * 86_400))
        times = [start + int(t) for t in np.cumsum(gaps)]
        if u == 0 and count >= 3:
            times[1] = times[2] = times[0]
        stars = [star_values[int(i)] for i in rng.integers(0, len(star_values), count)]
        order = rng.permutation(count)  # real files are not time-sorted per user
        if 0 < burst < count:
            tied = range(count - burst, count)
            for i in tied:
                times[i] = times[count - burst]
            slots = [k for k, i in enumerate(order) if i in tied]
            order[slots] = sorted(tied, key=lambda i: ids[items[i]], reverse=True)
        events.append([(items[i], times[i], stars[i]) for i in order])
    return events


def _interleave(good: list[bytes], bad_lines, encoding: str, first_line: int):
    """Good lines with bad ones spread at fixed positions; returns (lines, bad)."""
    bad = [b if isinstance(b, bytes) else b.encode(encoding) for b in bad_lines]
    positions = [(i + 1) * len(good) // (len(bad) + 1) for i in range(len(bad))]
    out, bad_at, j = [], [], 0
    for g_index, g in enumerate(good + [None]):
        while j < len(bad) and positions[j] == g_index:
            bad_at.append((first_line + len(out), bad[j]))
            out.append(bad[j])
            j += 1
        if g is not None:
            out.append(g)
    return out, bad_at


def _write_lines(path: str, lines: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))


def _genres_for(rng, names, index: int) -> tuple[str, ...]:
    if index % 13 == 1:
        return ()
    k = int(rng.integers(1, 4))
    return tuple(names[int(g)] for g in sorted(rng.choice(len(names), k, replace=False)))


def write_ml1m(
    data_dir,
    *,
    num_users: int = 30,
    num_items: int = 40,
    per_user=12,
    seed: int = 0,
    bad_lines: Sequence[str | bytes] = (),
) -> dict:
    """Writes ratings.dat, movies.dat, users.dat (latin-1, '::') into `data_dir`.

    Args:
      per_user: ratings per user, an int or an inclusive ``(low, high)`` range.
      bad_lines: raw lines (str encoded as latin-1, or bytes) put into
        ratings.dat.

    Returns:
      The summary described in the module docstring. Every movie has at least
      one genre in ML-1M, as in the real file.
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    movie_ids = [str(i) for i in sorted(rng.choice(np.arange(1, 4000), num_items, replace=False))]
    user_ids = [str(i) for i in range(1, num_users + 1)]

    items, movie_lines = [], []
    for i, movie_id in enumerate(movie_ids):
        title = ML_TITLES[i] if i < len(ML_TITLES) else f"Movie {movie_id} ({1950 + i % 50})"
        genres = _genres_for(rng, ML1M_GENRES, i) or ("Drama",)
        items.append((movie_id, genres))
        movie_lines.append(f"{movie_id}::{title}::{'|'.join(genres)}".encode("latin-1"))

    users, user_lines = [], []
    ages = ("1", "18", "25", "35", "45", "50", "56")
    for u, user_id in enumerate(user_ids):
        attrs = {
            "gender": "FM"[int(rng.integers(0, 2))],
            "age": ages[int(rng.integers(0, len(ages)))],
            "occupation": str(int(rng.integers(0, 21))),
        }
        zip_code = f"{int(rng.integers(10000, 99999))}" + ("-1234" if u % 7 == 3 else "")
        users.append((user_id, attrs))
        fields = (user_id, attrs["gender"], attrs["age"], attrs["occupation"], zip_code)
        user_lines.append("::".join(fields).encode("latin-1"))

    counts = _per_user_counts(rng, num_users, per_user)
    events = _user_events(rng, counts, num_items, ML1M_BASE_TIME, (1, 2, 3, 4, 5))
    interactions, rating_lines = [], []
    for user_id, user_events in zip(user_ids, events):
        for item, ts, stars in user_events:
            interactions.append((user_id, movie_ids[item], ts, float(stars)))
            rating_lines.append(f"{user_id}::{movie_ids[item]}::{stars}::{ts}".encode("latin-1"))
    rating_lines, bad_at = _interleave(rating_lines, bad_lines, "latin-1", 1)

    paths = {
        "interactions": os.path.join(data_dir, "ratings.dat"),
        "items": os.path.join(data_dir, "movies.dat"),
        "users": os.path.join(data_dir, "users.dat"),
    }
    _write_lines(paths["interactions"], rating_lines)
    _write_lines(paths["items"], movie_lines)
    _write_lines(paths["users"], user_lines)
    return {
        "data_dir": data_dir,
        "paths": paths,
        "interactions": interactions,
        "items": items,
        "users": users,
        "bad_lines": bad_at,
        "num_lines": {
            "interactions": len(rating_lines),
            "items": len(movie_lines),
            "users": len(user_lines),
        },
    }


# Ages chosen to hit every bucket boundary (ML-1M codes), then random ones.
_ML100K_EDGE_AGES = (7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73)
_ML100K_BUCKETS = ((56, "56"), (50, "50"), (45, "45"), (35, "35"), (25, "25"), (18, "18"))


def _ml100k_age_bucket(years: int) -> str:
    """Written out independently of `pipelines.sources.age_bucket` on purpose."""
    return next((code for low, code in _ML100K_BUCKETS if years >= low), "1")


def write_ml100k(
    data_dir,
    *,
    num_users: int = 30,
    num_items: int = 40,
    per_user=12,
    seed: int = 0,
    bad_lines: Sequence[str | bytes] = (),
    burst: int = 0,
) -> dict:
    """Writes u.data, u.item, u.user, u.genre (GroupLens ml-100k layout) into `data_dir`.

    u.data is tab-separated, the others '|'-separated; u.item is latin-1 with
    an empty video release date, every 4th release date empty, and 19 genre
    flags. Every 13th movie from the second on is flagged only ``unknown``,
    every 17th from the 6th on has no flag at all, and every 11th from the 8th
    on has ``unknown`` and real genres: the expected genres (``items``) drop
    ``unknown``. User records hold the ML-1M age bucket of the written age.
    `bad_lines` go into u.data; `burst`: see the module docstring.
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    movie_ids = [str(i) for i in sorted(rng.choice(np.arange(1, 1683), num_items, replace=False))]
    user_ids = [str(i) for i in range(1, num_users + 1)]

    items, item_lines = [], []
    real_genres = ML100K_GENRES[1:]
    for i, movie_id in enumerate(movie_ids):
        title = ML_TITLES[i] if i < len(ML_TITLES) else f"Movie {movie_id} ({1950 + i % 50})"
        genres = _genres_for(rng, real_genres, i)
        if i % 17 == 5:
            genres, flagged = (), set()
        elif not genres:
            flagged = {"unknown"}
        else:
            flagged = set(genres) | ({"unknown"} if i % 11 == 7 else set())
        items.append((movie_id, genres))
        flags = "|".join("1" if g in flagged else "0" for g in ML100K_GENRES)
        date = "" if i % 4 == 3 else f"01-Jan-{1950 + i % 50}"
        url = f"http://us.imdb.com/M/title-exact?{title.replace(' ', '%20')}"
        item_lines.append(f"{movie_id}|{title}|{date}||{url}|{flags}".encode("latin-1"))

    users, user_lines = [], []
    for u, user_id in enumerate(user_ids):
        years = _ML100K_EDGE_AGES[u] if u < len(_ML100K_EDGE_AGES) else int(rng.integers(7, 74))
        attrs = {
            "gender": "FM"[int(rng.integers(0, 2))],
            "age": _ml100k_age_bucket(years),
            "occupation": ML100K_OCCUPATIONS[int(rng.integers(0, len(ML100K_OCCUPATIONS)))],
        }
        zip_code = "T8H1N" if u % 5 == 2 else f"{int(rng.integers(10000, 99999))}"
        users.append((user_id, attrs))
        fields = (user_id, str(years), attrs["gender"], attrs["occupation"], zip_code)
        user_lines.append("|".join(fields).encode("latin-1"))

    counts = _per_user_counts(rng, num_users, per_user)
    events = _user_events(
        rng, counts, num_items, ML100K_BASE_TIME, (1, 2, 3, 4, 5), burst, movie_ids
    )
    interactions, rating_lines = [], []
    for user_id, user_events in zip(user_ids, events):
        for item, ts, stars in user_events:
            interactions.append((user_id, movie_ids[item], ts, float(stars)))
            rating_lines.append(f"{user_id}\t{movie_ids[item]}\t{stars}\t{ts}".encode())
    rating_lines, bad_at = _interleave(rating_lines, bad_lines, "latin-1", 1)

    paths = {
        "interactions": os.path.join(data_dir, "u.data"),
        "items": os.path.join(data_dir, "u.item"),
        "users": os.path.join(data_dir, "u.user"),
    }
    _write_lines(paths["interactions"], rating_lines)
    _write_lines(paths["items"], item_lines)
    _write_lines(paths["users"], user_lines)
    # u.genre as GroupLens ships it (read by nothing here), with its blank last line.
    _write_lines(
        os.path.join(data_dir, "u.genre"),
        [f"{g}|{k}".encode() for k, g in enumerate(ML100K_GENRES)] + [b""],
    )
    return {
        "data_dir": data_dir,
        "paths": paths,
        "interactions": interactions,
        "items": items,
        "users": users,
        "bad_lines": bad_at,
        "num_lines": {
            "interactions": len(rating_lines),
            "items": len(item_lines),
            "users": len(user_lines),
        },
    }


def _csv_line(fields) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue().encode("utf-8")


def write_ml20m(
    data_dir,
    *,
    num_users: int = 30,
    num_items: int = 40,
    per_user=12,
    seed: int = 0,
    bad_lines: Sequence[str | bytes] = (),
) -> dict:
    """Writes ratings.csv and movies.csv (UTF-8, header) into `data_dir`.

    Ratings are half stars printed like the real file (``"4.5"``, ``"3.0"``);
    titles with commas or quotes are quoted by the csv module; every 13th
    movie from the second on has ``(no genres listed)``. `bad_lines` go into ratings.csv.
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    movie_ids = [
        str(i) for i in sorted(rng.choice(np.arange(1, 131_000), num_items, replace=False))
    ]
    user_ids = [str(i) for i in range(1, num_users + 1)]

    items, movie_lines = [], [b"movieId,title,genres"]
    for i, movie_id in enumerate(movie_ids):
        title = ML_TITLES[i] if i < len(ML_TITLES) else f"Movie {movie_id} ({1950 + i % 50})"
        genres = _genres_for(rng, ML20M_GENRES, i)
        items.append((movie_id, genres))
        movie_lines.append(_csv_line([movie_id, title, "|".join(genres) or "(no genres listed)"]))

    counts = _per_user_counts(rng, num_users, per_user)
    half_stars = tuple(h / 2 for h in range(1, 11))
    events = _user_events(rng, counts, num_items, ML20M_BASE_TIME, half_stars)
    interactions, rating_lines = [], []
    for user_id, user_events in zip(user_ids, events):
        for item, ts, stars in user_events:
            interactions.append((user_id, movie_ids[item], ts, stars))
            rating_lines.append(f"{user_id},{movie_ids[item]},{stars:.1f},{ts}".encode())
    rating_lines, bad_at = _interleave(rating_lines, bad_lines, "utf-8", 2)
    rating_lines.insert(0, b"userId,movieId,rating,timestamp")

    paths = {
        "interactions": os.path.join(data_dir, "ratings.csv"),
        "items": os.path.join(data_dir, "movies.csv"),
    }
    _write_lines(paths["interactions"], rating_lines)
    _write_lines(paths["items"], movie_lines)
    return {
        "data_dir": data_dir,
        "paths": paths,
        "interactions": interactions,
        "items": items,
        "users": [],
        "bad_lines": bad_at,
        "num_lines": {"interactions": len(rating_lines), "items": len(movie_lines)},
    }


def _yelp_id(rng, index: int) -> str:
    """A 22-character id; every third one contains '-' and '_'."""
    chars = [_ID_ALPHABET[int(c)] for c in rng.integers(0, len(_ID_ALPHABET), 22)]
    if index % 3 == 0:
        chars[5], chars[17] = "-", "_"
    return "".join(chars)


def write_yelp(
    data_dir,
    *,
    num_users: int = 30,
    num_items: int = 40,
    per_user=12,
    seed: int = 0,
    bad_lines: Sequence[str | bytes] = (),
) -> dict:
    """Writes yelp_academic_dataset_review.json and ..._business.json (JSON lines).

    Ids are 22-character strings with '-' and '_'; business ``categories`` is a
    ", "-joined string, ``null`` (every 5th) or ``""`` (every 11th); reviews
    carry text with escaped quotes, newlines and non-ASCII letters; attributes
    and hours are nested objects or null. `bad_lines` go into the review file.
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    business_ids = [_yelp_id(rng, i) for i in range(num_items)]
    user_ids = [_yelp_id(rng, i) for i in range(num_users)]

    items, business_lines = [], []
    for i, business_id in enumerate(business_ids):
        if i % 5 == 4:
            categories, raw = (), None
        elif i % 11 == 10:
            categories, raw = (), ""
        else:
            k = int(rng.integers(1, 4))
            picked = rng.choice(len(YELP_CATEGORIES), k, replace=False)
            categories = tuple(YELP_CATEGORIES[int(c)] for c in picked)
            raw = ", ".join(categories)
        items.append((business_id, categories))
        obj = {
            "business_id": business_id,
            "name": f"Corner Café {i}",
            "address": f"{100 + i} Main St",
            "city": "Tucson",
            "state": "AZ",
            "postal_code": "85705",
            "latitude": 32.2 + i / 1000,
            "longitude": -110.9,
            "stars": float(int(rng.integers(2, 11)) / 2),
            "review_count": int(rng.integers(5, 500)),
            "is_open": int(i % 4 != 0),
            "attributes": (
                None
                if i % 6 == 5
                else {
                    "NoiseLevel": "u'average'",
                    "BusinessParking": "{'garage': False, 'street': True}",
                    "Ambience": {"romantic": False, "casual": True},
                }
            ),
            "categories": raw,
            "hours": None if i % 4 == 1 else {"Monday": "7:0-15:0", "Tuesday": "7:0-15:0"},
        }
        business_lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())

    counts = _per_user_counts(rng, num_users, per_user)
    events = _user_events(rng, counts, num_items, YELP_BASE_TIME, (1.0, 2.0, 3.0, 4.0, 5.0))
    interactions, review_lines = [], []
    for user_id, user_events in zip(user_ids, events):
        for n, (item, ts, stars) in enumerate(user_events):
            date = datetime.datetime.fromtimestamp(ts, datetime.UTC)
            obj = {
                "review_id": _yelp_id(rng, n),
                "user_id": user_id,
                "business_id": business_ids[item],
                "stars": stars,
                "useful": int(rng.integers(0, 5)),
                "funny": 0,
                "cool": int(rng.integers(0, 3)),
                "text": f'Great "brunch" #{n}, slow service.\nWould return. Café olé!',
                "date": date.strftime("%Y-%m-%d %H:%M:%S"),
            }
            interactions.append((user_id, business_ids[item], ts, stars))
            review_lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
    review_lines, bad_at = _interleave(review_lines, bad_lines, "utf-8", 1)

    paths = {
        "interactions": os.path.join(data_dir, "yelp_academic_dataset_review.json"),
        "items": os.path.join(data_dir, "yelp_academic_dataset_business.json"),
    }
    _write_lines(paths["interactions"], review_lines)
    _write_lines(paths["items"], business_lines)
    return {
        "data_dir": data_dir,
        "paths": paths,
        "interactions": interactions,
        "items": items,
        "users": [],
        "bad_lines": bad_at,
        "num_lines": {"interactions": len(review_lines), "items": len(business_lines)},
    }


# ---------------------------------------------------------------------------
# Your own data (`--dataset=interactions`): CSV, TSV, JSON lines, Parquet.

OWN_CATEGORIES = ("Books", "Garden", "Kitchen", "Toys", "Music, Film & TV", "Sports")
OWN_BASE_TIME = 1_600_000_000  # 2020-09-13
OWN_TIME_STYLES = ("s", "ms", "iso_z", "iso_naive", "iso_offset", "iso_fraction", "s_float")
_OWN_EXT = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet"}


def own_time(ts: int, style: str) -> str | int | float:
    """Unix seconds `ts` written in `style` (every style reads back as `ts`)."""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    if style == "s":
        return ts
    if style == "ms":
        return ts * 1000 + 999  # sub-second part is floored away
    if style == "s_float":
        return ts + 0.75
    if style == "iso_z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == "iso_naive":
        return moment.strftime("%Y-%m-%d %H:%M:%S")  # naive = UTC
    if style == "iso_offset":
        local = moment.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
        return local.isoformat()  # 2020-09-13T14:26:40+02:00
    if style == "iso_fraction":
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".250+00:00"
    raise ValueError(style)


def _own_user_id(index: int) -> str:
    # Every 7th id holds a comma, a quote and a tab-free space: CSV must quote it.
    return f'user "{index}", ltd' if index % 7 == 3 else f"u{index:03d}"


def write_interactions(
    data_dir,
    *,
    formats: Sequence[str] = ("csv",),
    num_users: int = 30,
    num_items: int = 40,
    per_user=12,
    seed: int = 0,
    ratings: bool = True,
    items_file: str | None = "items.csv",
    users_file: str | None = "users.jsonl",
    bad_lines: Sequence[str | bytes] = (),
    parquet_bad_rows: int = 0,
    row_group_size: int = 64,
    burst: int = 0,
) -> dict:
    """Writes a user's own interaction log split over one file per format.

    Interaction ``k`` (in generation order) goes to file ``k % len(formats)``, so
    one user's interactions span files. Files are ``part-<i>-<format>.<ext>``
    with the columns ``timestamp, note, item_id, user_id[, rating]`` (a
    shuffled order plus an extra ``note`` column, which holds commas and
    quotes); timestamps cycle through `OWN_TIME_STYLES`. The Parquet file
    stores timestamps as strings (styles mixed), in row groups of
    `row_group_size` rows, followed by `parquet_bad_rows` rows with the
    timestamp ``"yesterday"``. `bad_lines` go raw into the first text file.
    `burst`: see the module docstring (a burst spans files).

    `items_file` (CSV: ``item_id,title,categories``, '|'-separated, some
    empty, titles with commas and quotes) and `users_file` (JSON lines:
    ``user_id, gender, age, country``; some values missing or null) are written
    into `data_dir` too (None: not written).

    Returns the usual summary plus ``"files"``: path -> the records of that
    file's good rows in file order, and ``"bad"``: [(file name, line or row
    number, raw)], and ``"attributes"``: {user: {attribute: value}}.
    """
    data_dir = str(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    item_ids = [str(1000 + 7 * i) for i in range(num_items)]
    user_ids = [_own_user_id(i) for i in range(num_users)]
    counts = _per_user_counts(rng, num_users, per_user)
    stars = (1.0, 2.0, 3.0, 4.0, 5.0)
    events = _user_events(rng, counts, num_items, OWN_BASE_TIME, stars, burst, item_ids)
    rows = [
        (user_ids[u], item_ids[item], ts, stars if ratings else 0.0)
        for u, user_events in enumerate(events)
        for item, ts, stars in user_events
    ]
    header = ["timestamp", "note", "item_id", "user_id"] + (["rating"] if ratings else [])
    paths, per_file, bad, text_bad_written = [], {}, [], False
    for f_index, fmt in enumerate(formats):
        path = os.path.join(data_dir, f"part-{f_index}-{fmt}{_OWN_EXT[fmt]}")
        mine = [(k, r) for k, r in enumerate(rows) if k % len(formats) == f_index]
        records = [r for _, r in mine]
        values = []
        for k, (user, item, ts, stars) in mine:
            style = OWN_TIME_STYLES[k % len(OWN_TIME_STYLES)]
            stamp = own_time(ts, style)
            note = f'said "ok", {k}' if k % 5 == 0 else ""
            values.append([stamp, note, item, user] + ([stars] if ratings else []))
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = {name: [v[i] for v in values] for i, name in enumerate(header)}
            columns["timestamp"] = [str(t) for t in columns["timestamp"]]
            for j in range(parquet_bad_rows):
                bad.append((os.path.basename(path), len(values) + j + 1, None))
                for name in header:
                    columns[name].append("yesterday" if name == "timestamp" else columns[name][j])
            table = pa.table(columns)
            pq.write_table(table, path, row_group_size=row_group_size)
        else:
            if fmt == "jsonl":
                lines = [
                    json.dumps(dict(zip(header, v)), ensure_ascii=False).encode() for v in values
                ]
                first = 1
            else:
                sep = "," if fmt == "csv" else "\t"
                lines = [_delimited(v, sep) for v in values]
                first = 2
            if bad_lines and not text_bad_written:
                lines, bad_at = _interleave(lines, bad_lines, "utf-8", first)
                bad += [(os.path.basename(path), n, raw) for n, raw in bad_at]
                text_bad_written = True
            if fmt != "jsonl":
                lines.insert(0, _delimited(header, sep))
            _write_lines(path, lines)
        paths.append(path)
        per_file[path] = records

    items = []
    if items_file:
        lines = [_delimited(["item_id", "title", "categories"], ",")]
        for i, item in enumerate(item_ids):
            k = int(rng.integers(0, 3)) if i % 9 != 4 else 0
            cats = tuple(
                OWN_CATEGORIES[int(c)] for c in rng.choice(len(OWN_CATEGORIES), k, replace=False)
            )
            items.append((item, cats))
            title = f'The "{i}", part {i % 3}' if i % 4 == 0 else f"Thing {i}"
            lines.append(_delimited([item, title, "|".join(cats)], ","))
        _write_lines(os.path.join(data_dir, items_file), lines)

    users, attributes = [], {}
    if users_file:
        lines = []
        for u, user in enumerate(user_ids):
            obj = {"user_id": user, "gender": "FM"[u % 2], "age": 20 + 5 * (u % 4)}
            obj["country"] = None if u % 6 == 5 else ("DE", "FR", "US")[u % 3]
            if u % 10 == 9:
                del obj["gender"]
            attrs = {k: str(v) for k, v in obj.items() if k != "user_id" and v is not None}
            users.append((user, attrs))
            attributes[user] = attrs
            lines.append(json.dumps(obj, ensure_ascii=False).encode())
        _write_lines(os.path.join(data_dir, users_file), lines)

    return {
        "data_dir": data_dir,
        "paths": paths,
        "items_path": os.path.join(data_dir, items_file) if items_file else "",
        "users_path": os.path.join(data_dir, users_file) if users_file else "",
        "interactions": rows,
        "items": items,
        "users": users,
        "attributes": attributes,
        "files": per_file,
        "bad": bad,
    }


def _delimited(fields, sep: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=sep, lineterminator="").writerow(fields)
    return buf.getvalue().encode("utf-8")


def time_order(rows) -> dict[str, list[tuple]]:
    """User -> its (timestamp, item, rating) in time order, ties in the order of `rows`.

    `rows` are (user, item, timestamp, rating) in input order (a fixture's
    ``"interactions"``, or its files' records one file after the other in
    sorted name order): a stable sort by (user, timestamp), the order SASRec
    and RecBole read a log in, and the order the pipeline must write.
    """
    out: dict[str, list[tuple]] = {}
    for user, item, ts, rating in rows:
        out.setdefault(user, []).append((ts, item, rating))
    return {user: sorted(seq, key=lambda e: e[0]) for user, seq in out.items()}
