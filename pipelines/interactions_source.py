"""Bring your own data: `--dataset=interactions` reads a user's own interaction log.

    python -m pipelines.preprocess --dataset=interactions --data_dir=DIR \\
        --user_col=user_id --item_col=item_id --time_col=timestamp [--rating_col=rating] \\
        [--items_file=items.csv --category_col=categories --category_sep='|'] \\
        [--users_file=users.csv]

Which files. ``--data_dir`` is a directory or one file. In a directory, every
file whose name ends in ``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``/``.json``
or ``.parquet``/``.pq`` (case-insensitive) is an interaction file, read in
sorted name order; names starting with ``.`` or ``_`` (``_SUCCESS``, ``.crc``)
and subdirectories are skipped, and so are the ``--items_file`` and
``--users_file`` if they lie there. Compressed files (``.gz``) are not read.

Formats, by file name:

* CSV (``,``) and TSV (tab): UTF-8 (a leading BOM is ignored), the first line a
  header that names the columns, any column order, extra columns ignored.
  Fields may be quoted (``"Smith, J."``, ``""`` for a quote) but may not
  contain line breaks: files are read in parallel byte ranges, one line per
  record.
* JSON lines: one object per line; the columns are its keys. A ``.json`` file
  holding one big JSON array is refused (convert it: ``jq -c '.[]'``).
* Parquet (pyarrow): read one row group at a time; ids may be strings or
  integers, timestamps integers, strings or Arrow ``timestamp``/``date``.

Columns. ``--user_col``, ``--item_col`` and ``--time_col`` must exist in
every interaction file (else an error names the file and the column and lists
the columns found); ``--rating_col`` is optional: empty means the data has no
ratings, every rating is written as 0 and ``metadata.json`` says
``"has_ratings": false`` (the liked-item task is then unavailable).

Timestamps (`parse_time`), per value, so styles may be mixed in one file:

* a number (or a string of one) is Unix time whose unit is told by its
  magnitude: ``|t| < 1e11`` seconds, ``< 1e14`` milliseconds, ``< 1e17``
  microseconds, else nanoseconds (1e11 s is the year 5138; 1e11 ms is
  1973-03-03, so millisecond stamps before March 1973 would be read as
  seconds); fractions are floored to whole seconds; a string of digits is
  always Unix time (the ISO basic date ``20190314`` is not read as a date);
* anything else must be ISO 8601 as Python's ``datetime.fromisoformat``
  reads it: ``2019-03-14``, ``2019-03-14 18:05:42``, ``2019-03-14T18:05:42.5Z``,
  ``...+02:00``; without a time zone it is UTC.

Items (``--items_file``, optional): a file of any of the formats above with
the ``--item_col`` column and the ``--category_col`` column, whose value is
split on ``--category_sep`` (``|``; empty = one category per value; a JSON
or Parquet list is taken as is). Categories play the role of genres; without
an items file there are none (the favorite-genre task is then unavailable).

Users (``--users_file``, optional): a file with the ``--user_col`` column;
every other column (for JSON lines: every other key of the first object)
becomes a categorical attribute ``attr_<name>`` (the name with characters
other than letters, digits and ``_`` replaced by ``_``). Its classes are the
values ordered by descending number of users, ties by value, capped at
``--max_attribute_classes`` (50): rarer values, empty and missing ones are
unknown (``-1``). Without a users file there are no attributes.

A record that cannot be read (too few fields, an empty id, an unreadable
timestamp or rating) raises `BadRecord`; the pipeline routes it to
``bad_records/`` with its file and line (Parquet: 1-based row) number.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator, Sequence

import tensorflow as tf

from bt_tf.errors import UserError
from pipelines import textio
from pipelines.config import InteractionsConfig
from pipelines.sources import (
    BadRecord,
    Table,
    _decode_utf8,
    _load_json_object,
    _short,
    check_length,
)

__all__ = [
    "FORMATS",
    "InputFile",
    "InteractionsConfig",
    "ParquetPart",
    "RowParser",
    "attribute_classes",
    "attribute_name",
    "attribute_names",
    "describe",
    "find_interaction_files",
    "parquet_parts",
    "parse_time",
    "read_parquet_part",
    "resolve_files",
    "row_parser",
    "text_table",
]

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SEPARATORS = {"csv": ",", "tsv": "\t"}
_PARQUET_BATCH = 8192  # rows per Arrow batch inside a row group
_JSON_PROBE_LINES = 100  # lines searched for the first JSON object (its keys = columns)


# ---------------------------------------------------------------------------
# Values -> record fields


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_SECOND = datetime.timedelta(seconds=1)
# (magnitude below which, divisor to seconds): seconds, ms, us, then ns.
_UNITS = ((1e11, 1), (1e14, 1_000), (1e17, 1_000_000))
_NANOS = 1_000_000_000


def _epoch_seconds(number: int | float) -> int:
    """Unix time in s/ms/us/ns (told by magnitude) -> whole seconds (floored)."""
    divisor = _NANOS
    for limit, unit in _UNITS:
        if abs(number) < limit:
            divisor = unit
            break
    if isinstance(number, int):
        return number // divisor
    return math.floor(number / divisor)


def _datetime_seconds(moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH) // _SECOND


def parse_time(value) -> int:
    """A timestamp value -> Unix seconds UTC (see the module docstring for the rules).

    ``881250949 -> 881250949``, ``"881250949000" -> 881250949``,
    ``"1997-12-04T15:55:49Z" -> 881250949``, ``"1997-12-04 15:55:49" -> 881250949``
    (naive = UTC), ``"1997-12-04T16:55:49+01:00" -> 881250949``.

    Raises:
      BadRecord: empty, not a number and not ISO 8601, or not finite.
    """
    if value is None:
        raise BadRecord("missing timestamp")
    if isinstance(value, bool):
        raise BadRecord(f"timestamp must be a number or an ISO 8601 string, got {value!r}")
    if isinstance(value, int):
        return _epoch_seconds(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord(f"timestamp must be finite, got {value!r}")
        return _epoch_seconds(value)
    if isinstance(value, datetime.datetime):
        return _datetime_seconds(value)
    if not isinstance(value, str):
        raise BadRecord(
            f"timestamp must be a number or an ISO 8601 string, got {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        raise BadRecord("empty timestamp")
    if _NUMBER.fullmatch(text):
        integral = text.lstrip("+-").isdigit()
        return _epoch_seconds(int(text) if integral else float(text))
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadRecord(
            f"timestamp {_short(text)} is neither Unix time (s/ms) nor ISO 8601"
        ) from None
    return _datetime_seconds(moment)


def _id(value, column: str) -> str:
    """An id value -> its string: strings stripped, integral numbers without ``.0``."""
    if value is None:
        raise BadRecord(f"missing {column}")
    if isinstance(value, bool):
        raise BadRecord(f"{column} must be a string or a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord(f"{column} must be finite, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise BadRecord(f"{column} must be a string or a number, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadRecord(f"empty {column}")
    return check_length(text, column)


def _rating(value, column: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRecord(f"missing {column}")
    if isinstance(value, bool):
        raise BadRecord(f"{column} must be a number, got {value!r}")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"non-numeric {column} {_short(value)}") from None
    if not math.isfinite(rating):
        raise BadRecord(f"{column} must be finite, got {_short(value)}")
    return rating


def _label(value) -> str | None:
    """A category or attribute value -> its class string; None when empty/missing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return check_length(value.strip(), "a category or attribute value") or None
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return check_length(text, "a category or attribute value")


