"""Sharded, streamed reading of big line-oriented files, with exact line numbers.

A file is cut into byte ranges ("chunks") that Beam workers read in parallel.
A chunk owns every line that *starts* inside its byte range, so each line is
read exactly once whatever the chunk size. Line numbers stay exact: a first
cheap pass counts the newlines in every chunk, and the prefix sum of those
counts is the number of the first line a chunk owns (`first_line_numbers`).
No step ever holds a whole file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow as tf

_READ_BLOCK = 1 << 20


def open_binary(path: str):
    """Opens a local path with Python's buffered I/O (fast) or a URL via tf.io.gfile."""
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb", buffering=_READ_BLOCK)


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
