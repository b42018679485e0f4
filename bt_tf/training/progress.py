"""Early stopping that survives a kill: the checkpointed `Progress` and the `EpochEnd` callback.

``checkpoints/`` holds the best epoch's weights, ``train_state/`` the last
epoch's full state (`bt_tf.runs`); both are written at every epoch end, in an
order that a resumed run can always repair (`EpochEnd`).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.features import NUM_RESERVED

MONITOR = "val_loss"  # the default monitor (TrainConfig.monitor says which a run uses)


def monitor_mode(monitor: str) -> str:
    """``"min"`` for a loss, ``"max"`` for a ranking figure (``val_ndcg@10``, ``val_hr@10``)."""
    return "min" if monitor.endswith("loss") else "max"


class Progress(tf.Module):
    """Where training is, checkpointed with the state so a resumed run decides alike.

    ``best_*``: the epoch with the best monitored value (its weights are in
    ``checkpoints/``); ``ref_*``: the last epoch whose value beat the
    reference by more than ``min_delta`` (patience counts from it). The values
    are stored lower-is-better: a monitor to maximize (``val_ndcg@10``) is
    stored negated (``best_loss`` keeps its name for older checkpoints).
    """

    def __init__(self):
        super().__init__(name="progress")
        f64, i64 = tf.float64, tf.int64
        self.best_epoch = tf.Variable(0, dtype=i64, trainable=False, name="best_epoch")
        self.best_loss = tf.Variable(np.inf, dtype=f64, trainable=False, name="best_loss")
        self.ref_epoch = tf.Variable(0, dtype=i64, trainable=False, name="ref_epoch")
        self.ref_loss = tf.Variable(np.inf, dtype=f64, trainable=False, name="ref_loss")
        self.train_seconds = tf.Variable(0.0, dtype=f64, trainable=False, name="train_seconds")


def patience_exhausted(progress: Progress, epoch: int, patience: int) -> bool:
    return bool(patience) and epoch - int(progress.ref_epoch.numpy()) >= patience


def dropout_rng(model: tf.keras.Model) -> tf.Module:
    """The encoder's dropout generators, gathered for the checkpoint.

    Keras keeps each layer's `tf.random.Generator` out of checkpoints; saving
    their states beside the weights lets a resumed run draw the same dropout
    masks as an uninterrupted one. Builds the encoder (creating the generators).
    """
    model.encoder(tf.fill([1, 1], NUM_RESERVED), training=False)
    holder = tf.Module()
    holder.generators = [
        layer._random_generator._generator
        for layer in model.encoder.submodules
        if getattr(getattr(layer, "_random_generator", None), "_generator", None) is not None
    ]
    return holder


class EpochEnd(tf.keras.callbacks.Callback):
    """At every epoch end: early-stopping bookkeeping, the state, the best weights.

    Order matters for a kill at any point: the state (with the new best epoch)
    is saved before the best weights; a resumed run whose state names a best
    epoch newer than ``checkpoints/`` holds re-saves it from the restored state
    (the only epoch that can be missing is the state's own), see
    `bt_tf.training.trainer.build_model`.
    """

    def __init__(
        self, state, best, epoch, progress, *, monitor, patience, min_delta, mode="min"
    ):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self._state, self._best, self._epoch, self._progress = state, best, epoch, progress
        self._monitor, self._patience, self._min_delta = monitor, patience, min_delta
        self._sign = 1.0 if mode == "min" else -1.0

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._seconds = float(self._progress.train_seconds.numpy())

    def _judge(self, logs) -> tuple[float | None, bool, bool]:
        """(the monitored value, whether it is the best so far, whether significantly)."""
        if self._monitor is None:
            return None, True, True
        p = self._progress
        value = (logs or {}).get(self._monitor)
        value = self._sign * float(value) if value is not None else float("nan")
        best, ref = float(p.best_loss.numpy()), float(p.ref_loss.numpy())
        improved = np.isfinite(value) and value < best
        significant = improved and (
            not np.isfinite(ref) or value < ref - self._min_delta * abs(ref)
        )
        return value, improved, significant

    def on_epoch_end(self, epoch, logs=None):
        n, p = epoch + 1, self._progress
        value, improved, significant = self._judge(logs)
        # Without any finite val_loss yet (e.g. NaN at epoch 1) the latest epoch stands in,
        # so that the run always has weights.
        improved = improved or int(p.best_epoch.numpy()) == 0
        if improved:
            p.best_epoch.assign(n)
            p.best_loss.assign(value if value is not None and np.isfinite(value) else np.inf)
        if significant:
            p.ref_epoch.assign(n)
            p.ref_loss.assign(np.inf if value is None else value)
        p.train_seconds.assign(self._seconds + time.time() - self._start)
        self._epoch.assign(n)
        self._state.save(checkpoint_number=n)
        if improved:
            self._best.save(checkpoint_number=n)
        if patience_exhausted(p, n, self._patience):
            self.model.stop_training = True
