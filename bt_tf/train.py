"""Pretrain a user-sequence encoder: `python -m bt_tf.train`.

    python -m bt_tf.train               # synthetic default, a few minutes on a laptop CPU
    python -m bt_tf.train --dataset=ml-1m --lambd=0.005 --projector=1024-1024-1024 \\
        --augment=mask:0.3,reorder:0.3 --batch_size=256 --max_epochs=50
    python -m bt_tf.train --dataset=ml-20m --strategy=multi_worker   # TF_CONFIG set by the cluster
    python -m bt_tf.train --dataset=ml-1m --model=de                 # TFRS dual-encoder baseline

Preprocesses first when the artifacts are missing (same flags as
`pipelines.preprocess`). Trains until the validation objective (``val_loss``:
the model's loss on eval users, on views and cuts fixed by the seed) has not
improved by ``--min_delta`` (relative) for ``--early_stopping_patience``
epochs, at most ``--max_epochs`` (old name ``--epochs``); see `bt_tf.config`.

The run directory (`--output_dir`, default `runs/<dataset>_<model>`) holds
`config.json`, TensorBoard logs (`logs/`), `checkpoints/` (THE run's weights:
those of the epoch with the lowest val_loss, the only weights that
`metrics.json`, `export/`, `bt_tf.evaluate`, `bt_tf.export`, the tuner and
`bt_tf.reproduce` ever use), `train_state/` (the last epoch's full training
state, for resuming), `metrics.json` (``best_epoch``, ``best_val_loss``,
epochs run, optimizer steps, users seen, training seconds, why it stopped) and
the exported encoder (`export/`). Without eval users (fewer than 2) there is no
val_loss: every epoch counts as the best, so the last one is kept.

Started again with the same command, a killed run continues from its last
epoch, on exactly the batches it would have seen, with the same early-stopping
state; a finished run (stopped early, or at the cap) is not retrained (raise
`--max_epochs` to train a run that hit the cap further).
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import dataclasses
import json
import logging
import os
import shutil
import time

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import augment as aug
from bt_tf import config as cfg
from bt_tf import encoders, models
from bt_tf import input as bt_input
from bt_tf.embeddings import embed_split
from bt_tf.errors import UserError
from bt_tf.features import FUTURE_GENRE_IDS, NUM_RESERVED
from pipelines import preprocess as pp

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"  # the run's weights (best epoch): what every loader reads
STATE_DIR = "train_state"  # the last epoch's model, optimizer, data position, stopping state
EXPORT_DIR = "export"
MONITOR = "val_loss"
PROG = "python -m bt_tf.train"


# --------------------------------------------------------------------------
# Strategy and cluster


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`--strategy` -> a tf.distribute strategy ("auto": mirrored over GPUs if >1, else default)."""
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy=multi_worker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _task() -> tuple[str, int]:
    """(task type, index) from TF_CONFIG; ("chief", 0) on a single machine."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("type", "chief"), int(task.get("index", 0))


def is_chief() -> bool:
    kind, index = _task()
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind in ("chief", "worker") and index == 0


def _worker_dir(run_dir: str) -> str:
    """Where this task writes: the run dir on the chief, a scratch dir on other workers."""
    if is_chief():
        return run_dir
    kind, index = _task()
    return os.path.join(run_dir, ".workers", f"{kind}-{index}")


def _artifacts(config: cfg.TrainConfig) -> str:
    """Preprocesses on the chief; other workers wait for the chief's artifacts."""
    if is_chief():
        return pp.preprocess(config.data)
    path = pp.artifact_dir(config.data)
    while not tf.io.gfile.exists(os.path.join(path, "metadata.json")):
        time.sleep(2)
    return path


# --------------------------------------------------------------------------
# Model and data


def build_encoder(config: cfg.TrainConfig, vocab_size: int) -> encoders.SequenceEncoder:
    return encoders.SequenceEncoder(**config.encoder_kwargs(vocab_size), name="encoder")


def build_model(config: cfg.TrainConfig, vocab_size: int) -> tf.keras.Model:
    """The model `--model` names, around a fresh encoder (call inside the strategy scope)."""
    encoder = build_encoder(config, vocab_size)
    if config.model == "bt":
        projector = encoders.build_projector(config.projector)
        return models.BarlowTwinsModel(encoder, projector, lambd=config.lambd)
    from bt_tf import dual_encoder

    de_kwargs = dict(
        vocab_size=vocab_size,
        temperature=config.temperature,
        num_candidates=config.de_candidates or None,
        logq_correction=config.de_logq,
        seed=config.seed,
    )
    if config.model == "de":
        return dual_encoder.DualEncoderModel(encoder, **de_kwargs)
    projector = encoders.build_projector(config.projector)
    return dual_encoder.JointModel(
        encoder, projector, lambd=config.lambd, bt_weight=config.bt_weight, **de_kwargs
    )


