"""The command-line shell of every entry point: quiet start-up, help, one-line errors.

Entry points (``python -m bt_tf.train``, ``bt_tf.evaluate``, ``bt_tf.export``,
``bt_tf.reproduce``, ``bt_tf.embed``, ``pipelines.preprocess``,
``tuning.search``, ``tuning.compare``, ``benchmarks.*``) are written like this::

    import sys

    from bt_tf import cli

    if __name__ == "__main__":
        cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported

    import tensorflow as tf
    ...

    def main(argv=None):
        parser = cli.ArgumentParser("bt_tf.train", description=...)
        ...

    if __name__ == "__main__":
        cli.run_main(main)

An entry point whose work runs in processes started with multiprocessing's
"spawn" (the evaluation's probe workers: ``bt_tf.evaluate``, ``bt_tf.reproduce``,
``tuning.compare``, ``benchmarks.evaluate``) starts with ``if __name__ in
cli.MAIN_NAMES:`` and ends with ``elif __name__ == cli.SPAWNED_MAIN:
cli.end_startup()``. Such a child imports the parent's ``__main__`` module
again, under the name ``__mp_main__`` and with the parent's ``sys.argv``: it is
as quiet as its parent while TensorFlow is imported, and its own log lines
show from `end_startup` on.

The console scripts (``bt-train``, ``bt-evaluate``, ..., `CONSOLE_SCRIPTS`;
declared in pyproject.toml, defined in `bt_tf.console`) run the same ``main``
through `console`, which calls `startup` before it imports the module: the
same start-up, help and errors, with the script's name as ``prog``.

What that gives the user:

- **Quiet start-up.** `startup` holds back what TensorFlow, absl and Beam print
  while they are imported (C++ logs written before absl::InitializeLog, which no
  log level silences; oneDNN and CUDA probes; Beam's "apitools not found"),
  sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment sets it, and lowers
  the TensorFlow, absl and Beam Python loggers to warnings/errors. A crash
  during the imports still shows everything that was held back. ``--verbose``
  changes none of this: every library speaks as it normally does.
- **Help.** `ArgumentParser` sets ``prog`` to the ``python -m`` command, shows
  every flag's default, and has ``--verbose``. `add_passed_flags` lists the
  flags a command passes on to another one as an argument group.
- **Errors.** `run_main` turns a user error (`user_error_message`: bad flags,
  missing files or columns, too many bad records, an output directory another
  process holds, and the environment's refusals: a permission, a path that is
  a file, a full disk, ...) into ONE line ``error: ...`` on stderr and exit
  code 2; the traceback is printed only with ``--verbose``. Any other
  exception is a bug and keeps its traceback (exit code 1).

This module imports nothing heavy: it runs before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import importlib
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from bt_tf.errors import UserError

VERBOSE = "--verbose"
SPAWNED_MAIN = "__mp_main__"  # the main module's name in a multiprocessing "spawn" child
MAIN_NAMES = ("__main__", SPAWNED_MAIN)
# Start-up messages of libraries that are noise for a user (Python logging records).
_NOISE = ("apitools not found",)
# Python loggers lowered without --verbose: name -> level.
_QUIET_LOGGERS = {
    "tensorflow": logging.ERROR,
    "absl": logging.ERROR,
    "apache_beam": logging.WARNING,
}

_held: tuple[int, Any] | None = None  # (saved stderr fd, temp file) while start-up is quiet

# Console scripts (pyproject.toml [project.scripts] -> bt_tf.console) -> the module they run.
CONSOLE_SCRIPTS = {
    "bt-train": "bt_tf.train",
    "bt-evaluate": "bt_tf.evaluate",
    "bt-reproduce": "bt_tf.reproduce",
    "bt-embed": "bt_tf.embed",
    "bt-export": "bt_tf.export",
    "bt-preprocess": "pipelines.preprocess",
    "bt-tune": "tuning.search",
}
# "python -m <module>" -> the console script's name, while that script runs (`console`).
_console_progs: dict[str, str] = {}


def is_verbose(argv: Sequence[str]) -> bool:
    return VERBOSE in argv


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _NOISE)


def startup(argv: Sequence[str]) -> None:
    """Start of an entry point, BEFORE TensorFlow or Beam is imported (see the module doc).

    Without ``--verbose`` in `argv`, stderr (file descriptor 2, where C++ code
    writes too) goes to a temporary file until `run_main` starts, and the
    libraries' loggers are quieted. Python logging is set up (INFO, bare
    messages) either way, so that a library's import cannot set it up first.
    """
    global _held
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if is_verbose(argv) or _held is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_drop_noise)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    sys.stderr.flush()
    saved, held = os.dup(2), tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    _held = (saved, held)
    atexit.register(_release, replay=True)


def _release(replay: bool = False) -> None:
    """Gives stderr back; with `replay`, writes what was held back (a crash at start-up)."""
    global _held
    if _held is None:
        return
    saved, held = _held
    _held = None
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if replay:
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))
        sys.stderr.flush()
    held.close()


def end_startup() -> None:
    """Ends the quiet start-up: the CUDA probes (logged on first device use) happen inside it.

    `run_main` calls it; a spawned child, which never reaches `run_main`, calls it at
    the end of its re-import of the entry module (see the module doc).
    """
    if _held is None:
        return
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.config.list_physical_devices()  # does not initialize the runtime (strategies may)
    _release()


# The exception types that are a user's mistake, not a bug. The pipelines' own
# (too many bad records, a k-core that did not converge, a bad download) are UserErrors.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError)
# OSError numbers that report the user's files or machine, not a bug: permissions, a
# path that is a file (or not one), a full disk or quota, a read-only filesystem, ...
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EACCES", "EPERM", "ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENOSPC", "EDQUOT",
        "EROFS", "ENAMETOOLONG", "EFBIG", "ELOOP", "EMFILE", "ENFILE", "ENOTEMPTY", "EXDEV",
    )
    if hasattr(errno, name)
)  # fmt: skip
# TensorFlow's errors (tf.errors.*Error) of the same kind: its file system, a full disk
# or memory, a corrupt record file. FailedPrecondition counts only for a path's kind
# ("Is a directory", "Not a directory"): it also reports bugs (an uninitialized value).
_TF_ENVIRONMENT_ERRORS = (
    "PermissionDeniedError",
    "NotFoundError",
    "AlreadyExistsError",
    "ResourceExhaustedError",
    "DataLossError",
    "UnauthenticatedError",
)
_TF_PATH_KIND = ("is a directory", "not a directory", "directory not empty")


def _tf_error(err: BaseException) -> str | None:
    """The first line of a TensorFlow error caused by the environment, else None.

    TensorFlow is not imported for this: only an error it raised can be one of its.
    """
    errors_impl = sys.modules.get("tensorflow.python.framework.errors_impl")
    if errors_impl is None or not isinstance(err, errors_impl.OpError):
        return None
    message = (err.message or "").strip().splitlines()
    first = message[0].strip() if message else type(err).__name__
    first = re.sub(r"^\{\{[^}]*\}\}\s*", "", first)  # "{{function_node ...}} <message>"
    name = type(err).__name__
    if name in _TF_ENVIRONMENT_ERRORS:
        return first
    if name == "FailedPreconditionError" and any(k in first.lower() for k in _TF_PATH_KIND):
        return first
    return None


def _os_error(err: OSError) -> str:
    """``<file>: <what the system said>`` (``<file> -> <file2>: ...`` for a rename)."""
    what = err.strerror or str(err)
    if err.filename is None:
        return what
    if err.filename2 is None:
        return f"{err.filename}: {what}"
    return f"{err.filename} -> {err.filename2}: {what}"


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of an exception caused by the user's input, flags, files or
    environment; None for a bug (whose traceback stays).

    Covers `UserError` (and `bt_tf.locks.DirectoryLocked`), missing files, any
    `OSError` with an `ENVIRONMENT_ERRNOS` number (``PermissionError``,
    ``FileExistsError``, a full disk, ...), TensorFlow's file system, disk and
    memory errors, and text that is not UTF-8.
    """
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return _os_error(err)  # "<file>: <what>", not "[Errno 20] <what>: '<file>'"
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, UnicodeDecodeError):
        return f"input is not UTF-8 text: {err}"
    return _tf_error(err)


