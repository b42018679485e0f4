"""Raw dataset readers: one line in, one record out.

Each source (MovieLens-100K, MovieLens-1M, MovieLens-20M, Yelp Open Dataset) is described by a
`RawSource`: which files hold its interactions, items and users, and a
module-level parse function per file. The Beam pipeline (`pipelines.preprocess`)
reads the files in chunks, numbers the lines and calls `Table.parse` on every
raw line; a line that cannot be parsed raises `BadRecord`, whose message is the
reason written next to the line in `bad_records/`.

Record shapes are plain tuples (fast to build, cheap to pickle between Beam
stages):

* Interaction = ``(user_id: str, item_id: str, timestamp: int, rating: float)``
  with the timestamp in Unix seconds UTC.
* ItemRecord = ``(item_id: str, genres: tuple[str, ...])``, ``()`` when none.
* UserRecord = ``(user_id: str, attributes: dict[str, str])`` with the raw
  class values, e.g. ``{"gender": "F", "age": "25", "occupation": "7"}``
  (ML-1M) or ``{"gender": "F", "age": "25", "occupation": "writer"}`` (ML-100K).

Ids are kept as the strings in the file (``"1097"``), never re-numbered. The
parsers are written for tens of millions of lines: plain `split`, `int`,
`float`, set look-ups, and `json.loads` for Yelp.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType

__all__ = [
    "ML100K_ATTRIBUTES",
    "ML100K_GENRES",
    "ML1M_ATTRIBUTES",
    "SOURCE_NAMES",
    "YELP_HOMEPAGE",
    "BadRecord",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
    "check_length",
    "RawSource",
    "Table",
    "age_bucket",
    "get_source",
    "parse_ml100k_item",
    "parse_ml100k_rating",
    "parse_ml100k_user",
    "parse_ml1m_movie",
    "parse_ml1m_rating",
    "parse_ml1m_user",
    "parse_ml20m_movie",
    "parse_ml20m_rating",
    "parse_yelp_business",
    "parse_yelp_review",
    "resolve_files",
]


class BadRecord(ValueError):
    """A raw line that cannot be parsed; ``str(err)`` is the reason.

    Example reason: ``"expected 4 '::'-separated fields, got 3"``.
    """


# The longest id (user, item, business) or category a record may have, in characters;
# a longer one makes the record bad. Ids travel between the Beam steps as fixed-width
# numpy byte strings (`pipelines.columnar`): one id of 200 MB in a batch of 100,000
# rows would ask numpy for 20 TB.
MAX_ID_CHARS = 1024
# The longest line a line parser is given, in bytes (a Yelp review line is a few KiB).
MAX_LINE_BYTES = 1 << 20


def check_length(value: str, what: str) -> str:
    """`value`, or `BadRecord` when it is longer than `MAX_ID_CHARS` characters."""
    if len(value) > MAX_ID_CHARS:
        raise BadRecord(
            f"{what} is {len(value):,} characters long (at most {MAX_ID_CHARS:,}): {_short(value)}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class Table:
    """One raw file of a source and how to parse its lines.

    Attributes:
      filename: base name inside the data directory, e.g. ``"ratings.dat"``.
      parse: module-level (picklable) function taking ONE raw line as bytes,
        line terminator (``\\n`` or ``\\r\\n``) already stripped. Returns a
        record tuple, ``None`` for a blank line, or raises `BadRecord`.
      header: True if the first line of the file is a header the caller skips.
      encoding: the file's text encoding (informative; parse decodes itself).
    """

    filename: str
    parse: Callable[[bytes], tuple | None]
    header: bool = False
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class RawSource:
    """A raw dataset: its tables, user attributes and where to get it.

    Attributes:
      name: ``"ml-100k"``, ``"ml-1m"``, ``"ml-20m"`` or ``"yelp"``.
      interactions: table of Interaction records.
      items: table of ItemRecord records.
      users: table of UserRecord records (ML-100K, ML-1M), else None.
      attributes: attribute name -> ordered raw class values; ``{}`` when the
        source has no user attributes.
      item_feature: what the item's tags are: ``"genre"`` or ``"category"``.
      homepage: where users get the data.
    """

    name: str
    interactions: Table
    items: Table
    users: Table | None
    attributes: Mapping[str, tuple[str, ...]]
    item_feature: str
    homepage: str


# ---------------------------------------------------------------------------
# Shared helpers.

_ML1M_GENDERS = ("F", "M")
_ML1M_AGES = ("1", "18", "25", "35", "45", "50", "56")
_ML1M_OCCUPATIONS = tuple(str(i) for i in range(21))
ML1M_ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"gender": _ML1M_GENDERS, "age": _ML1M_AGES, "occupation": _ML1M_OCCUPATIONS}
)
_GENDER_SET = frozenset(_ML1M_GENDERS)
_AGE_SET = frozenset(_ML1M_AGES)
_OCCUPATION_SET = frozenset(_ML1M_OCCUPATIONS)
_ML1M_RATINGS = {str(r): float(r) for r in range(1, 6)}
_NO_GENRES = "(no genres listed)"

YELP_HOMEPAGE = "https://www.yelp.com/dataset"
_MOVIELENS_HOMEPAGE = "https://grouplens.org/datasets/movielens/"


def _is_uint(text: str) -> bool:
    """True for a non-empty string of ASCII digits (rejects '²', '-1', ' 1')."""
    return text.isascii() and text.isdigit()


def _short(text, limit: int = 40) -> str:
    """repr() of a field, cut to `limit` characters for error messages."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _decode_utf8(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = line[err.start : err.end]
        raise BadRecord(
            f"undecodable bytes at byte {err.start}: {bad!r} is not valid UTF-8"
        ) from None


