"""One process at a time per output directory: `hold` and `hold_dir`.

Every command that writes an output directory holds its lock while it writes:
a data version (`pipelines.preprocess`, lock file ``<version>.lock`` beside
the version, which is published by a rename), a run directory (`bt_tf.train`),
an embeddings directory (`bt_tf.embed`), a report or search directory
(`bt_tf.evaluate`, `bt_tf.reproduce`, `tuning.search`, `tuning.compare`);
lock file ``DIR/.lock``. A second process that wants the same directory stops
at once with `DirectoryLocked`, a `UserError` whose message names the holder
(host, PID, start time, command) and what to do; entry points print it as
one ``error:`` line with exit code 2. The same process may take a lock it
already holds again (a command that locks a run directory and then calls the
library, which locks it too).

How: an exclusive ``flock(2)`` on the lock file through the ``filelock``
package, which the kernel releases when the holder's process ends, however
it ends (``kill -9`` included). A lock whose holder died is therefore free;
the next process takes it over and says so (a notice naming the dead holder),
because the holder details it finds say "not released". Those details live in
a small JSON file beside the lock file (``.lock.json``: host, pid, started,
command, released), written atomically by the holder; the lock file itself
stays (deleting a flock'ed file lets two processes lock two different files
of the same name).

Where it holds: between processes on one machine, on any local filesystem.
Across machines on a shared filesystem it is only as good as that
filesystem's flock: NFSv4 clients on Linux emulate flock with byte-range locks
that the server arbitrates, older NFS and some FUSE filesystems do not lock
across clients at all (``filelock`` then falls back to an existence lock and
warns). Object stores (``gs://`` paths) have no locks: such directories are
written unlocked, with a warning, and two runs into one are not prevented;
give each machine its own output directory there.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator

from bt_tf import atomic
from bt_tf.errors import UserError

LOCK_FILE = ".lock"  # in a locked directory (`hold_dir`)
INFO_SUFFIX = ".json"  # holder details: "<lock file>.json"
_COMMAND_CHARS = 160  # of the holder's command line, in messages

_log = logging.getLogger(__name__)
_held: dict[str, list] = {}  # real path of a lock file this process holds -> [lock, depth]
_warned_urls: set[str] = set()


class DirectoryLocked(UserError):
    """Another live process holds the lock of the directory this one wants to write."""


def ensure_dir(path: str) -> str:
    """Creates directory `path` (and its parents) if needed; returns it.

    Raises `UserError` naming the culprit when `path` or one of its parents is
    a file, or when the directory cannot be created (permissions, read-only
    filesystem), instead of `FileExistsError` / `NotADirectoryError` tracebacks.
    """
    if atomic.is_url(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(path)
        return path
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = path
        while blocker and not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        what = "it is" if blocker == path else f"{blocker} is"
        raise UserError(
            f"cannot use {path} as an output directory: {what} a file, not a directory"
        ) from None
    except PermissionError as err:
        raise UserError(
            f"cannot create the output directory {path}: permission denied ({err.filename or path})"
        ) from None
    return path


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _command() -> str:
    """This process's command line as the user typed it (``python -m bt_tf.train ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    if spec is not None and spec.name:
        head = ["python", "-m", spec.name]
    elif argv0 == "-c":
        head = ["python", "-c"]
    else:
        head = [os.path.basename(argv0)]
    text = shlex.join([*head, *sys.argv[1:]])
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def _read_info(lock_file: str) -> dict | None:
    """The holder details beside `lock_file`, None when missing or unreadable."""
    try:
        with open(lock_file + INFO_SUFFIX, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
    if not info:
        return "a process whose details are not written yet"
    return (
        f"PID {info.get('pid')} on {info.get('host')}, started {info.get('started')} "
        f"({info.get('command')})"
    )


def _held_message(lock_file: str, what: str, hint: str) -> str:
    info = _read_info(lock_file)
    for _ in range(10):  # the holder may be between taking the lock and writing its details
        if info is not None:
            break
        time.sleep(0.1)
        info = _read_info(lock_file)
    advice = f"wait for it to finish{hint}" if hint else "wait for it to finish"
    return f"{what} is in use by another process: {_describe(info)}; {advice} (lock: {lock_file})"


@contextlib.contextmanager
def hold(lock_file: str, *, what: str, hint: str = "") -> Iterator[None]:
    """Holds the exclusive lock `lock_file` for the block (the module doc).

    Args:
        lock_file: the lock's path; its directory must exist.
        what: the locked thing as messages name it (e.g. the directory).
        hint: appended to the "wait for it to finish" advice, e.g.
            ``" or choose another --output_dir"``.

    Raises:
        DirectoryLocked: another live process holds it; the message names that
            process (host, PID, start time, command).
    """
    import filelock  # light, but only lock holders need it

    if atomic.is_url(lock_file):
        if lock_file not in _warned_urls:
            _warned_urls.add(lock_file)
            _log.warning("%s is not locked: object stores have no file locks", what)
        yield
        return
    key = os.path.realpath(lock_file)
    if key in _held:  # this process holds it already
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    lock = filelock.FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DirectoryLocked(_held_message(lock_file, what, hint)) from None
    info = None
    try:
        previous = _read_info(lock_file)
        if previous is not None and not previous.get("released", True):
            _log.warning(
                "notice: took over the lock of %s from %s, which ended without releasing it",
                what,
                _describe(previous),
            )
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            "command": _command(),
            "released": False,
        }
        atomic.write_json(lock_file + INFO_SUFFIX, info, indent=1)
        _held[key] = [lock, 1]
        yield
    finally:
        _held.pop(key, None)
        if info is not None:  # released before the lock, so a new holder's details stay
            with contextlib.suppress(OSError):  # e.g. the disk filled up meanwhile
                atomic.write_json(
                    lock_file + INFO_SUFFIX, {**info, "released": True, "ended": _now()}, indent=1
                )
        lock.release()


def hold_dir(directory: str, *, hint: str = "") -> contextlib.AbstractContextManager:
    """`hold` on ``directory/.lock``, creating `directory` first (`ensure_dir`)."""
    directory = ensure_dir(directory)
    return hold(os.path.join(directory, LOCK_FILE), what=directory, hint=hint)


def is_held(lock_file: str) -> bool:
    """Whether this process holds `lock_file`."""
    return os.path.realpath(lock_file) in _held
