"""Columnar interaction batches and the numpy kernels over them.

Interactions travel between Beam steps as columnar batches: "user" and "item"
as numpy arrays of UTF-8 bytes (dtype S, a quarter of the memory of str arrays;
byte order is code point order, so every sort is the same as on the strings),
"timestamp" int64, "rating" float32, and where each row was in the input
(`position`), which orders a user's interactions that share a timestamp:
"position_base" (a 0-d int64 array) plus "position" offsets from it, uint32 whenever they
fit (`with_positions`; `positions` gives them back as int64). Here: building
batches, the vectorized reader of MovieLens ratings lines, sorting/coding
byte-string ids, and the order of a user's interactions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from pipelines import sources

BATCH_ROWS = 100_000  # interactions per columnar batch between Beam steps
POSITION_BITS = 40  # low bits of a position: the line (row) number in its file


def position(rank, number):
    """Input position(s) of rows: ``rank << 40 | number``, int64.

    `rank` is the rank of the row's input file in the sorted list of the
    run's interaction files (a synthetic block, a TFDS shard when TFDS does
    not tell its size); `number` the row's 1-based line (Parquet: row) number
    in that file, or its index. Positions sort like (rank, number), so a
    user's interactions with one timestamp keep the order of the input (a
    stable sort of it, as SASRec and RecBole read their files), whatever the
    chunks, shards or runner.
    """
    number = np.asarray(number, dtype=np.int64)
    if number.size and (int(number.min()) < 0 or int(number.max()) >> POSITION_BITS):
        raise ValueError(f"a line or row number must be in [0, 2**{POSITION_BITS})")
    return (np.int64(rank) << np.int64(POSITION_BITS)) | number


def with_positions(columns: dict, position: np.ndarray) -> dict:
    """`columns` with the int64 input positions of its rows, stored compactly.

    As ``"position_base"`` (their minimum) plus ``"position"`` offsets from it,
    uint32 when they fit, else int64. A batch comes from one file (chunk, row
    group, TFDS shard or synthetic block), so they fit: batches and the
    fragments Beam groups by bucket carry 4 bytes per interaction, not 8.
    """
    position = np.asarray(position, dtype=np.int64)
    base = int(position.min()) if len(position) else 0
    offsets = position - base
    if not len(offsets) or int(offsets.max()) < 2**32:
        offsets = offsets.astype(np.uint32)
    columns["position_base"] = np.asarray(base, dtype=np.int64)  # 0-d: an array like the rest
    columns["position"] = offsets
    return columns


def positions(columns: dict) -> np.ndarray:
    """The int64 input positions of a batch's (fragment's) rows (`with_positions`)."""
    return columns["position"].astype(np.int64) + columns["position_base"]


def utf8(values) -> np.ndarray:
    """Strings (a sequence, or a numpy str array) -> numpy array of their UTF-8 bytes."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "S":
            return values
        if values.dtype.kind == "U":
            try:
                return values.astype(np.bytes_)  # ASCII: no Python loop
            except UnicodeEncodeError:
                pass
    return np.array([str(v).encode("utf-8") for v in values], dtype=np.bytes_)


def _columnar(rows: list[tuple]) -> dict[str, np.ndarray]:
    users, items, stamps, ratings, where = zip(*rows)
    columns = {
        "user": utf8(users),
        "item": utf8(items),
        "timestamp": np.asarray(stamps, dtype=np.int64),
        "rating": np.asarray(ratings, dtype=np.float32),
    }
    return with_positions(columns, np.asarray(where, dtype=np.int64))


def batched(rows: Iterable[tuple]) -> Iterator[dict[str, np.ndarray]]:
    """(user, item, timestamp, rating, position) rows -> columnar batches of `BATCH_ROWS`."""
    buffer = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= BATCH_ROWS:
            yield _columnar(buffer)
            buffer = []
    if buffer:
        yield _columnar(buffer)


@dataclasses.dataclass(frozen=True)
class RatingLines:
    """``user SEP item SEP rating SEP timestamp`` of digits: the MovieLens ratings files.

    `parse_rating_lines` reads many such lines at once with numpy. It accepts
    only plain spellings (ids and timestamps of ASCII digits, ratings exactly
    as listed below) and leaves every other line to the table's own parser, so
    records, bad-record reasons and line numbers are exactly the line-by-line
    parser's.
    """

    sep: bytes  # one byte, possibly repeated: b",", b"\t", b"::"
    half_stars: bool  # True: "0.5" ... "5.0" in halves and "1" ... "5"; False: "1" ... "5"


_MAX_FAST_TIMESTAMP_DIGITS = 18  # always fits int64


def rating_lines_of(parse) -> RatingLines | None:
    """The vectorized layout of a `sources.Table.parse` function, if it has one."""
    return {
        sources.parse_ml20m_rating: RatingLines(b",", half_stars=True),
        sources.parse_ml1m_rating: RatingLines(b"::", half_stars=False),
        sources.parse_ml100k_rating: RatingLines(b"\t", half_stars=False),
    }.get(parse)


def _windows(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """[len(start), width] bytes of `buf` from each start (zeros past its end)."""
    padded = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)[start]