def _check_id(value: str, what: str) -> str:
    if not _is_uint(value):
        raise BadRecord(f"non-numeric {what} {_short(value)}")
    return check_length(value, what)


def _check_timestamp(value: str) -> int:
    if not _is_uint(value):
        raise BadRecord(
            f"timestamp must be a non-negative integer (Unix seconds), got {_short(value)}"
        )
    return int(value)


def _split_genres(field: str) -> tuple[str, ...]:
    if not field or field == _NO_GENRES:
        return ()
    return tuple(g for g in field.split("|") if g)


# ---------------------------------------------------------------------------
# MovieLens-1M: ISO-8859-1, '::' separated, no header.


def parse_ml1m_rating(line: bytes):
    """``UserID::MovieID::Rating::Timestamp`` -> Interaction (integer stars 1-5)."""
    return _integer_rating_line(line, "::", "'::'-separated", ("UserID", "MovieID"))


def _exact_fields(line: bytes, sep: str, count: int, described: str) -> list[str] | None:
    """A latin-1 line split on `sep` into exactly `count` fields; None for a blank line."""
    text = line.decode("latin-1").rstrip("\r")
    if not text.strip():
        return None
    fields = text.split(sep)
    if len(fields) != count:
        raise BadRecord(f"expected {count} {described} fields, got {len(fields)}")
    return fields


def _integer_rating_line(line: bytes, sep: str, described: str, id_names: tuple[str, str]):
    """A latin-1 ``user SEP item SEP stars SEP timestamp`` line (stars 1-5) -> Interaction."""
    fields = _exact_fields(line, sep, 4, described)
    if fields is None:
        return None
    user_id, item_id, rating, timestamp = fields
    _check_id(user_id, id_names[0])
    _check_id(item_id, id_names[1])
    stars = _ML1M_RATINGS.get(rating)
    if stars is None:
        raise BadRecord(f"rating must be an integer 1-5, got {_short(rating)}")
    return (user_id, item_id, _check_timestamp(timestamp), stars)


def parse_ml1m_movie(line: bytes):
    """``MovieID::Title (Year)::Genre|Genre`` -> ItemRecord.

    The title is everything between the first and the last ``::`` (it may hold
    commas, quotes, parentheses, colons and latin-1 letters) and is not kept.
    """
    text = line.decode("latin-1").rstrip("\r")
    if not text.strip():
        return None
    fields = text.split("::")
    if len(fields) < 3:
        raise BadRecord(
            f"expected 3 '::'-separated fields (MovieID::Title::Genres), got {len(fields)}"
        )
    return (_check_id(fields[0], "MovieID"), _split_genres(fields[-1]))


