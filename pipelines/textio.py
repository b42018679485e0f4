"""Sharded, streamed reading of big line-oriented files, with exact line numbers.

A file is cut into byte ranges ("chunks") that Beam workers read in parallel.
A chunk owns every line that *starts* inside its byte range, so each line is
read exactly once whatever the chunk size. Line numbers stay exact: a first
cheap pass counts the newlines in every chunk, and the prefix sum of those
counts is the number of the first line a chunk owns (`first_line_numbers`).
No step ever holds a whole file.

`read_block` gives the same lines as `read_lines` as one bytes object (a chunk
at a time), and `line_bounds` finds them with numpy, for parsers that work on
many lines at once.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from bt_tf import atomic

_READ_BLOCK = 1 << 20


def open_binary(path: str):
    """Opens a local path with Python's buffered I/O (fast) or a URL via tf.io.gfile."""
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb", buffering=_READ_BLOCK)


def write_text(lines: Sequence[str], path: str) -> None:
    """Writes `lines`, each ended by a newline, to `path` (any tf.io.gfile path), atomically
    (`bt_tf.atomic`: a reader never sees half of metadata.json or a vocabulary)."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    atomic.write_text(path, "".join(line + "\n" for line in lines))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Bytes [start, end) of `path`; `table` names the source table it feeds."""

    table: str
    path: str
    index: int
    start: int
    end: int

    @property
    def key(self) -> str:
        return f"{self.path}#{self.index}"


def plan_chunks(table: str, path: str, chunk_bytes: int) -> list[Chunk]:
    """Cuts `path` into chunks of about `chunk_bytes` bytes (at least one chunk)."""
    size = tf.io.gfile.stat(path).length
    bounds = list(range(0, size, max(1, chunk_bytes))) + [size]
    if len(bounds) == 1:  # empty file: one empty chunk
        bounds = [0, 0]
    return [Chunk(table, path, i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def count_newlines(chunk: Chunk) -> tuple[str, int]:
    """Returns (chunk.key, number of b"\\n" bytes in the chunk's byte range)."""
    count = 0
    with open_binary(chunk.path) as f:
        f.seek(chunk.start)
        remaining = chunk.end - chunk.start
        while remaining > 0:
            block = f.read(min(_READ_BLOCK, remaining))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return chunk.key, count


def first_line_numbers(newline_counts: dict[str, int], chunks: list[Chunk]) -> dict:
    """Maps chunk key -> number of newlines before the chunk (prefix sums per file)."""
    before: dict[str, int] = {}
    running: dict[str, int] = {}
    for chunk in sorted(chunks, key=lambda c: (c.path, c.index)):
        before[chunk.key] = running.get(chunk.path, 0)
        running[chunk.path] = before[chunk.key] + newline_counts[chunk.key]
    return before


def read_lines(chunk: Chunk, newlines_before: int) -> Iterator[tuple[int, bytes]]:
    """Yields (1-based line number, line without its terminator) owned by `chunk`.

    `newlines_before` is the number of b"\\n" bytes in [0, chunk.start).
    """
    with open_binary(chunk.path) as f:
        line_number = newlines_before + 1
        if chunk.start > 0:
            f.seek(chunk.start - 1)
            if f.read(1) != b"\n":
                # The line that straddles our start belongs to the previous chunk.
                f.readline()
                line_number += 1
        position = f.tell()
        while position < chunk.end:
            line = f.readline()
            if not line:
                break
            position += len(line)
            if line.endswith(b"\n"):
                line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line_number, line
            line_number += 1


def read_block(chunk: Chunk, newlines_before: int) -> tuple[int, bytes]:
    """(number of the first owned line, the bytes of every line `chunk` owns).

    The same lines as `read_lines`, with their terminators, in one read: from
    the first line that starts in ``[chunk.start, chunk.end)`` to the end of
    the last one (which may run past ``chunk.end``).
    """
    with open_binary(chunk.path) as f:
        line_number = newlines_before + 1
        start = chunk.start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                # The line that straddles our start belongs to the previous chunk.
                start += len(f.readline())
                line_number += 1
        if start >= chunk.end:
            return line_number, b""
        data = f.read(chunk.end - start)
        if data and not data.endswith(b"\n"):
            data += f.readline()
        return line_number, data


def split_block(data: bytes, piece_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Cuts `data` at line ends into pieces of about `piece_bytes` bytes.

    Yields (number of lines before the piece, piece); every piece but the last
    ends with a newline.
    """
    lines_before, start = 0, 0
    while start < len(data):
        end = data.find(b"\n", start + max(1, piece_bytes) - 1)
        end = len(data) if end < 0 else end + 1
        piece = data[start:end]
        yield lines_before, piece
        lines_before += piece.count(b"\n")
        start = end


def line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the lines in `buf` (uint8), as `read_lines` cuts them.

    A line ends before its ``\\n``, and before one ``\\r`` preceding it; a last
    line without a newline counts; after a final newline there is no empty line.
    """
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    if starts[-1] == len(buf):  # data ends with a newline (or is empty)
        starts, ends = starts[:-1], ends[:-1]
    cr = np.zeros(len(ends), dtype=bool)
    nonempty = ends > starts
    cr[nonempty] = buf[ends[nonempty] - 1] == 13
    return starts, ends - cr