def data_width(config: cfg.TrainConfig, meta: dict) -> int:
    """History width of the batches: `max_len`, or less when no history is that long."""
    return min(config.max_len, int(meta.get("max_history_len") or config.max_len))


def make_train_data(
    config: cfg.TrainConfig,
    artifact_dir: str,
    split: str,
    batch_size: int,
    *,
    repeat: bool,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches in the layout the model's `train_step` reads.

    ``batch_size`` is the global batch. With an ``input_context`` (see
    `train_input_options`) this is one input pipeline's share: its users, in
    batches of ``batch_size / num_replicas_in_sync``, with views and cuts drawn
    from stateless seeds that include the pipeline's id, so that every worker
    (or replica) draws its own.
    """
    policy = aug.AugmentPolicy.from_string(config.augment) if "bt" in config.model else None
    outputs = [bt_input.ITEMS] + ([models.VIEW1, models.VIEW2] if policy else [])
    ds = bt_input.make_dataset(
        artifact_dir,
        split,
        batch_size,
        max_len=data_width(config, bt_input.load_metadata(artifact_dir)),
        shuffle=split == "train",
        seed=seed,
        repeat=repeat,
        drop_remainder=True,  # BT standardizes over the batch: keep it full and static
        augment_policy=policy,
        input_context=input_context,
        outputs=outputs,
        bucket_boundaries=config.buckets,
        cache=bool(config.cache_input),
    )
    # The DE reads the histories themselves: every position is a next-item pair.
    keep = set(outputs[1:]) | ({bt_input.ITEMS} if "de" in config.model else set())
    return ds.map(lambda b: {k: v for k, v in b.items() if k in keep})


def replica_contexts(context: tf.distribute.InputContext) -> list[tf.distribute.InputContext]:
    """The input contexts of the replicas that one input pipeline feeds, one per replica.

    How the global batch is formed: training reads one shard of the train users
    per REPLICA. Replica r of R reads shard r (`bt_tf.input.make_dataset` with
    ``InputContext(R, r, R)``) in batches of batch_size / R and draws its views
    and next-item cuts from stateless seeds that include r, so no two replicas,
    and no two workers, share augmentation draws. The pipeline of a worker with
    L local replicas (pipeline p of P, L = R / P) feeds replicas p·L ... p·L+L-1:
    it builds their shards and interleaves their batches, since a worker's
    replicas take its pipeline's batches in turn. The global batches depend on R
    only: two single-replica workers (``multi_worker``) and one machine with two
    replicas (``mirrored``) train on the same batches.
    """
    total = context.num_replicas_in_sync
    local = total // context.num_input_pipelines
    first = context.input_pipeline_id * local
    return [tf.distribute.InputContext(total, first + i, total) for i in range(local)]


def _interleave(parts: list[tf.data.Dataset]) -> tf.data.Dataset:
    """Batch 0 of each part in turn, then batch 1 of each, ..."""
    if len(parts) == 1:
        return parts[0]
    turns = tf.data.Dataset.range(len(parts)).repeat()
    return tf.data.Dataset.choose_from_datasets(parts, turns)


def _dropout_rng(model: tf.keras.Model) -> tf.Module:
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


class _Progress(tf.Module):
    """Where training is, checkpointed with the state so a resumed run decides alike.

    ``best_*``: the epoch with the lowest val_loss (its weights are in
    ``checkpoints/``); ``ref_*``: the last epoch whose val_loss beat the
    reference by more than ``min_delta`` (patience counts from it).
    """

    def __init__(self):
        super().__init__(name="progress")
        f64, i64 = tf.float64, tf.int64
        self.best_epoch = tf.Variable(0, dtype=i64, trainable=False, name="best_epoch")
        self.best_loss = tf.Variable(np.inf, dtype=f64, trainable=False, name="best_loss")
        self.ref_epoch = tf.Variable(0, dtype=i64, trainable=False, name="ref_epoch")
        self.ref_loss = tf.Variable(np.inf, dtype=f64, trainable=False, name="ref_loss")
        self.train_seconds = tf.Variable(0.0, dtype=f64, trainable=False, name="train_seconds")


def _checkpoint_number(path: str | None) -> int:
    return int(path.rsplit("-", 1)[1]) if path else 0


def patience_exhausted(progress: _Progress, epoch: int, patience: int) -> bool:
    return bool(patience) and epoch - int(progress.ref_epoch.numpy()) >= patience


class _EpochEnd(tf.keras.callbacks.Callback):
    """At every epoch end: early-stopping bookkeeping, the state, the best weights.

    Order matters for a kill at any point: the state (with the new best epoch)
    is saved before the best weights; a resumed run whose state names a best
    epoch newer than ``checkpoints/`` holds re-saves it from the restored state
    (the only epoch that can be missing is the state's own), see `train`.
    """

    def __init__(self, state, best, epoch, progress, *, monitor, patience, min_delta):
        super().__init__()
        self._state, self._best, self._epoch, self._progress = state, best, epoch, progress
        self._monitor, self._patience, self._min_delta = monitor, patience, min_delta

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._seconds = float(self._progress.train_seconds.numpy())

    def on_epoch_end(self, epoch, logs=None):
        n, p = epoch + 1, self._progress
        value = None if self._monitor is None else (logs or {}).get(self._monitor)
        if self._monitor is None:
            improved = significant = True
        else:
            value = float(value) if value is not None else float("nan")
            best, ref = float(p.best_loss.numpy()), float(p.ref_loss.numpy())
            improved = np.isfinite(value) and value < best
            significant = improved and (
                not np.isfinite(ref) or value < ref - self._min_delta * abs(ref)
            )
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


# --------------------------------------------------------------------------
# Quick probe


def genre_probe(encoder, artifact_dir: str, seed: int, max_len: int | None = None) -> dict:
    """Future favorite genre/category: logistic regression on frozen embeddings.

    Trained on train users, scored on eval users (a quick health check after
    training; the full protocol with label fractions is `bt_tf.evaluate`).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from bt_tf import probes

    data = {}
    for split in ("train", "eval"):
        emb, kept = embed_split(
            encoder, artifact_dir, split, max_len=max_len, keep=[FUTURE_GENRE_IDS]
        )
        y = probes.favorite_genre(kept[FUTURE_GENRE_IDS])
        data[split] = (emb[y >= 0], y[y >= 0])
    (x_train, y_train), (x_eval, y_eval) = data["train"], data["eval"]
    scaler = StandardScaler().fit(x_train)
    head = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    head.fit(scaler.transform(x_train), y_train)
    majority = np.bincount(y_train).argmax()
    return {
        "favorite_genre_accuracy": float(head.score(scaler.transform(x_eval), y_eval)),
        "majority_accuracy": float(np.mean(y_eval == majority)),
        "eval_users": int(len(y_eval)),
    }


# --------------------------------------------------------------------------
# The training function (the CLI and the tuner call this)


def _check_resumable(run_dir: str, config: cfg.TrainConfig) -> None:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = cfg.comparable_settings(json.load(f))
    new = cfg.comparable_settings(json.loads(json.dumps(config.to_json())))  # tuples -> lists
    changed = sorted(k for k in new if old.get(k) != new.get(k) and k not in cfg.RESUMABLE_CHANGES)
    if changed and os.path.isdir(os.path.join(run_dir, CHECKPOINT_DIR)):
        raise UserError(
            f"{run_dir} holds a run with different settings ({', '.join(changed)}); "
            "use another --output_dir or delete that run to start over."
        )


def _is_full_state(path: str) -> bool:
    """Whether a checkpoint holds a training state (written before `STATE_DIR` existed)."""
    return any(name.startswith("epoch/") for name, _ in tf.train.list_variables(path))


def _restore_state(checkpoint, state, out_dir: str, progress: _Progress) -> None:
    """Restores the last epoch's state (or a run from before `STATE_DIR`), if any."""
    if state.latest_checkpoint:
        checkpoint.restore(state.latest_checkpoint)
        print(f"resumed from {state.latest_checkpoint}", flush=True)
        return
    legacy = tf.train.latest_checkpoint(os.path.join(out_dir, CHECKPOINT_DIR))
    if legacy and _is_full_state(legacy):
        # Its last epoch is the best known: the epochs before left no val record.
        checkpoint.restore(legacy).expect_partial()
        progress.best_epoch.assign(_checkpoint_number(legacy))
        progress.ref_epoch.assign(_checkpoint_number(legacy))
        print(f"resumed from {legacy} (a run from before {STATE_DIR}/)", flush=True)


def train(config: cfg.TrainConfig) -> dict:
    """Preprocess if needed, train (resuming), probe, export; returns metrics.json's content.

    The model in memory after training, the probe, the export, and
    ``checkpoints/`` all hold the weights of ``metrics["best_epoch"]``.
    """
    tf.keras.utils.set_random_seed(config.seed)
    # Dropout draws from tf.random.Generator state that lives in the model's
    # variables, so a checkpoint carries it and a resumed run replays exactly.
    tf.keras.backend.experimental.enable_tf_random_generator()
    run_dir = config.run_dir
    out_dir = _worker_dir(run_dir)
    os.makedirs(out_dir, exist_ok=True)
    _check_resumable(run_dir, config)
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            done = json.load(f)
        if done.get("epochs_completed", 0) >= config.epochs or done.get("stopped_early"):
            print(f"{run_dir} is complete; reusing it (raise --max_epochs to train on)", flush=True)
            return done

    strategy = make_strategy(config.strategy)
    models.set_precision(config.mixed_precision)
    artifact_dir = _artifacts(config)
    meta = bt_input.load_metadata(artifact_dir)
    vocab_size = int(meta["vocab_sizes"]["items"])
    n_train, n_eval = int(meta["num_users"]["train"]), int(meta["num_users"]["eval"])
    if n_train < config.batch_size:
        raise UserError(
            f"--batch_size={config.batch_size} is larger than the {n_train} train users"
        )
    if config.batch_size % strategy.num_replicas_in_sync:
        raise UserError(
            f"--batch_size={config.batch_size} does not split evenly over the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    steps = config.steps_for(n_train)

    if is_chief():
        derived = {  # what `python -m bt_tf.export --run_dir` needs to rebuild the encoder
            "artifact_dir": artifact_dir,
            "max_len": config.max_len,
            "encoder": config.encoder_kwargs(vocab_size),
        }
        with open(os.path.join(run_dir, CONFIG_FILE), "w") as f:
            json.dump({**config.to_json(), **derived}, f, indent=2)

    with strategy.scope():
        model = build_model(config, vocab_size)
        optimizer = models.optimizer_for_policy(tf.keras.optimizers.Adam(config.learning_rate))
        # XLA cannot compile a step that reads other replicas' variables (MirroredStrategy).
        jit = config.jit_compile and strategy.num_replicas_in_sync == 1
        if config.jit_compile and not jit:
            print("--jit_compile ignored: XLA steps need a single replica", flush=True)
        model.compile(
            optimizer=optimizer, jit_compile=jit, steps_per_execution=config.steps_per_execution
        )
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        progress = _Progress()
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            dropout_rng=_dropout_rng(model),
            progress=progress,
        )
        weights = tf.train.Checkpoint(model=model)
    state = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, STATE_DIR), max_to_keep=2)
    best = tf.train.CheckpointManager(weights, os.path.join(out_dir, CHECKPOINT_DIR), max_to_keep=1)
    _restore_state(checkpoint, state, out_dir, progress)
    initial_epoch = int(epoch.numpy())
    if initial_epoch and int(progress.best_epoch.numpy()) > _checkpoint_number(
        best.latest_checkpoint
    ):
        best.save(checkpoint_number=initial_epoch)  # killed between the state and the weights

    def train_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        parts = [
            make_train_data(
                config,
                artifact_dir,
                "train",
                config.batch_size,
                repeat=True,
                seed=config.seed,
                input_context=replica,
            )
            for replica in replica_contexts(context)
        ]
        # Resuming replays the stream: skip what the finished epochs consumed, so a
        # resumed run sees exactly the batches of an uninterrupted one.
        return _interleave(parts).skip(initial_epoch * steps * len(parts))

    # One device: the dataset itself; else one input pipeline per worker.
    train_ds = strategy.distribute_datasets_from_function(train_data)
    replicas = strategy.num_replicas_in_sync
    eval_batch = min(config.batch_size, n_eval) // replicas * replicas
    val_ds = None
    if eval_batch >= 2:
        val_ds = make_train_data(config, artifact_dir, "eval", eval_batch, repeat=False, seed=1)
        # The first pass's views and cuts, every epoch and after a resume: one fixed objective.
        # Keras splits each global batch over the replicas; under multi_worker every worker
        # reads all eval users and keeps its replicas' rows (DATA sharding, after the batch),
        # so the validation batches, views included, are those of one device.
        options = tf.data.Options()
        data_sharding = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = data_sharding
        val_ds = val_ds.cache().with_options(options)
    else:
        print(f"{n_eval} eval users: no val_loss, the last epoch is kept", flush=True)
    patience = config.early_stopping_patience if val_ds is not None else 0
    callbacks = [
        tf.keras.callbacks.TerminateOnNaN(),
        _EpochEnd(
            state,
            best,
            epoch,
            progress,
            monitor=MONITOR if val_ds is not None else None,
            patience=patience,
            min_delta=config.min_delta,
        ),
        tf.keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq="epoch"),
    ]
    history = {}
    stop_now = patience_exhausted(progress, initial_epoch, patience)
    if initial_epoch < config.epochs and not stop_now:
        fit = model.fit(
            train_ds,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val_ds,
            callbacks=callbacks,
            verbose=2 if not sys.stdout.isatty() else 1,
        )
        history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
        print(f"final loss {history['loss'][-1]:.8g}", flush=True)
    epochs_done = int(epoch.numpy())
    best_epoch = int(progress.best_epoch.numpy())
    optimizer_steps = int(optimizer.iterations.numpy())  # before the weights restore its own
    if best.latest_checkpoint:  # the best epoch's weights, as every loader gets them
        weights.restore(best.latest_checkpoint).assert_existing_objects_matched()
    best_loss = float(progress.best_loss.numpy())
    if not history.get("loss") or np.isfinite(history["loss"][-1]):
        reason = "patience" if patience_exhausted(progress, epochs_done, patience) else None
        reason = reason or ("max_epochs" if epochs_done >= config.epochs else "interrupted")
    else:
        reason = "nan"
    result = {
        "epochs_completed": epochs_done,
        "max_epochs": config.epochs,
        "stopped_early": epochs_done < config.epochs,
        "stop_reason": reason,
        "monitor": MONITOR if val_ds is not None else None,
        "best_epoch": best_epoch,
        "best_val_loss": best_loss if np.isfinite(best_loss) else None,
        "patience": patience,
        "min_delta": config.min_delta,
        "steps_per_epoch": steps,
        "optimizer_steps": optimizer_steps,
        "users_seen": optimizer_steps * config.batch_size,
        "train_seconds": round(float(progress.train_seconds.numpy()), 2),
        "history": history,
        "final": {k: v[-1] for k, v in history.items()},
        "artifact_dir": artifact_dir,
        "vocab_size": vocab_size,
    }
    print(
        f"kept epoch {best_epoch} of {epochs_done} (val_loss {result['best_val_loss']}; "
        f"stopped: {reason}); {optimizer_steps} steps, {result['users_seen']} users seen",
        flush=True,
    )
    if not is_chief():
        shutil.rmtree(out_dir, ignore_errors=True)
        return result
    if config.probe and int(meta["vocab_sizes"]["genres"]) <= NUM_RESERVED:
        print("favorite-genre probe skipped: the data has no item genres/categories", flush=True)
    elif config.probe:
        width = data_width(config, meta)
        trained = genre_probe(model.encoder, artifact_dir, config.seed, width)
        with strategy.scope():
            fresh = build_encoder(config, vocab_size)
        untrained = genre_probe(fresh, artifact_dir, config.seed, width)
        result["probe"] = {
            "trained": trained,
            "untrained_favorite_genre_accuracy": untrained["favorite_genre_accuracy"],
        }
        print(
            f"favorite-genre probe (eval, {trained['eval_users']} users): trained encoder "
            f"{trained['favorite_genre_accuracy']:.4f}, untrained encoder "
            f"{untrained['favorite_genre_accuracy']:.4f}, majority class "
            f"{trained['majority_accuracy']:.4f}"
        )
    if config.export:
        from bt_tf import export

        item_embeddings = model.item_embeddings() if hasattr(model, "item_embeddings") else None
        result["export_dir"] = export.export_encoder(
            model.encoder,
            bt_input.load_vocab(artifact_dir),
            os.path.join(run_dir, EXPORT_DIR),
            max_len=config.max_len,
            item_embeddings=item_embeddings,
        )
        print(f"exported {result['export_dir']}")
    with open(metrics_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def build_parser(argv=None):
    """The command line of `python -m bt_tf.train` (defaults of the ``--dataset`` in `argv`)."""
    return cfg.build_parser(argv, prog=PROG, description=cli.summary(__doc__))


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = cfg.parse(argv, description=cli.summary(__doc__), prog=PROG)
    if config.strategy == "multi_worker" and "TF_CONFIG" not in os.environ:
        raise UserError("--strategy=multi_worker needs TF_CONFIG describing the cluster")
    return train(dataclasses.replace(config))


if __name__ == "__main__":
    cli.run_main(main)
