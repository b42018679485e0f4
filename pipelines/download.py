"""MovieLens downloads: checksummed, cached, extracted safely and atomically.

`fetch_movielens("ml-1m")` returns a directory holding ``ratings.dat`` (or
``ratings.csv`` for ml-20m, ``u.data`` for ml-100k) that
`pipelines.sources.resolve_files` accepts.

Layout of the cache directory (default ``~/.cache/bt_tf/downloads``)::

    ml-1m.zip                  the archive, checksum verified
    ml-1m/                     the extracted data; complete iff it exists and
                               holds the marker file `COMPLETE_MARKER`
    .ml-1m.partial-<pid>-*/    extraction in progress (or left by a killed
                               process; removed by the next run)

Extraction goes into a temporary directory next to the target and is moved
into place with one `os.replace`, so an interrupted run never leaves a
directory that looks complete. Zip members that are absolute paths, contain
``..``, resolve outside the target or are symlinks are rejected.

Checksums: `MOVIELENS_SHA256` are the SHA-256 digests that TensorFlow Datasets
registers for the official GroupLens archives, copied from
``tensorflow_datasets/url_checksums/movielens.txt`` (tensorflow-datasets
4.9.x; the same values are in ``url_checksums/movie_lens.txt``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile

from bt_tf.errors import UserError

__all__ = [
    "COMPLETE_MARKER",
    "DEFAULT_CACHE_DIR",
    "MOVIELENS_SHA256",
    "MOVIELENS_URLS",
    "ChecksumError",
    "UnsafeArchiveError",
    "fetch_movielens",
]

MOVIELENS_URLS = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
}
# From tensorflow_datasets/url_checksums/movielens.txt (url, size, sha256).
MOVIELENS_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
}
MOVIELENS_SIZES = {  # bytes, same source
    "ml-100k": 4_924_029,
    "ml-1m": 5_917_549,
    "ml-20m": 198_702_078,
}

DEFAULT_CACHE_DIR = "~/.cache/bt_tf/downloads"
COMPLETE_MARKER = ".bt_tf_complete"
_RATINGS_FILES = ("ratings.dat", "ratings.csv", "u.data")


class ChecksumError(UserError):
    """A downloaded archive does not have the expected SHA-256 digest."""


class UnsafeArchiveError(UserError):
    """A zip member would be written outside the extraction directory."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(cache_dir: str, name: str) -> None:
    """Removes ``.<name>.partial-<pid>-*`` dirs whose process no longer runs."""
    prefix = f".{name}.partial-"
    for entry in os.listdir(cache_dir):
        if not entry.startswith(prefix):
            continue
        pid_text = entry[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(os.path.join(cache_dir, entry), ignore_errors=True)


def _download(url: str, zip_path: str, sha256: str | None) -> None:
    """Downloads `url` to `zip_path` via a ``.part`` file renamed when verified."""
    import tensorflow as tf  # imported late: the module is usable without TF

    cache_dir, fname = os.path.split(zip_path)
    part = os.path.join(cache_dir, fname + ".part")
    if os.path.exists(part):  # left by a killed download
        os.remove(part)
    try:
        got = tf.keras.utils.get_file(
            fname=fname + ".part",
            origin=url,
            file_hash=sha256,
            hash_algorithm="sha256",
            cache_dir=cache_dir,
            cache_subdir="",
        )
    except ValueError as err:
        if "hash does not match" not in str(err):
            raise
        actual = _sha256(part) if os.path.exists(part) else "unavailable"
        if os.path.exists(part):
            os.remove(part)
        raise ChecksumError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. "
            "The download was deleted. Retry; if it persists the file on the "
            "server changed: check the URL, or pass the new sha256 explicitly."
        ) from None
    os.replace(got, zip_path)