def parse_ml1m_user(line: bytes):
    """``UserID::Gender::Age::Occupation::Zip-code`` -> UserRecord (zip dropped)."""
    fields = _exact_fields(line, "::", 5, "'::'-separated")
    if fields is None:
        return None
    user_id, gender, age, occupation, _zip = fields
    _check_id(user_id, "UserID")
    if gender not in _GENDER_SET:
        raise BadRecord(f"gender must be 'F' or 'M', got {_short(gender)}")
    if age not in _AGE_SET:
        raise BadRecord(
            f"age must be one of the bucket codes {', '.join(_ML1M_AGES)}, got {_short(age)}"
        )
    if occupation not in _OCCUPATION_SET:
        raise BadRecord(f"occupation must be an integer 0-20, got {_short(occupation)}")
    return (user_id, {"gender": gender, "age": age, "occupation": occupation})


# ---------------------------------------------------------------------------
# MovieLens-100K: GroupLens's `ml-100k/` layout, no header. u.data is
# tab-separated, u.item and u.user '|'-separated, u.item ISO-8859-1.

# u.genre, in the order of u.item's 19 flags.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ML100K_NUM_GENRES = len(ML100K_GENRES)
# The 21 occupation words of ml-100k's u.occupation (alphabetical, as there).
_ML100K_OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment",
    "executive", "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none",
    "other", "programmer", "retired", "salesman", "scientist", "student", "technician",
    "writer",
)  # fmt: skip
ML100K_ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"gender": _ML1M_GENDERS, "age": _ML1M_AGES, "occupation": _ML100K_OCCUPATIONS}
)
_ML100K_OCCUPATION_SET = frozenset(_ML100K_OCCUPATIONS)
_AGE_BUCKETS = tuple(int(a) for a in _ML1M_AGES)


def age_bucket(years: float) -> str:
    """Age in years -> the ML-1M bucket code: the largest code <= years, else ``"1"``.

    ``17 -> "1"``, ``18 -> "18"``, ``24 -> "18"``, ``49 -> "45"``, ``73 -> "56"``:
    ML-1M's buckets (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), computed
    the way TFDS bucketizes ``movielens/100k-ratings``, so ML-100K and ML-1M share
    the age classes.
    """
    code = _AGE_BUCKETS[0]
    for bucket in _AGE_BUCKETS:
        if years >= bucket:
            code = bucket
    return str(code)


def parse_ml100k_rating(line: bytes):
    """u.data ``user id<TAB>item id<TAB>rating<TAB>timestamp`` -> Interaction (stars 1-5)."""
    return _integer_rating_line(line, "\t", "tab-separated", ("user id", "item id"))


def parse_ml100k_item(line: bytes):
    """u.item ``id|title|release date|video release date|URL|`` + 19 flags -> ItemRecord.

    Only the id (first field) and the 19 genre flags (LAST 19 fields, in
    `ML100K_GENRES` order) are read: titles, dates and URLs are not kept and
    may be anything, including empty (a title holding ``|`` still parses).

    The ``unknown`` flag is GroupLens's "no genre information", not a genre: it
    is dropped, so a movie flagged only ``unknown`` (or with no flag at all)
    gets ``()``, like ML-20M's ``(no genres listed)``; a movie flagged
    ``unknown`` and real genres keeps the real ones. So "unknown" never becomes
    a genre token or a favorite-genre class.
    """
    text = line.decode("latin-1").rstrip("\r")
    if not text.strip():
        return None
    fields = text.split("|")
    if len(fields) < 5 + _ML100K_NUM_GENRES:
        raise BadRecord(
            f"expected 24 '|'-separated fields (id|title|release date|video release date|"
            f"URL|19 genre flags), got {len(fields)}"
        )
    item_id = _check_id(fields[0], "movie id")
    flags = fields[-_ML100K_NUM_GENRES:]
    genres = []
    for name, flag in zip(ML100K_GENRES, flags):
        if flag == "1":
            genres.append(name)
        elif flag != "0":
            raise BadRecord(f"genre flag {name!r} must be 0 or 1, got {_short(flag)}")
    return (item_id, tuple(g for g in genres if g != "unknown"))