def _field_bytes(buf: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Byte ranges [start, stop) of `buf` -> a numpy bytes (S) array of them."""
    width = int((stop - start).max(initial=1))
    matrix = _windows(buf, start, width)
    matrix[np.arange(width) >= (stop - start)[:, None]] = 0
    return matrix.view(f"S{width}").ravel()


def _field_uint(buf: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Byte ranges of 1 to 18 ASCII digits -> their values (int64)."""
    length = stop - start
    width = int(length.max(initial=0))
    digits = _windows(buf, start, max(width, 1))
    value = np.zeros(len(start), dtype=np.int64)
    for j in range(width):
        value = np.where(j < length, value * 10 + digits[:, j].astype(np.int64) - 48, value)
    return value


def parse_rating_lines(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, layout: RatingLines
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(accepted mask over the lines, columnar batch of the accepted lines, in order)."""
    width = len(layout.sep)
    seps = np.flatnonzero(buf == layout.sep[0])
    seps_before = np.searchsorted(seps, starts)
    ok = np.searchsorted(seps, ends) - seps_before == 3 * width
    rows = np.flatnonzero(ok)
    at = seps[seps_before[rows, None] + np.arange(3 * width)]  # [rows, separator bytes]
    good = np.ones(len(rows), dtype=bool)
    for field in range(3):
        for i in range(1, width):  # a separator's bytes are adjacent
            good &= at[:, field * width + i] == at[:, field * width] + i
    start = [starts[rows]] + [at[:, f * width - 1] + 1 for f in (1, 2, 3)]
    stop = [at[:, f * width] for f in (0, 1, 2)] + [ends[rows]]
    length = [b - a for a, b in zip(start, stop)]
    good &= (length[0] > 0) & (length[1] > 0) & (length[3] > 0)
    # Longer ids go to the line parser, which makes them bad records (sources.MAX_ID_CHARS).
    good &= (length[0] <= sources.MAX_ID_CHARS) & (length[1] <= sources.MAX_ID_CHARS)
    good &= length[3] <= _MAX_FAST_TIMESTAMP_DIGITS
    b0, b1, b2 = _windows(buf, start[2], 3).T
    whole = (length[2] == 1) & (b0 >= ord("1")) & (b0 <= ord("5"))
    stars = b0.astype(np.float32) - 48
    valid = whole
    if layout.half_stars:
        halves = (b0.astype(np.int64) - 48) * 2 + (b2 == ord("5"))
        half = (
            (length[2] == 3)
            & (b0 >= ord("0"))
            & (b0 <= ord("5"))
            & (b1 == ord("."))
            & ((b2 == ord("0")) | (b2 == ord("5")))
            & (halves >= 1)
            & (halves <= 10)
        )
        stars = np.where(whole, stars, halves.astype(np.float32) / 2)
        valid = whole | half
    good &= valid
    # Every other byte is a digit: a line's only non-digits are its separators
    # and the rating's ".".
    non_digits = np.flatnonzero((buf < 48) | (buf > 57))
    found = np.searchsorted(non_digits, stop[3]) - np.searchsorted(non_digits, start[0])
    good &= found == 3 * width + (length[2] == 3)
    ok[rows] = good
    keep = np.flatnonzero(good)
    columns = {
        "user": _field_bytes(buf, start[0][keep], stop[0][keep]),
        "item": _field_bytes(buf, start[1][keep], stop[1][keep]),
        "timestamp": _field_uint(buf, start[3][keep], stop[3][keep]),
        "rating": stars[keep].astype(np.float32),
    }
    return ok, columns


def _order_keys(ids: np.ndarray) -> np.ndarray | None:
    """uint64 keys that sort like the byte strings `ids` (dtype S), if at most 8 bytes wide.

    Zero-padded big-endian: ``b"12" < b"123" < b"2"`` as keys too. Integer
    sorts and searches are several times faster than string ones.
    """
    width = ids.dtype.itemsize
    if width > 8:
        return None
    padded = np.zeros((len(ids), 8), dtype=np.uint8)
    padded[:, :width] = np.ascontiguousarray(ids).view(np.uint8).reshape(len(ids), width)
    return padded.view(">u8").ravel().astype(np.uint64)  # native byte order: fast compares


def unique(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values of the bytes array `ids`, index of each id in them)."""
    keys = _order_keys(ids)
    if keys is None:
        distinct, inverse = np.unique(ids, return_inverse=True)
        return distinct, inverse.ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return ids[first], inverse.ravel()


def codes(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Index of each of `ids` in `sorted_ids` (which holds them all), as int32."""
    keys, sorted_keys = _order_keys(ids), _order_keys(sorted_ids)
    if keys is None or sorted_keys is None:
        return np.searchsorted(sorted_ids, ids).astype(np.int32)
    return np.searchsorted(sorted_keys, keys).astype(np.int32)


def sequence_order(owner, timestamp, position) -> np.ndarray:
    """``np.lexsort((position, timestamp, owner))``, on one packed key when it fits.

    Each user's interactions by time, ties in input order (`position`).
    Positions are distinct within a run, so the order is total: it depends on
    nothing but the input (not on chunks, shards, fragment arrival or runner).
    (owner, timestamp) pack into one int64 key when the block's timestamps
    span few enough seconds.
    """
    if len(owner):
        t0 = int(timestamp.min())
        span = int(timestamp.max()) - t0 + 1
        if span * (int(owner.max()) + 1) < 2**63:
            high = owner.astype(np.int64) * span + (timestamp - t0)
            return np.lexsort((position, high))
    return np.lexsort((position, timestamp, owner))