def _safe_members(archive: zipfile.ZipFile, target: str):
    """Yields (info, destination) for every member, rejecting unsafe ones."""
    root = os.path.realpath(target)
    for info in archive.infolist():
        name = info.filename
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"zip member {name!r} is a symlink; refusing it")
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"zip member {name!r} is an absolute path")
        if ".." in parts:
            raise UnsafeArchiveError(f"zip member {name!r} contains '..'")
        dest = os.path.realpath(os.path.join(root, *[p for p in parts if p]))
        if os.path.commonpath([root, dest]) != root:
            raise UnsafeArchiveError(f"zip member {name!r} resolves to {dest}, outside {root}")
        yield info, dest


def _extract(zip_path: str, dest_dir: str) -> None:
    """Extracts every member of `zip_path` under `dest_dir` after safety checks."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{zip_path} is not a valid zip archive ({err}); delete it and retry"
        ) from None
    with archive:
        members = list(_safe_members(archive, dest_dir))  # check all first
        for info, dest in members:
            if info.is_dir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with archive.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _find_data_dir(root: str, zip_path: str) -> str:
    """The one directory under `root` that holds ratings.dat, ratings.csv or u.data."""
    found = [
        dirpath
        for dirpath, _, filenames in os.walk(root)
        if any(f in filenames for f in _RATINGS_FILES)
    ]
    if len(found) != 1:
        raise ValueError(
            f"{zip_path} should hold exactly one directory with "
            f"{' or '.join(_RATINGS_FILES)}, found {len(found)}: {found}. "
            "Delete the archive and download it again."
        )
    return found[0]


def _is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def fetch_movielens(
    name: str,
    cache_dir: str | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
) -> str:
    """Downloads and extracts a MovieLens archive unless already cached.

    Args:
      name: ``"ml-100k"``, ``"ml-1m"`` or ``"ml-20m"``; also the name of the extracted
        directory and of the cached ``<name>.zip``.
      cache_dir: where archive and data live; default ``~/.cache/bt_tf/downloads``.
      url: archive URL; default `MOVIELENS_URLS[name]`.
      sha256: expected SHA-256 of the archive; default `MOVIELENS_SHA256[name]`
        when `url` is the default. With a custom `url` and no `sha256` the
        archive is not verified.

    Returns:
      ``<cache_dir>/<name>``, the directory that holds the ratings file.

    Raises:
      ChecksumError: the download's digest differs (URL, expected and actual
        digest in the message); the download is deleted.
      UnsafeArchiveError: a member would escape the target (nothing is moved
        into place).
    """
    if url is None:
        if name not in MOVIELENS_URLS:
            raise ValueError(
                f"no download URL for {name!r}; known: {', '.join(MOVIELENS_URLS)}. "
                "Pass url= (and sha256=) for other archives."
            )
        url = MOVIELENS_URLS[name]
        if sha256 is None:
            sha256 = MOVIELENS_SHA256[name]
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a plain directory name, got {name!r}")
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
    target = os.path.join(cache_dir, name)
    if _is_complete(target):
        return target

    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_partials(cache_dir, name)
    zip_path = os.path.join(cache_dir, f"{name}.zip")
    if not os.path.isfile(zip_path) or (sha256 and _sha256(zip_path) != sha256):
        _download(url, zip_path, sha256)

    partial = tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=cache_dir)
    try:
        _extract(zip_path, partial)
        data_dir = _find_data_dir(partial, zip_path)
        with open(os.path.join(data_dir, COMPLETE_MARKER), "w") as f:
            f.write(f"url\t{url}\nsha256\t{sha256 or _sha256(zip_path)}\n")
        if _is_complete(target):  # a concurrent run finished first
            return target
        if os.path.islink(target) or os.path.isfile(target):
            os.remove(target)
        elif os.path.isdir(target):  # incomplete, e.g. from another tool
            shutil.rmtree(target)
        try:
            os.replace(data_dir, target)
        except OSError:
            if not _is_complete(target):  # not a concurrent run that won
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