def error_line(err: BaseException | str) -> str:
    """``error: <message>`` on one line."""
    if isinstance(err, str):
        message = " ".join(err.split()) or "unknown error"
    else:
        message = " ".join(str(err).split()) or type(err).__name__
    return f"error: {message}"


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> NoReturn:
    """Runs ``main(argv)`` and exits: 0 (or main's int), 2 on a user error, 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = is_verbose(argv)
    end_startup()
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise  # a bug: its traceback, exit code 1
        if verbose:
            traceback.print_exc()
        print(error_line(message), file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def console(script: str) -> NoReturn:
    """Runs console script `script` (a key of `CONSOLE_SCRIPTS`) like ``python -m <module>``.

    `startup` comes first, then the module is imported (TensorFlow and Beam with
    it), then `run_main` runs its ``main``; its parser's ``prog`` is `script`.
    """
    module = CONSOLE_SCRIPTS[script]
    startup(sys.argv[1:])
    _console_progs[f"python -m {module}"] = script
    run_main(importlib.import_module(module).main)


# --------------------------------------------------------------------------
# Parsers


def summary(doc: str, paragraphs: int = 2) -> str:
    """The first `paragraphs` of a module docstring (title and usage examples), for --help."""
    return "\n\n".join(doc.strip().split("\n\n")[:paragraphs])


def _shown(value: Any) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value) or '""'
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or not action.option_strings
            or action.default is argparse.SUPPRESS
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: {_shown(action.default).replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` of an entry point.

    ``module`` (e.g. ``"bt_tf.train"``) gives ``prog`` = ``python -m bt_tf.train``
    (``bt-train`` when the console script runs, `console`).
    Every option's help shows its default; ``--verbose`` is always a flag. A
    usage error raises `UserError` (``argument --flag: ...``) instead of
    printing the usage: `run_main` prints it on one line and exits with code 2.
    """

    def __init__(self, module: str | None = None, **kwargs):
        if module is not None:
            kwargs.setdefault("prog", f"python -m {module}")
        if kwargs.get("prog") in _console_progs:
            kwargs["prog"] = _console_progs[kwargs["prog"]]
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)
        self.add_argument(
            VERBOSE,
            action="store_true",
            help="show libraries' start-up logs and the traceback of an error",
        )

    def error(self, message: str) -> NoReturn:
        hint = f" (see {self.prog} --help)" if self.prog else ""
        raise UserError(f"{message}{hint}")