def parse_ml100k_user(line: bytes):
    """u.user ``user id|age|gender|occupation|zip code`` -> UserRecord (zip dropped).

    Age (whole years) becomes its ML-1M bucket code (`age_bucket`); the
    occupation stays the ml-100k word (``"technician"``, ``"none"``, ...).
    """
    fields = _exact_fields(line, "|", 5, "'|'-separated")
    if fields is None:
        return None
    user_id, age, gender, occupation, _zip = fields
    _check_id(user_id, "user id")
    if not _is_uint(age):
        raise BadRecord(f"age must be a whole number of years, got {_short(age)}")
    if gender not in _GENDER_SET:
        raise BadRecord(f"gender must be 'F' or 'M', got {_short(gender)}")
    if occupation not in _ML100K_OCCUPATION_SET:
        raise BadRecord(
            f"occupation must be one of the 21 ml-100k occupations "
            f"({', '.join(_ML100K_OCCUPATIONS)}), got {_short(occupation)}"
        )
    return (user_id, {"gender": gender, "age": age_bucket(int(age)), "occupation": occupation})


# ---------------------------------------------------------------------------
# MovieLens-20M: UTF-8 CSV with a header line.


def parse_ml20m_rating(line: bytes):
    """``userId,movieId,rating,timestamp`` -> Interaction (half stars 0.5-5.0)."""
    text = _decode_utf8(line).rstrip("\r")
    if not text.strip():
        return None
    fields = text.split(",")
    if len(fields) != 4:
        raise BadRecord(f"expected 4 ','-separated fields, got {len(fields)}")
    user_id, item_id, rating, timestamp = fields
    _check_id(user_id, "userId")
    _check_id(item_id, "movieId")
    try:
        stars = float(rating)
    except ValueError:
        raise BadRecord(f"non-numeric rating {_short(rating)}") from None
    # `not (a <= x <= b)` is also True for NaN.
    if not (0.5 <= stars <= 5.0) or stars * 2 != int(stars * 2):
        raise BadRecord(f"rating must be a half star in 0.5-5.0, got {_short(rating)}")
    return (user_id, item_id, _check_timestamp(timestamp), stars)


def parse_ml20m_movie(line: bytes):
    """``movieId,title,genres`` (title quoted when it holds commas) -> ItemRecord.

    ``(no genres listed)`` gives ``()``.
    """
    text = _decode_utf8(line).rstrip("\r")
    if not text.strip():
        return None
    try:
        fields = next(csv.reader((text,), strict=True))
    except csv.Error as err:
        raise BadRecord(f"malformed CSV: {err}") from None
    if len(fields) != 3:
        raise BadRecord(f"expected 3 CSV fields (movieId,title,genres), got {len(fields)}")
    return (_check_id(fields[0], "movieId"), _split_genres(fields[2]))


# ---------------------------------------------------------------------------
# Yelp Open Dataset: JSON lines, UTF-8.

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _yelp_date_to_unix(value) -> int:
    """``"YYYY-MM-DD HH:MM:SS"`` read as UTC -> Unix seconds."""
    if (
        not isinstance(value, str)
        or len(value) != 19
        or value[4] != "-"
        or value[7] != "-"
        or value[10] != " "
        or value[13] != ":"
        or value[16] != ":"
    ):
        raise BadRecord(f"date must look like 'YYYY-MM-DD HH:MM:SS', got {_short(value)}")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as err:
        raise BadRecord(f"invalid date {_short(value)}: {err}") from None
    return int((moment.replace(tzinfo=datetime.UTC) - _EPOCH).total_seconds())


def _load_json_object(line: bytes):
    text = _decode_utf8(line)
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRecord(f"broken JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _string_field(obj: dict, key: str) -> str:
    try:
        value = obj[key]
    except KeyError:
        raise BadRecord(f"missing key {key!r}") from None
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} must be a non-empty string, got {_short(value)}")
    return check_length(value, key)


def parse_yelp_review(line: bytes):
    """A review JSON object -> Interaction ``(user_id, business_id, date, stars)``."""
    obj = _load_json_object(line)
    if obj is None:
        return None
    user_id = _string_field(obj, "user_id")
    business_id = _string_field(obj, "business_id")
    if "stars" not in obj:
        raise BadRecord("missing key 'stars'")
    stars = obj["stars"]
    if isinstance(stars, bool) or not isinstance(stars, (int, float)):
        raise BadRecord(f"stars must be a number, got {_short(stars)}")
    if not (1.0 <= stars <= 5.0):
        raise BadRecord(f"stars must be in 1-5, got {stars!r}")
    if "date" not in obj:
        raise BadRecord("missing key 'date'")
    return (user_id, business_id, _yelp_date_to_unix(obj["date"]), float(stars))


