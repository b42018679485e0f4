"""The run directory: its layout, its config and metrics files, its checkpoints, resume checks.

A run directory (``--output_dir`` of `bt_tf.train`, default ``runs/<dataset>_<model>``)::

    config.json     every setting (flat, flag names) + artifact_dir, max_len, encoder kwargs
    metrics.json    written when training finishes (best_epoch, stop_reason, history, ...)
    checkpoints/    THE run's weights: the epoch with the lowest val_loss; every loader reads it
    train_state/    the last epoch's model, optimizer, data position and stopping state (resume)
    logs/           TensorBoard
    export/         the SavedModel (`bt_tf.serving.export`)

This module only knows files and names; it imports TensorFlow for `tf.io.gfile`
(run directories may live on GCS) and `tf.train` checkpoint helpers.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable

import tensorflow as tf

from bt_tf.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"  # the run's weights (best epoch): what every loader reads
STATE_DIR = "train_state"  # the last epoch's model, optimizer, data position, stopping state
EXPORT_DIR = "export"
LOGS_DIR = "logs"
# config.json keys beside the settings: what rebuilding the encoder needs.
DERIVED_KEYS = ("artifact_dir", "max_len", "encoder")


def path(run_dir: str, name: str) -> str:
    """``run_dir/name`` (posix joins work for local paths and gs:// alike)."""
    return posixpath.join(run_dir, name)


def _read_json(file: str) -> dict:
    with tf.io.gfile.GFile(file) as f:
        return json.load(f)


def _write_json(file: str, content: dict) -> None:
    with tf.io.gfile.GFile(file, "w") as f:
        json.dump(content, f, indent=2)


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
        raise ValueError(
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