def add_passed_flags(
    parser: argparse.ArgumentParser,
    title: str,
    add_flags: Callable[[argparse.ArgumentParser], Any],
    *,
    exclude: Sequence[str] = (),
) -> None:
    """Adds the flags that `add_flags` defines (another command's) to `parser` as groups.

    For a command that passes flags on, e.g. ``bt_tf.reproduce`` -> ``bt_tf.train``:
    they show in ``--help`` under `title`, and parsing with `parser` checks
    their values. Option strings `parser` already has stay `parser`'s own (a
    flag losing all of them is left out), and so do those in `exclude`.
    """
    donor = argparse.ArgumentParser(add_help=False)
    add_flags(donor)
    taken = set(parser._option_string_actions) | set(exclude)  # argparse has no public map
    for donor_group in donor._action_groups:
        actions = []
        for action in donor_group._group_actions:
            strings = [s for s in action.option_strings if s not in taken]
            if strings:
                action.option_strings = strings
                actions.append(action)
        if not actions:
            continue
        default_group = donor_group.title in ("options", "optional arguments")
        name = title if default_group else f"{title}: {donor_group.title}"
        group = parser.add_argument_group(name)
        for action in actions:
            group._add_action(action)
            taken.update(action.option_strings)


def comma_list(kind: Callable[[str], Any], what: str, check: Callable[[Any], bool] | None = None):
    """An argparse ``type``: ``"a,b,c"`` -> list of ``kind`` values, each passing `check`.

    `what` names the values in errors, e.g. ``"fractions in (0, 1]"``.
    """

    def parse(text: str) -> list:
        try:
            values = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {what}"
            ) from None
        bad = [v for v in values if check is not None and not check(v)]
        if bad:
            raise argparse.ArgumentTypeError(f"{text!r}: {_shown(bad)} are not {what}")
        return values

    return parse