def _categories(value, sep: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        parts = [_label(v) for v in value]
    elif isinstance(value, str):
        parts = [
            check_length(p.strip(), "a category") for p in (value.split(sep) if sep else [value])
        ]
    else:
        parts = [_label(value)]
    return tuple(dict.fromkeys(p for p in parts if p))  # dedupe, keep order


def attribute_name(column: str) -> str:
    """Column name -> attribute name: runs of characters other than [A-Za-z0-9_] -> ``_``."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", column).strip("_") or "column"


@dataclasses.dataclass(frozen=True)
class RowParser:
    """Values of `columns` (in that order) -> one record of `table`.

    ``interactions``: columns (user, item, time[, rating]) ->
    ``(user_id, item_id, unix_seconds, rating)`` (rating 0.0 when there is no
    rating column). ``items``: (item, categories) -> ``(item_id, categories)``.
    ``users``: (user, *attribute columns) -> ``(user_id, {attribute: value})``,
    empty values left out. Picklable; raises `BadRecord`.
    """

    table: str
    columns: tuple[str, ...]
    category_sep: str = "|"
    attributes: tuple[str, ...] = ()  # users: attribute name per attribute column

    def __call__(self, values: Sequence) -> tuple:
        cols = self.columns
        if self.table == "interactions":
            user, item, ts = _id(values[0], cols[0]), _id(values[1], cols[1]), parse_time(values[2])
            return (user, item, ts, _rating(values[3], cols[3]) if len(cols) > 3 else 0.0)
        if self.table == "items":
            return (_id(values[0], cols[0]), _categories(values[1], self.category_sep))
        attrs = {}
        for name, value in zip(self.attributes, values[1:]):
            label = _label(value)
            if label is not None:
                attrs[name] = label
        return (_id(values[0], cols[0]), attrs)


# ---------------------------------------------------------------------------
# Files


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: its table, format and the columns it has (in file order)."""

    table: str  # "interactions", "items" or "users"
    path: str
    format: str  # "csv", "tsv", "jsonl" or "parquet"
    columns: tuple[str, ...]


def _format_of(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def _first_line(path: str) -> bytes:
    with textio.open_binary(path) as f:
        line = f.readline()
    return line.rstrip(b"\n").rstrip(b"\r")


def _header(path: str, sep: str) -> tuple[str, ...]:
    line = _first_line(path)
    try:
        text = line.decode("utf-8").lstrip("\ufeff")
        fields = next(csv.reader((text,), delimiter=sep, strict=True))
    except (UnicodeDecodeError, csv.Error, StopIteration) as err:
        raise UserError(f"{path}: cannot read the header line (column names): {err}") from None
    return tuple(f.strip() for f in fields)


def _json_keys(path: str) -> tuple[str, ...]:
    """Keys of the first JSON object among the first lines (the file's columns)."""
    with textio.open_binary(path) as f:
        for number in range(1, _JSON_PROBE_LINES + 1):
            line = f.readline()
            if not line:
                break
            text = line.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
            if not text:
                continue
            if number == 1 and text.startswith("["):
                raise UserError(
                    f"{path} holds a JSON array; write JSON lines instead, one object per "
                    "line (e.g. jq -c '.[]' FILE > FILE.jsonl)"
                )
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return tuple(obj)
    raise UserError(f"{path}: no JSON object in its first {_JSON_PROBE_LINES} lines")


def describe(table: str, path: str) -> InputFile:
    """Reads the column names of `path` (header, first JSON object or Parquet schema)."""
    fmt = _format_of(path)
    if fmt is None:
        raise UserError(
            f"{path}: unknown format; the name must end in one of {', '.join(sorted(FORMATS))}"
        )
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{table} file not found: {path}")
    if tf.io.gfile.stat(path).length == 0:
        raise UserError(f"{table} file is empty (0 bytes): {path}")
    if fmt == "parquet":
        columns = tuple(_parquet_file(path).schema_arrow.names)
    elif fmt == "jsonl":
        columns = _json_keys(path)
    else:
        columns = _header(path, _SEPARATORS[fmt])
    return InputFile(table, path, fmt, columns)


def _required(table: str, config: InteractionsConfig) -> list[tuple[str, str]]:
    """(flag, column) pairs the file of `table` must have, in record order."""
    if table == "interactions":
        out = [("user_col", config.user_col), ("item_col", config.item_col)]
        out.append(("time_col", config.time_col))
        if config.rating_col:
            out.append(("rating_col", config.rating_col))
        return out
    if table == "items":
        return [("item_col", config.item_col), ("category_col", config.category_col)]
    return [("user_col", config.user_col)]


def _check_columns(f: InputFile, config: InteractionsConfig) -> None:
    for flag, column in _required(f.table, config):
        if column not in f.columns:
            raise UserError(
                f"{f.path}: no column {column!r} (--{flag}) in this {f.table} file; "
                f"columns found: {', '.join(map(repr, f.columns)) or 'none'}"
            )
        if f.columns.count(column) > 1:
            raise UserError(f"{f.path}: column {column!r} (--{flag}) appears twice")


def attribute_names(f: InputFile, config: InteractionsConfig) -> tuple[tuple[str, str], ...]:
    """((column, attribute name), ...) of a users file: every non-user column."""
    pairs = tuple((c, attribute_name(c)) for c in f.columns if c != config.user_col)
    seen: dict[str, str] = {}
    for column, name in pairs:
        if name in seen:
            raise UserError(
                f"{f.path}: columns {seen[name]!r} and {column!r} both give attribute {name!r}"
            )
        seen[name] = column
    return pairs


def row_parser(f: InputFile, config: InteractionsConfig) -> tuple[tuple[str, ...], RowParser]:
    """(columns to read, in order; the parser of their values) for one input file."""
    columns = tuple(c for _, c in _required(f.table, config))
    attributes: tuple[str, ...] = ()
    if f.table == "users":
        pairs = attribute_names(f, config)
        columns += tuple(c for c, _ in pairs)
        attributes = tuple(n for _, n in pairs)
    return columns, RowParser(f.table, columns, config.category_sep, attributes)


def _is_data_file(name: str) -> bool:
    return not name.startswith((".", "_")) and _format_of(name) is not None


def _same_file(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def find_interaction_files(data_dir: str, exclude: Sequence[str] = ()) -> list[str]:
    """Interaction files of `data_dir` (a directory or one file), in sorted name order.

    Raises:
      FileNotFoundError: `data_dir` missing, or no supported file in it.
    """
    data_dir = os.path.expanduser(data_dir)
    if not tf.io.gfile.exists(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir} does not exist")
    if not tf.io.gfile.isdir(data_dir):
        return [data_dir]
    names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(data_dir))
    paths = [
        posixpath.join(data_dir, n) if "://" in data_dir else os.path.join(data_dir, n)
        for n in names
        if _is_data_file(n)
    ]
    paths = [
        p for p in paths if not tf.io.gfile.isdir(p) and not any(_same_file(p, e) for e in exclude)
    ]
    if not paths:
        found = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") or "nothing"
        raise FileNotFoundError(
            f"no interaction files in --data_dir={data_dir}: expected files named *"
            + ", *".join(sorted(FORMATS))
            + f" (not starting with '.' or '_'); found: {found}"
        )
    return paths


def resolve_files(config: InteractionsConfig, data_dir: str) -> dict[str, str]:
    """Input label -> path, every file's columns checked.

    Labels: ``"interactions/<file name>"`` per interaction file, ``"items"``
    and ``"users"`` when given.

    Raises:
      FileNotFoundError / ValueError: a missing file, or a required column
        missing from a file (naming the file, the column and the columns found).
    """
    optional = {
        "items": os.path.expanduser(config.items_file) if config.items_file else "",
        "users": os.path.expanduser(config.users_file) if config.users_file else "",
    }
    files = {}
    for path in find_interaction_files(data_dir, [p for p in optional.values() if p]):
        files[f"interactions/{posixpath.basename(path)}"] = path
    files.update({table: path for table, path in optional.items() if path})
    names: dict[str, str] = {}
    for label, path in files.items():
        f = describe(label.split("/")[0], path)
        _check_columns(f, config)
        if f.table == "users":
            attribute_names(f, config)
        base = posixpath.basename(path)
        if base in names:  # bad records are filed per file name
            raise UserError(f"two input files share the name {base!r}: {names[base]}, {path}")
        names[base] = path
    return files


def text_table(f: InputFile, config: InteractionsConfig) -> Table:
    """The `sources.Table` reading a CSV, TSV or JSON lines input file line by line."""
    columns, parser = row_parser(f, config)
    if f.format == "jsonl":
        parse = _JsonLine(columns, parser)
    else:
        index = tuple(f.columns.index(c) for c in columns)
        parse = _DelimitedLine(_SEPARATORS[f.format], len(f.columns), index, parser)
    return Table(posixpath.basename(f.path), parse, header=f.format != "jsonl")


@dataclasses.dataclass(frozen=True)
class _DelimitedLine:
    """One CSV/TSV line (bytes) -> record, fields picked by header position."""

    sep: str
    num_fields: int
    index: tuple[int, ...]
    parser: RowParser

    def __call__(self, line: bytes):
        text = _decode_utf8(line)
        if not text.strip():
            return None
        if '"' in text:
            try:
                fields = next(csv.reader((text,), delimiter=self.sep, strict=True))
            except csv.Error as err:
                raise BadRecord(f"malformed {_name(self.sep)} line: {err}") from None
        else:
            fields = text.split(self.sep)
        if len(fields) != self.num_fields:
            raise BadRecord(
                f"expected {self.num_fields} {_name(self.sep)} fields (as in the header), "
                f"got {len(fields)}"
            )
        return self.parser([fields[i] for i in self.index])


def _name(sep: str) -> str:
    return "tab-separated" if sep == "\t" else f"{sep!r}-separated"


@dataclasses.dataclass(frozen=True)
class _JsonLine:
    """One JSON object line (bytes) -> record, fields picked by key."""

    columns: tuple[str, ...]
    parser: RowParser

    def __call__(self, line: bytes):
        obj = _load_json_object(line)
        if obj is None:
            return None
        return self.parser([obj.get(c) for c in self.columns])


# ---------------------------------------------------------------------------
# Parquet


def _parquet_file(path: str):
    """`pyarrow.parquet.ParquetFile` of `path`; `UserError` naming it when it is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = textio.open_binary(path) if "://" in path else path
    try:
        return pq.ParquetFile(source)
    except pa.ArrowInvalid as err:  # e.g. "Parquet magic bytes not found in footer"
        message = str(err).split(". ")[0].replace("'<Buffer>'", "the file")
        raise UserError(f"{path} is not a readable Parquet file ({message})") from None


@dataclasses.dataclass(frozen=True)
class ParquetPart:
    """One row group of a Parquet file; rows are numbered from 1 over the file."""

    table: str
    path: str
    row_group: int
    rows_before: int  # rows in the file's earlier row groups

    @property
    def key(self) -> str:
        return f"{self.path}#rg{self.row_group}"


def parquet_parts(table: str, path: str) -> list[ParquetPart]:
    """One `ParquetPart` per row group (reads only the footer)."""
    meta = _parquet_file(path).metadata
    parts, before = [], 0
    for group in range(meta.num_row_groups):
        parts.append(ParquetPart(table, path, group, before))
        before += meta.row_group(group).num_rows
    return parts


def _column_values(array) -> list:
    """Arrow column -> Python values; timestamps/dates as whole Unix seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)
        kind = array.type
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": _NANOS}[kind.unit]
        raw = pc.cast(array, pa.int64()).to_pylist()
        return [None if v is None else v // per_second for v in raw]
    if pa.types.is_date32(kind):
        return [None if v is None else v * 86_400 for v in pc.cast(array, pa.int32()).to_pylist()]
    if pa.types.is_date64(kind):
        return [None if v is None else v // 1_000 for v in pc.cast(array, pa.int64()).to_pylist()]
    return array.to_pylist()


def read_parquet_part(
    part: ParquetPart, columns: Sequence[str], parser: RowParser
) -> Iterator[tuple[int, tuple | None, str | None, dict | None]]:
    """Yields ``(row number, record, None, None)`` or ``(row number, None, reason, values)``.

    Reads the part's row group in Arrow batches of `_PARQUET_BATCH` rows.
    """
    pf = _parquet_file(part.path)
    row = part.rows_before
    for batch in pf.iter_batches(
        batch_size=_PARQUET_BATCH, row_groups=[part.row_group], columns=list(columns)
    ):
        names = batch.schema.names
        values = [_column_values(batch.column(names.index(c))) for c in columns]
        for row_values in zip(*values):
            row += 1
            try:
                yield row, parser(row_values), None, None
            except BadRecord as err:
                yield row, None, str(err), dict(zip(columns, row_values))


# ---------------------------------------------------------------------------
# User attribute classes


def attribute_classes(
    counts: Sequence[tuple[tuple[str, str], int]], names: Sequence[str], max_classes: int
) -> list[tuple[str, list[str]]]:
    """Per attribute, its classes: values by descending count, ties by value, capped.

    Args:
      counts: ``((attribute, value), number of users)`` pairs.
      names: attribute names, in column order (every one appears in the output).
      max_classes: at most this many classes per attribute.

    Returns:
      ``[(name, [class, ...]), ...]`` in `names` order.
    """
    per_name: dict[str, list[tuple[int, str]]] = {n: [] for n in names}
    for (name, value), n in counts:
        per_name.setdefault(name, []).append((-int(n), str(value)))
    return [(n, [v for _, v in sorted(per_name[n])[:max_classes]]) for n in names]
