"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every small artifact the project writes (JSON, Markdown, text, Parquet, PNG)
goes through `replacing`: the content is written to a temporary file in the
target's own directory (same filesystem, so the rename cannot turn into a
copy), flushed and fsynced, then renamed over the target with `os.replace`
(atomic on POSIX and Windows), and the directory is fsynced so that the rename
itself survives a power cut. A process killed at any point leaves the previous
file intact (and at worst a hidden ``.NAME.*.tmp`` file beside it).

    write_json(path, {"a": 1})
    write_text(path, "# Report\\n")
    write_parquet(path, table, compression="zstd")
    with replacing("plot.png") as tmp:   # any writer that takes a path
        fig.savefig(tmp)

Paths with a scheme (``gs://...``): object stores publish an object only when
its upload completes, so a reader never sees half of it either; the content
is written there directly with `tf.io.gfile` (no rename: renaming an object is
a copy).

Nothing heavy is imported here: TensorFlow only for URLs, pyarrow only by
`write_parquet`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files created by `replacing` get the mode a plain open() would give them
# (mkstemp creates 0600, which would hide reports from other users).
_FILE_MODE = 0o666 & ~_umask()


def is_url(path: str) -> bool:
    """Whether `path` names an object through a filesystem scheme (``gs://``, ...)."""
    return "://" in str(path)


def _fsync_dir(directory: str) -> None:
    """Makes a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows: directories cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; when the block ends without an exception,
    that file is fsynced and renamed to `path`. On an exception it is removed and
    `path` is left as it was.

    The temporary name keeps `path`'s extension (``.report.md.x1y2.tmp.md``), so
    writers that choose a format by extension (matplotlib) pick the right one.
    URLs get `path` itself (see the module doc).
    """
    path = os.fspath(path)
    if is_url(path):
        yield path
        return
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{name}.", suffix=".tmp" + os.path.splitext(name)[1], dir=directory
    )
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed it without fsync
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (the module doc)."""
    if is_url(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Writes `text` to `path` atomically (the module doc)."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str, content: Any, **dump_kwargs) -> None:
    """Writes ``json.dumps(content, **dump_kwargs)`` and a newline to `path` atomically.

    The text is built before anything is written: content that is not JSON
    (a NaN with ``allow_nan=False``, an object) fails without touching `path`.
    """
    write_text(path, json.dumps(content, **dump_kwargs) + "\n")


def write_parquet(path: str, table, **write_kwargs) -> None:
    """``pyarrow.parquet.write_table(table, path, **write_kwargs)``, atomically."""
    import pyarrow.parquet as pq

    with replacing(path) as tmp:
        pq.write_table(table, tmp, **write_kwargs)