def parse_yelp_business(line: bytes):
    """A business JSON object -> ItemRecord ``(business_id, categories)``.

    ``categories`` is a ``", "``-separated string; null or ``""`` gives ``()``.
    """
    obj = _load_json_object(line)
    if obj is None:
        return None
    business_id = _string_field(obj, "business_id")
    categories = obj.get("categories")
    if categories is None:
        return (business_id, ())
    if not isinstance(categories, str):
        raise BadRecord(f"categories must be a string or null, got {type(categories).__name__}")
    return (
        business_id,
        tuple(c for c in (p.strip() for p in categories.split(", ")) if c),
    )


# ---------------------------------------------------------------------------
# The sources.

_SOURCES = {
    "ml-100k": RawSource(
        name="ml-100k",
        interactions=Table("u.data", parse_ml100k_rating),
        items=Table("u.item", parse_ml100k_item, encoding="iso-8859-1"),
        users=Table("u.user", parse_ml100k_user),
        attributes=ML100K_ATTRIBUTES,
        item_feature="genre",
        homepage=_MOVIELENS_HOMEPAGE,
    ),
    "ml-1m": RawSource(
        name="ml-1m",
        interactions=Table("ratings.dat", parse_ml1m_rating, encoding="iso-8859-1"),
        items=Table("movies.dat", parse_ml1m_movie, encoding="iso-8859-1"),
        users=Table("users.dat", parse_ml1m_user, encoding="iso-8859-1"),
        attributes=ML1M_ATTRIBUTES,
        item_feature="genre",
        homepage=_MOVIELENS_HOMEPAGE,
    ),
    "ml-20m": RawSource(
        name="ml-20m",
        interactions=Table("ratings.csv", parse_ml20m_rating, header=True),
        items=Table("movies.csv", parse_ml20m_movie, header=True),
        users=None,
        attributes=MappingProxyType({}),
        item_feature="genre",
        homepage=_MOVIELENS_HOMEPAGE,
    ),
    "yelp": RawSource(
        name="yelp",
        interactions=Table("yelp_academic_dataset_review.json", parse_yelp_review),
        items=Table("yelp_academic_dataset_business.json", parse_yelp_business),
        users=None,
        attributes=MappingProxyType({}),
        item_feature="category",
        homepage=YELP_HOMEPAGE,
    ),
}
SOURCE_NAMES = tuple(_SOURCES)


def get_source(name: str) -> RawSource:
    """Returns the `RawSource` called `name`: one of `SOURCE_NAMES`."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown raw source {name!r}; valid names: {', '.join(SOURCE_NAMES)}"
        ) from None


def _tables(source: RawSource) -> dict[str, Table]:
    tables = {"interactions": source.interactions, "items": source.items}
    if source.users is not None:
        tables["users"] = source.users
    return tables


def resolve_files(source: RawSource, data_dir: str) -> dict[str, str]:
    """Paths of the source's files in `data_dir`.

    Returns:
      ``{"interactions": path, "items": path}`` plus ``"users"`` for ML-100K and ML-1M.

    Raises:
      FileNotFoundError: naming every missing or empty (0-byte) file, listing
        the files expected in `data_dir` and where to get them.
    """
    data_dir = os.path.expanduser(data_dir)
    paths = {role: os.path.join(data_dir, t.filename) for role, t in _tables(source).items()}
    problems = []
    for path in paths.values():
        if not os.path.isfile(path):
            problems.append(f"missing: {path}")
        elif os.path.getsize(path) == 0:
            problems.append(f"empty (0 bytes): {path}")
    if not problems:
        return paths
    expected = ", ".join(t.filename for t in _tables(source).values())
    if source.name == "yelp":
        how = (
            f"Yelp needs a manual download: get the Yelp Open Dataset (JSON "
            f"version) from {YELP_HOMEPAGE}, extract it, and put "
            f"{source.interactions.filename} and {source.items.filename} in "
            f"{data_dir}."
        )
    else:
        how = (
            f"Download {source.name}.zip from {source.homepage} (or use "
            f"pipelines.download.fetch_movielens({source.name!r})) and pass the "
            f"directory that holds {source.interactions.filename} as data_dir."
        )
    raise FileNotFoundError(
        f"{source.name} raw files not usable in {data_dir}:\n  "
        + "\n  ".join(problems)
        + f"\nExpected in {data_dir}: {expected}.\n{how}"
    )
