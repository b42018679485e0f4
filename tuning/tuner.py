"""A KerasTuner `Tuner` whose trials run the production trainer (STYLE.md item 8).

`BarlowTwinsTuner.run_trial` reads a trial's hyperparameters, builds its
`TrainConfig` (`tuning.space.trial_config`), calls `bt_tf.training.train` under
the trial's directory and returns a metrics dict: KerasTuner's own
`Tuner.run_trial` builds and fits a Keras 3 model, and rejects `tf_keras`
models, so it is never used here.

Layout under the tuner's project dir (``<output_dir>/search/``, KerasTuner's):

    oracle.json, chief.json / tuner0.json ...   KerasTuner state (resume)
    trial_<id>/trial.json                        KerasTuner's record of the trial
    trial_<id>/run/                              the bt_tf.train run directory
    trial_<id>/run/objective.json                the trial's score (reused on retry)

Resuming: a trial whose process died is retried by KerasTuner in the same
trial directory, where `train` resumes from the last epoch checkpoint.
Hyperband: a trial that continues trial P for more epochs (``tuner/trial_id``
= P) starts from a copy of P's run directory, so `train` restores P's last
checkpoint and trains only the extra epochs.

Every trial start and end is appended to an event log (JSON lines): which
tuner ran which trial, when, with what result.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import keras_tuner
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import atomic, runs
from bt_tf.data import dataset
from bt_tf.serving.export import restore_encoder
from bt_tf.training.config import TrainConfig
from bt_tf.training.trainer import data_width, train
from tuning import space
from tuning.objective import CrossfitSpec, crossfit_objective, evaluate_objective, objective_name

RUN_DIR = "run"
OBJECTIVE_FILE = "objective.json"
CROSSFIT_CACHE = "crossfit_cache"  # the claim objective's probe cache, shared by the trials


def trial_run_dir(project_dir: str, trial_id: str) -> str:
    return os.path.join(project_dir, f"trial_{trial_id}", RUN_DIR)


def _append_event(path: str | None, event: dict) -> None:
    if not path:
        return
    line = json.dumps(event, sort_keys=True) + "\n"
    # One short O_APPEND write per event: lines from concurrent local workers do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def continue_run(parent_run_dir: str, run_dir: str) -> None:
    """Starts ``run_dir`` as a copy of ``parent_run_dir`` (checkpoints included).

    The copy is made under a temporary name and renamed, so a kill during the
    copy leaves no half run directory. The copy's ``config.json`` is pointed
    at its new location (`train` refuses a run dir whose recorded settings
    differ in anything but the resumable ones, see `bt_tf.training.config.RESUMABLE_CHANGES`),
    and the parent's ``metrics.json`` and objective are dropped.
    """
    if not os.path.exists(os.path.join(parent_run_dir, runs.CHECKPOINT_DIR)):
        raise FileNotFoundError(
            f"Hyperband continues {parent_run_dir} but it has no checkpoints; was that "
            "trial's directory deleted?"
        )
    partial = run_dir + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(parent_run_dir, partial)
    for name in (runs.METRICS_FILE, OBJECTIVE_FILE):
        path = os.path.join(partial, name)
        if os.path.exists(path):
            os.remove(path)
    config_path = os.path.join(partial, runs.CONFIG_FILE)
    with open(config_path) as f:
        recorded = json.load(f)
    recorded["run_dir"] = run_dir
    with open(config_path, "w") as f:
        json.dump(recorded, f, indent=2)
    os.rename(partial, run_dir)


class BarlowTwinsTuner(keras_tuner.Tuner):
    """Runs each trial with `bt_tf.training.train` and scores it on eval users.

    Args:
      oracle: a KerasTuner oracle (RandomSearch, BayesianOptimization,
        Hyperband) whose objective is ``objective_name(objective_kind)``, "max".
      base_config: every training setting that is not searched; each trial
        replaces the searched fields, ``run_dir``, ``epochs`` (Hyperband)
        and sets ``probe=False, export=False``.
      objective_kind: a key of `tuning.objective.OBJECTIVES`.
      crossfit: how the ``claim`` objective probes a trial.
      directory, project_name: KerasTuner's project dir is their join.
      events_path: JSON-lines event log (None: no log).
    """

    def __init__(
        self,
        oracle: keras_tuner.Oracle,
        base_config: TrainConfig,
        objective_kind: str = "favorite_genre",
        *,
        crossfit: CrossfitSpec = CrossfitSpec(),
        directory: str,
        project_name: str = "search",
        events_path: str | None = None,
        **kwargs,
    ):
        super().__init__(
            oracle, directory=directory, project_name=project_name, overwrite=False, **kwargs
        )
        # KerasTuner reloads its oracle only when this tuner id's own state file
        # exists (e.g. a search killed in its first trial, or one moved from
        # single-process to chief mode, has an oracle.json but no such file).
        oracle_file = os.path.join(self.project_dir, "oracle.json")
        if not self._is_worker() and os.path.exists(oracle_file) and not self.oracle.trials:
            print(f"Reloading Oracle from {oracle_file}")
            self.oracle.reload()
        self.base_config = base_config
        self.objective_kind = objective_kind
        self.objective_name = objective_name(objective_kind)
        self.crossfit = crossfit
        self.events_path = events_path

    def run_trial(self, trial, *args, **kwargs) -> dict:
        values = dict(trial.hyperparameters.values)
        trial_id = trial.trial_id
        run_dir = trial_run_dir(self.project_dir, trial_id)
        epochs = int(values.get("tuner/epochs", self.base_config.epochs))
        parent = values.get("tuner/trial_id")
        event = {"trial_id": trial_id, "tuner_id": self.tuner_id, "pid": os.getpid()}
        _append_event(
            self.events_path,
            {**event, "event": "start", "time": time.time(), "epochs": epochs, "parent": parent},
        )
        start = time.time()
        if parent and not os.path.exists(run_dir):
            continue_run(trial_run_dir(self.project_dir, parent), run_dir)
        config = space.trial_config(
            self.base_config, values, run_dir, epochs=epochs, probe=False, export=False
        )
        result = self._score(config)
        result["wall_seconds"] = time.time() - start
        _append_event(
            self.events_path,
            {**event, "event": "end", "time": time.time(), **result},
        )
        return result

    def _score(self, config: TrainConfig) -> dict:
        """Trains (or resumes, or reuses) the run, then its objective (cached per run)."""
        cache = os.path.join(config.run_dir, OBJECTIVE_FILE)
        tf.keras.backend.clear_session()
        metrics = train(config)
        epochs_done = int(metrics["epochs_completed"])
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
            if cached.get("epochs") == epochs_done and self.objective_name in cached:
                return cached
        scores = self._objective(config, metrics["artifact_dir"])
        final = metrics.get("final", {})
        result = {**scores, "epochs": float(epochs_done)}
        for key in ("loss", "val_loss"):  # reported for the record, never the objective
            if key in final:
                result[f"bt_{key}"] = float(final[key])
        atomic.write_json(cache, result, indent=2)
        return result

    def _objective(self, config: TrainConfig, artifact_dir: str) -> dict:
        if self.objective_kind == "claim":
            name = os.path.basename(os.path.dirname(config.run_dir))  # trial_<id>
            cache = os.path.join(self.project_dir, CROSSFIT_CACHE)
            return crossfit_objective(config.run_dir, name, cache, self.crossfit)
        width = data_width(config, dataset.load_metadata(artifact_dir))
        encoder, _ = restore_encoder(config.run_dir)
        return evaluate_objective(
            encoder, artifact_dir, self.objective_kind, max_len=width, seed=config.seed
        )

    def on_search_begin(self):
        super().on_search_begin()
        self.save()  # state files exist from the start, so a kill in trial 0 resumes too

    # KerasTuner's Keras-model hooks do not apply: there is no Keras 3 model to save.
    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        """The trial's trained encoder (restored from its run directory)."""
        encoder, _ = restore_encoder(trial_run_dir(self.project_dir, trial.trial_id))
        return encoder
