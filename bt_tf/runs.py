"""The run directory: its layout, its config and metrics files, its checkpoints, resume checks.

A run directory (``--output_dir`` of `bt_tf.train`, default ``runs/<dataset>_<model>``)::

    config.json     every setting (flat, flag names) + artifact_dir, max_len, encoder kwargs
    metrics.json    written when training finishes (best_epoch, stop_reason, history, ...)
    history.csv     one row per finished epoch (Keras CSVLogger): metrics.json's history
    checkpoints/    THE run's weights: the epoch with the lowest val_loss; every loader reads it
    train_state/    the last epoch's model, optimizer, data position and stopping state (resume)
    logs/           TensorBoard
    export/         the SavedModel (`bt_tf.serving.export`)
    .lock           held by the training process (`lock`, `bt_tf.locks`)

config.json and metrics.json are written atomically (`bt_tf.atomic`); one that
is unreadable all the same (cut short by a full disk before this, edited by
hand) raises `UnreadableRunFile`, a one-line user error that says how to
recover. history.csv survives resumes: metrics.json's ``history`` is rebuilt
from it (`read_history`), so it holds every epoch however often the run was
killed and resumed.

This module only knows files and names; it imports TensorFlow for `tf.io.gfile`
(run directories may live on GCS) and `tf.train` checkpoint helpers.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import posixpath
from collections.abc import Callable, Iterable

import tensorflow as tf

from bt_tf import atomic, locks
from bt_tf.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"  # the run's weights (best epoch): what every loader reads
STATE_DIR = "train_state"  # the last epoch's model, optimizer, data position, stopping state
EXPORT_DIR = "export"
LOGS_DIR = "logs"
HISTORY_FILE = "history.csv"  # per-epoch metrics, one row per epoch (CSVLogger's layout)
_EPOCH_COLUMN = "epoch"  # CSVLogger's 0-based epoch index
# config.json keys beside the settings: what rebuilding the encoder needs.
DERIVED_KEYS = ("artifact_dir", "max_len", "encoder")


def path(run_dir: str, name: str) -> str:
    """``run_dir/name`` (posix joins work for local paths and gs:// alike)."""
    return posixpath.join(run_dir, name)


class UnreadableRunFile(UserError):
    """A run directory's JSON file that does not parse; the message says how to recover."""

    def __init__(self, file: str, problem: str, recovery: str):
        super().__init__(f"{file} is unreadable: {problem}; {recovery}")
        self.file, self.problem = file, problem


# How to recover each file of a run directory when it is unreadable.
_RECOVERY = {
    CONFIG_FILE: "restore it, or delete it and rerun the same bt_tf.train command (the run "
    "resumes from its checkpoints and writes config.json again)",
    METRICS_FILE: "rerun the same bt_tf.train command: it rebuilds metrics.json from the "
    "checkpoints and history.csv without training again",
}


def _read_json(file: str) -> dict:
    """A run file's JSON object; `UnreadableRunFile` when it is cut short or not an object."""
    try:
        with tf.io.gfile.GFile(file, "rb") as f:
            content = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as err:
        problem = f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    else:
        if isinstance(content, dict):
            return content
        problem = f"a JSON {type(content).__name__}, not an object"
    recovery = _RECOVERY.get(posixpath.basename(file), "restore it or delete it")
    raise UnreadableRunFile(file, problem, recovery)


def _write_json(file: str, content: dict) -> None:
    atomic.write_json(file, content, indent=2)


def lock(run_dir: str, *, chief: bool = True) -> contextlib.AbstractContextManager:
    """Holds ``run_dir/.lock`` (created with the directory) for a training process.

    A second training process into `run_dir` stops with `bt_tf.locks.DirectoryLocked`
    naming this one. ``chief=False`` (a non-chief worker of a multi-worker run,
    which writes only to its own scratch directory) takes no lock.
    """
    if not chief:
        return contextlib.nullcontext()
    return locks.hold_dir(run_dir, hint=" or use another --output_dir")


def read_config(run_dir: str) -> dict:
    """``run_dir/config.json``, checked to hold what rebuilding the encoder needs."""
    file = path(run_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(file):
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {run_dir!r}: not a training run directory "
            "(python -m bt_tf.train --output_dir=RUN writes one)."
        )
    config = _read_json(file)
    missing = [key for key in DERIVED_KEYS if key not in config]
    if missing or not isinstance(config["encoder"], dict):
        raise UserError(
            f"{file} lacks {missing or ['encoder (a dict)']}: export needs 'artifact_dir', "
            "'max_len' and 'encoder' (the SequenceEncoder keyword arguments)."
        )
    return config


def recorded_settings(run_dir: str) -> dict | None:
    """The raw content of ``run_dir/config.json``, None when there is none."""
    file = path(run_dir, CONFIG_FILE)
    return _read_json(file) if tf.io.gfile.exists(file) else None


def write_config(run_dir: str, settings: dict, derived: dict) -> None:
    """Writes config.json: the run's settings, then the `DERIVED_KEYS` values."""
    _write_json(path(run_dir, CONFIG_FILE), {**settings, **derived})


def read_metrics(run_dir: str) -> dict | None:
    """``run_dir/metrics.json`` (a finished run's results), None when there is none."""
    file = path(run_dir, METRICS_FILE)
    return _read_json(file) if tf.io.gfile.exists(file) else None


def write_metrics(run_dir: str, metrics: dict) -> None:
    _write_json(path(run_dir, METRICS_FILE), metrics)


def trim_history(out_dir: str, epochs: int) -> None:
    """Keeps the rows of epochs ``1..epochs`` in ``out_dir/history.csv`` (the last row of
    each), before training resumes after epoch `epochs`; removes the file when 0.

    Rows of epochs after the last checkpointed one (a kill between the row and the
    checkpoint), repeated rows and a torn last line go, so the rows that training
    appends next continue a clean file.
    """
    file = path(out_dir, HISTORY_FILE)
    if not tf.io.gfile.exists(file):
        return
    if epochs <= 0:
        tf.io.gfile.remove(file)
        return
    columns, rows = _history_rows(file, epochs)
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for epoch in sorted(rows):
        writer.writerow(rows[epoch])
    atomic.write_text(file, out.getvalue())


def _history_rows(file: str, epochs: int) -> tuple[list[str], dict[int, dict]]:
    """(columns, 0-based epoch -> its last well-formed row) of a history.csv, epochs < `epochs`."""
    with tf.io.gfile.GFile(file, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or [])
    rows: dict[int, dict] = {}
    for row in reader:
        try:
            epoch = int(row[_EPOCH_COLUMN])
            values = {k: float(v) for k, v in row.items() if k != _EPOCH_COLUMN}
        except (KeyError, TypeError, ValueError):
            continue  # a torn or merged line: its epoch is replayed after the resume
        if None in row or not 0 <= epoch < epochs:
            continue
        rows[epoch] = {_EPOCH_COLUMN: str(epoch), **{k: repr(v) for k, v in values.items()}}
    return columns, rows


def read_history(out_dir: str, epochs: int) -> dict[str, list[float]]:
    """metrics.json's ``history``: metric name -> one value per epoch, epochs 1..`epochs`.

    Read from ``out_dir/history.csv`` (the last row of each epoch). A run directory
    from before history.csv has rows only for the epochs trained since; its
    history starts there.
    """
    file = path(out_dir, HISTORY_FILE)
    if not tf.io.gfile.exists(file):
        return {}
    columns, rows = _history_rows(file, epochs)
    if not rows:
        return {}
    names = [c for c in columns if c != _EPOCH_COLUMN]
    return {
        name: [float(rows[e][name]) if name in rows[e] else math.nan for e in sorted(rows)]
        for name in names
    }


def is_complete(metrics: dict | None, max_epochs: int) -> bool:
    """Whether a run with these metrics.json contents needs no more training."""
    if metrics is None:
        return False
    return metrics.get("epochs_completed", 0) >= max_epochs or bool(metrics.get("stopped_early"))


def latest_checkpoint(run_dir: str) -> str:
    """The run's weights: the latest checkpoint in ``RUN/checkpoints/`` (its best epoch)."""
    ckpt_dir = path(run_dir, CHECKPOINT_DIR)
    found = tf.train.latest_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(
            f"No checkpoint in {ckpt_dir!r}; train first (python -m bt_tf.train) or check "
            "--run_dir."
        )
    return found


def file_sha256(file: str) -> str:
    """The SHA-256 of a file (local or gs://), read in 1 MiB blocks: a run's inputs' identity."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_number(checkpoint: str | None) -> int:
    """The epoch number of a ``.../ckpt-N`` checkpoint path (0 for None)."""
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def is_full_state(checkpoint: str) -> bool:
    """Whether a checkpoint holds a training state (written before `STATE_DIR` existed)."""
    return any(name.startswith("epoch/") for name, _ in tf.train.list_variables(checkpoint))


def check_resumable(
    run_dir: str,
    settings: dict,
    *,
    comparable: Callable[[dict], dict],
    resumable: Iterable[str],
) -> None:
    """Raises `UserError` when ``run_dir`` holds weights trained with other settings.

    ``settings``: the new run's flat settings (config.json's keys); ``comparable``
    maps a recorded or new settings dict to the values that decide reuse;
    ``resumable``: the settings a resumed run may change.
    """
    recorded = recorded_settings(run_dir)
    if recorded is None:
        return
    old = comparable(recorded)
    new = comparable(json.loads(json.dumps(settings)))  # tuples -> lists
    changed = sorted(k for k in new if old.get(k) != new.get(k) and k not in resumable)
    if changed and tf.io.gfile.isdir(path(run_dir, CHECKPOINT_DIR)):
        raise UserError(
            f"{run_dir} holds a run with different settings ({', '.join(changed)}); "
            "use another --output_dir or delete that run to start over."
        )
