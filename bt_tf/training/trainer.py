"""`train(config)`: pretrain a user-sequence encoder, in the steps of a TF Model Garden task.

    train(config)  =  prepare_run  ->  build_model  ->  build_inputs  ->  fit  ->  finish

* `prepare_run`: seeds, the run directory (resume checks, config.json), the
  strategy and precision, the artifacts' sizes;
* `build_model`: the model `config.model` names, its optimizer and the
  checkpoints, restored when the run is resumed;
* `build_inputs`: the train stream (the users of ``config.train_splits``, one
  shard per replica, skipping what the finished epochs consumed) and the fixed
  validation batches (eval users);
* `fit`: Keras ``fit`` with early stopping on ``val_loss`` (`bt_tf.training.progress`);
* `finish`: the best epoch's weights, metrics.json, the favorite-genre probe, the export.

Trains until the validation objective (``val_loss``: the model's loss on eval
users, on views and cuts fixed by the seed) has not improved by ``min_delta``
(relative) for ``early_stopping_patience`` epochs, at most ``epochs`` epochs
(see `bt_tf.training.config`). The run directory is described in `bt_tf.runs`.
``checkpoints/`` holds THE run's weights: those of the epoch with the lowest
val_loss, the only weights that metrics.json, export/, `bt_tf.evaluate`,
`bt_tf.export`, the tuner and `bt_tf.reproduce` ever use. Without eval users
(fewer than 2) there is no val_loss: every epoch counts as the best, so the
last one is kept.

Started again with the same config, a killed run continues from its last
epoch, on exactly the batches it would have seen, with the same early-stopping
state; a finished run (stopped early, or at the cap) is not retrained (raise
``epochs`` to train a run that hit the cap further).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import atomic, distribute, runs
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_items
from bt_tf.errors import UserError
from bt_tf.features import ITEMS, NUM_RESERVED, VIEW1, VIEW2
from bt_tf.modeling import precision
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.dual_encoder import DualEncoderModel, JointModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import build_projector
from bt_tf.serving.export import export_encoder
from bt_tf.training import validation
from bt_tf.training.config import (
    FULL_SOFTMAX_MAX_BYTES,
    RESUMABLE_CHANGES,
    VAL_NDCG,
    TrainConfig,
    comparable_settings,
)
from bt_tf.training.genre_probe import genre_probe
from bt_tf.training.progress import (
    EpochEnd,
    Progress,
    dropout_rng,
    monitor_mode,
    patience_exhausted,
)
from bt_tf.training.validation import NextItemValidation
from pipelines import preprocess

# --------------------------------------------------------------------------
# Model and data (also used by the tuner and the benchmarks)


# Keras' default Embedding init is RandomUniform(-0.05, 0.05): its per-column RMS,
# 0.05 / sqrt(3) ~ 0.029, is the scale the SVD item factors are brought to, so the
# encoder sees inputs of the size it was designed (and its learning rate tuned) for.
_KERAS_EMBEDDING_RMS = 0.05 / np.sqrt(3.0)


def svd_item_factors(
    values: np.ndarray, row_lengths: np.ndarray, vocab_size: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``--item_init=svd``'s item table: ``(factors [vocab_size, k], rows [vocab_size])``.

    ``values``/``row_lengths``: the pretraining users' histories (flat item ids and
    each history's length). ``factors`` are the item factors ``components_.T`` of a
    rank-``k`` truncated SVD (``k = min(dim, min(n, V) - 1)``, seeded by ``seed``) of
    their binary user x item matrix, the `svd` floor's code
    (`bt_tf.evaluation.contenders.truncated_svd`), each column scaled to the RMS of
    Keras' default embedding init over the rows it sets. ``rows``: the rows it sets,
    the real items (ids >= NUM_RESERVED) that some history holds; the reserved ids
    (pad, mask, OOV) and items no history holds keep their random init.
    """
    from bt_tf.evaluation.contenders import interaction_matrix, truncated_svd

    matrix = interaction_matrix(values, vocab_size, row_lengths)
    factors = np.asarray(truncated_svd(matrix, dim, seed=seed).components_.T, np.float64)
    rows = np.asarray(matrix.getnnz(axis=0) > 0)
    rms = np.sqrt(np.mean(np.square(factors[rows]), axis=0))
    factors *= _KERAS_EMBEDDING_RMS / np.where(rms > 0, rms, 1.0)
    return factors.astype(np.float32), rows


def svd_item_table(
    config: TrainConfig, artifact_dir: str, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`svd_item_factors` of the histories the encoder trains on (``config.train_splits``:
    ``--train_users``), never their future items."""
    values, row_lengths = dataset.train_histories(artifact_dir, split=config.train_splits)
    return svd_item_factors(values, row_lengths, vocab_size, config.encoder.dim, config.seed)


def build_encoder(
    config: TrainConfig, vocab_size: int, item_table: tuple[np.ndarray, np.ndarray] | None = None
) -> SequenceEncoder:
    """A fresh encoder; ``item_table`` (`svd_item_factors`) overwrites the rows and columns
    of its input item table that it sets; ``config.freeze_item_embeddings`` freezes it."""
    encoder = SequenceEncoder(**config.encoder_kwargs(vocab_size), name="encoder")
    if item_table is not None:
        factors, rows = item_table
        encoder(tf.fill([1, 1], NUM_RESERVED), training=False)  # create the variables
        table = encoder.item_embedding.embeddings
        values = table.numpy()
        values[rows, : factors.shape[1]] = factors[rows]
        table.assign(values)
    if config.freeze_item_embeddings:
        encoder.item_embedding.trainable = False
    return encoder


def make_model(config: TrainConfig, vocab_size: int, artifact_dir: str | None = None):
    """The model `config.model` names, around a fresh encoder (call inside the strategy scope).

    ``artifact_dir``: the data, read for ``--item_init=svd`` (required then).
    """
    item_table = None
    if config.item_init == "svd":
        if artifact_dir is None:
            raise ValueError("--item_init=svd needs the artifact_dir of the histories")
        item_table = svd_item_table(config, artifact_dir, vocab_size)
    encoder = build_encoder(config, vocab_size, item_table)
    if not config.uses_de:
        return BarlowTwinsModel(encoder, build_projector(config.projector), lambd=config.lambd)
    loss = config.resolved_de_loss(vocab_size)
    logits_bytes = config.full_softmax_bytes(vocab_size)
    if loss == "full_softmax" and logits_bytes > FULL_SOFTMAX_MAX_BYTES:
        # TensorFlow's CPU kernels have crashed (SIGSEGV) at 256 x 96 x 50k logits.
        logging.warning(
            "--de_loss=full_softmax: one step's logits are up to %.1f GiB (%d users x %d "
            "positions x %d items); --de_loss=sampled_softmax or a smaller --batch_size "
            "keeps memory bounded",
            logits_bytes / 2**30,
            config.batch_size,
            config.max_len,
            vocab_size,
        )
    item_counts = None
    if loss == "sampled_softmax" and config.negatives == "popularity":
        if artifact_dir is None:
            raise ValueError("--negatives=popularity needs the artifact_dir of the histories")
        values, _ = dataset.train_histories(artifact_dir, split=config.train_splits)
        item_counts = np.bincount(values, minlength=vocab_size)[:vocab_size]
    de_kwargs = dict(
        vocab_size=vocab_size,
        temperature=config.temperature,
        loss=loss,
        num_negatives=config.num_negatives,
        negatives=config.negatives,
        item_counts=item_counts,
        tie_embeddings=config.tie_item_embeddings,
        num_candidates=config.de_candidates or None,
        logq_correction=config.de_logq,
        seed=config.seed,
    )
    if not config.uses_bt:
        return DualEncoderModel(encoder, **de_kwargs)
    return JointModel(
        encoder,
        build_projector(config.projector),
        lambd=config.lambd,
        bt_weight=config.bt_weight,
        **de_kwargs,
    )


def data_width(config: TrainConfig, meta: dict) -> int:
    """History width of the batches: `max_len`, or less when no history is that long."""
    return min(config.max_len, int(meta.get("max_history_len") or config.max_len))


def make_train_data(
    config: TrainConfig,
    artifact_dir: str,
    split: str | Sequence[str],
    batch_size: int,
    *,
    repeat: bool,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches in the layout the model's `train_step` reads.

    ``split``: ``"eval"`` gives the validation batches (in file order); any other
    split, or several read as one (``config.train_splits``, `dataset.split_names`),
    gives shuffled training batches. ``batch_size`` is the global batch. With an
    ``input_context`` (see `bt_tf.distribute.replica_contexts`) this is one input
    pipeline's share: its users, in batches of ``batch_size / num_replicas_in_sync``,
    with views and cuts drawn from stateless seeds that include the pipeline's id,
    so that every worker (or replica) draws its own.
    """
    policy = config.augment if config.uses_bt else None
    outputs = [ITEMS] + ([VIEW1, VIEW2] if policy else [])
    ds = dataset.make_dataset(
        artifact_dir,
        split,
        batch_size,
        max_len=data_width(config, dataset.load_metadata(artifact_dir)),
        shuffle=split != "eval",
        seed=seed,
        repeat=repeat,
        drop_remainder=True,  # BT standardizes over the batch: keep it full and static
        augment_policy=policy,
        # substitute/insert views draw from the co-occurrence table of the TRAIN split
        # (`dataset.cooccurrence_table`), also when the encoder trains on every split.
        input_context=input_context,
        outputs=outputs,
        bucket_boundaries=config.buckets,
        cache=bool(config.cache_input),
        # the item a history/future DE validates on is never trained on
        hold_out=config.hold_out if split != "eval" else 0,
    )
    # The DE reads the histories themselves: every position is a next-item pair.
    keep = set(outputs[1:]) | ({ITEMS} if config.uses_de else set())
    return ds.map(lambda b: {k: v for k, v in b.items() if k in keep})


# --------------------------------------------------------------------------
# The steps of `train`


def ensure_artifacts(config: TrainConfig) -> str:
    """Preprocesses on the chief when needed; other workers wait for the chief's artifacts."""
    if distribute.is_chief():
        return preprocess.preprocess(config.data)
    path = preprocess.artifact_dir(config.data)
    while not tf.io.gfile.exists(os.path.join(path, "metadata.json")):
        time.sleep(2)
    return path


@dataclasses.dataclass(frozen=True)
class Run:
    """A prepared run: where it writes, what it reads, how it is distributed."""

    config: TrainConfig
    out_dir: str  # the run dir on the chief, a scratch dir on other workers
    artifact_dir: str
    meta: dict
    strategy: tf.distribute.Strategy
    steps: int  # optimizer steps per epoch

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_sizes"]["items"])

    @property
    def num_eval_users(self) -> int:
        return int(self.meta["num_users"]["eval"])


def _check_batch(config: TrainConfig, num_train: int, replicas: int) -> None:
    if num_train < config.batch_size:
        users = "train users" if config.train_users == "train" else "users of all splits"
        raise UserError(f"--batch_size={config.batch_size} is larger than the {num_train} {users}")
    if config.batch_size % replicas:
        raise UserError(
            f"--batch_size={config.batch_size} does not split evenly over the {replicas} replicas"
        )


def _recorded_metrics(run_dir: str) -> dict | None:
    """metrics.json, or None when it is missing or unreadable (it is rebuilt from the
    checkpoints and history.csv then: nothing in it is lost)."""
    try:
        return runs.read_metrics(run_dir)
    except runs.UnreadableRunFile as err:
        print(f"notice: {err.file} is unreadable ({err.problem}); rebuilding it", flush=True)
        return None


def prepare_run(config: TrainConfig, artifact_dir: str | None = None) -> Run | dict:
    """Seeds, checks and sets up the run; a finished run's metrics.json content instead."""
    tf.keras.utils.set_random_seed(config.seed)
    # Dropout draws from tf.random.Generator state that lives in the model's
    # variables, so a checkpoint carries it and a resumed run replays exactly.
    tf.keras.backend.experimental.enable_tf_random_generator()
    run_dir = config.run_dir
    out_dir = distribute.worker_dir(run_dir)
    os.makedirs(out_dir, exist_ok=True)
    runs.check_resumable(
        run_dir, config.to_json(), comparable=comparable_settings, resumable=RESUMABLE_CHANGES
    )
    done = _recorded_metrics(run_dir)
    if runs.is_complete(done, config.epochs):
        print(f"{run_dir} is complete; reusing it (raise --max_epochs to train on)", flush=True)
        return done
    strategy = distribute.make_strategy(config.strategy)
    precision.set_precision(config.mixed_precision)
    artifact_dir = artifact_dir or ensure_artifacts(config)
    meta = dataset.load_metadata(artifact_dir)
    num_train = config.num_train_users(meta["num_users"])  # --train_users: one split or all
    _check_batch(config, num_train, strategy.num_replicas_in_sync)
    run = Run(config, out_dir, artifact_dir, meta, strategy, config.steps_for(num_train))
    if distribute.is_chief():
        derived = {  # what `python -m bt_tf.export --run_dir` needs to rebuild the encoder
            "artifact_dir": artifact_dir,
            "max_len": config.max_len,
            "encoder": config.encoder_kwargs(run.vocab_size),
        }
        runs.write_config(run_dir, config.to_json(), derived)
    return run


@dataclasses.dataclass(frozen=True)
class ModelState:
    """The model, its optimizer, and the checkpoints that hold them."""

    model: tf.keras.Model
    optimizer: tf.keras.optimizers.Optimizer
    epoch: tf.Variable  # epochs completed
    progress: Progress
    weights: tf.train.Checkpoint  # the model alone (checkpoints/)
    state: tf.train.CheckpointManager  # train_state/: everything, last epoch
    best: tf.train.CheckpointManager  # checkpoints/: the weights, best epoch
    initial_epoch: int  # epochs completed before this session


def _compile(run: Run) -> tuple[tf.keras.Model, tf.keras.optimizers.Optimizer]:
    """A fresh compiled model and its optimizer (inside the strategy scope)."""
    config = run.config
    model = make_model(config, run.vocab_size, run.artifact_dir)
    optimizer = precision.optimizer_for_policy(tf.keras.optimizers.Adam(config.learning_rate))
    # XLA cannot compile a step that reads other replicas' variables (MirroredStrategy).
    jit = config.jit_compile and run.strategy.num_replicas_in_sync == 1
    if config.jit_compile and not jit:
        print("--jit_compile ignored: XLA steps need a single replica", flush=True)
    model.compile(
        optimizer=optimizer, jit_compile=jit, steps_per_execution=config.steps_per_execution
    )
    return model, optimizer


def _restore_state(checkpoint, state, out_dir: str, progress: Progress) -> None:
    """Restores the last epoch's state (or a run from before `runs.STATE_DIR`), if any."""
    if state.latest_checkpoint:
        checkpoint.restore(state.latest_checkpoint)
        print(f"resumed from {state.latest_checkpoint}", flush=True)
        return
    legacy = tf.train.latest_checkpoint(os.path.join(out_dir, runs.CHECKPOINT_DIR))
    if legacy and runs.is_full_state(legacy):
        # Its last epoch is the best known: the epochs before left no val record.
        checkpoint.restore(legacy).expect_partial()
        progress.best_epoch.assign(runs.checkpoint_number(legacy))
        progress.ref_epoch.assign(runs.checkpoint_number(legacy))
        print(f"resumed from {legacy} (a run from before {runs.STATE_DIR}/)", flush=True)


# Encoder settings that may differ between a run and the run it starts from (--init_from):
# the weights are the same; causal attention only masks them differently.
_INIT_FROM_FREE = ("causal", "pooling", "dropout")


def init_encoder_from(encoder, source_dir: str, run: Run) -> None:
    """Overwrites ``encoder``'s weights with those of the run in ``source_dir`` (its best
    epoch's, as every loader gets them): same sizes and the same item vocabulary, else a
    `UserError` that says what differs."""
    source_config = runs.read_config(source_dir)
    if runs.read_metrics(source_dir) is None:  # written when a run finishes
        raise UserError(f"--init_from={source_dir}: that run has not finished training")
    theirs, ours = source_config.get("encoder", {}), run.config.encoder_kwargs(run.vocab_size)
    differ = sorted(k for k in ours if k not in _INIT_FROM_FREE and theirs.get(k) != ours[k])
    if differ:
        pairs = ", ".join(f"{k}={theirs.get(k)} (here {ours[k]})" for k in differ)
        raise UserError(f"--init_from={source_dir}: its encoder differs: {pairs}")
    if dataset.load_vocab(source_config["artifact_dir"]) != dataset.load_vocab(run.artifact_dir):
        raise UserError(
            f"--init_from={source_dir}: its item vocabulary ({source_config['artifact_dir']}) "
            f"is not this run's ({run.artifact_dir}): item ids would mean other items"
        )
    path = runs.latest_checkpoint(source_dir)
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder)).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    print(f"encoder initialised from {path}", flush=True)


def build_model(run: Run) -> ModelState:
    """The compiled model and its checkpoints, restored to where a killed run stopped."""
    with run.strategy.scope():
        model, optimizer = _compile(run)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        progress = Progress()
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            dropout_rng=dropout_rng(model),
            progress=progress,
        )
        weights = tf.train.Checkpoint(model=model)
    out_dir = run.out_dir
    state = tf.train.CheckpointManager(
        checkpoint, os.path.join(out_dir, runs.STATE_DIR), max_to_keep=2
    )
    best = tf.train.CheckpointManager(
        weights, os.path.join(out_dir, runs.CHECKPOINT_DIR), max_to_keep=1
    )
    _restore_state(checkpoint, state, out_dir, progress)
    initial_epoch = int(epoch.numpy())
    if run.config.init_from and not initial_epoch:  # a fresh start (a resume has its weights)
        init_encoder_from(model.encoder, run.config.init_from, run)
    if initial_epoch and int(progress.best_epoch.numpy()) > runs.checkpoint_number(
        best.latest_checkpoint
    ):
        best.save(checkpoint_number=initial_epoch)  # killed between the state and the weights
    return ModelState(model, optimizer, epoch, progress, weights, state, best, initial_epoch)


@dataclasses.dataclass(frozen=True)
class Inputs:
    train: tf.distribute.DistributedDataset | tf.data.Dataset
    val: tf.data.Dataset | None  # None without enough eval users for one batch
    # leave_one_out with an item side: the validation item's ranking (else None)
    next_item: NextItemValidation | None = None


def _val_data(run: Run) -> tf.data.Dataset | None:
    config = run.config
    replicas = run.strategy.num_replicas_in_sync
    eval_batch = min(config.batch_size, run.num_eval_users) // replicas * replicas
    if eval_batch < 2:
        if config.monitor == "val_loss":
            print(f"{run.num_eval_users} eval users: no val_loss, the last epoch is kept")
        return None
    val = make_train_data(config, run.artifact_dir, "eval", eval_batch, repeat=False, seed=1)
    # The first pass's views and cuts, every epoch and after a resume: one fixed objective.
    # Keras splits each global batch over the replicas; under multi_worker every worker
    # reads all eval users and keeps its replicas' rows (DATA sharding, after the batch),
    # so the validation batches, views included, are those of one device.
    options = tf.data.Options()
    data_sharding = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = data_sharding
    return val.cache().with_options(options)


def build_inputs(run: Run, initial_epoch: int) -> Inputs:
    """The train stream from where the finished epochs left it, and the validation batches."""
    config = run.config

    def train_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        parts = [
            make_train_data(
                config,
                run.artifact_dir,
                config.train_splits,
                config.batch_size,
                repeat=True,
                seed=config.seed,
                input_context=replica,
            )
            for replica in distribute.replica_contexts(context)
        ]
        # Resuming replays the stream: skip what the finished epochs consumed, so a
        # resumed run sees exactly the batches of an uninterrupted one.
        return distribute.interleave(parts).skip(initial_epoch * run.steps * len(parts))

    # One device: the dataset itself; else one input pipeline per worker.
    return Inputs(
        run.strategy.distribute_datasets_from_function(train_data),
        _val_data(run),
        _next_item_validation(run),
    )


def _next_item_validation(run: Run) -> NextItemValidation | None:
    """A model with an item side: each epoch, every trained user's validation item ranked
    (leave-one-out: item n-1; history/future: the last history item, held out of training)."""
    config = run.config
    if config.monitor != VAL_NDCG:
        return None
    sequences = dataset.read_sequences(run.artifact_dir, config.train_splits)
    if config.leave_one_out:
        cases = validation.leave_one_out_cases(sequences, "val", config.max_len, run.vocab_size)
    else:
        cases = validation.last_history_item_cases(sequences, config.max_len, run.vocab_size)
    return NextItemValidation(cases, seed=config.seed)


def _monitor(run: Run, inputs: Inputs) -> str | None:
    """What judges the epochs (`TrainConfig.monitor`), None when nothing validates."""
    monitor = run.config.monitor
    if monitor.startswith("val_ndcg"):
        return monitor if inputs.next_item is not None and inputs.next_item.num_users else None
    return monitor if inputs.val is not None else None


def _patience(run: Run, inputs: Inputs) -> int:
    return run.config.early_stopping_patience if _monitor(run, inputs) else 0


def fit(run: Run, built: ModelState, inputs: Inputs) -> dict[str, list[float]]:
    """Trains up to the epoch cap or early stop; the Keras history of this session."""
    config, patience, monitor = run.config, _patience(run, inputs), _monitor(run, inputs)
    if built.initial_epoch >= config.epochs or patience_exhausted(
        built.progress, built.initial_epoch, patience
    ):
        return {}
    epoch_end = EpochEnd(
        built.state,
        built.best,
        built.epoch,
        built.progress,
        monitor=monitor,
        patience=patience,
        min_delta=config.min_delta,
        mode=monitor_mode(monitor or "val_loss"),
    )
    logs = os.path.join(run.out_dir, runs.LOGS_DIR)
    # The validation item's figures enter the epoch's logs before anything reads them.
    validation = [inputs.next_item] if inputs.next_item is not None else []
    # Each epoch's row goes to history.csv BEFORE EpochEnd checkpoints the epoch: a kill
    # in between replays that epoch, whose row `runs.trim_history` then drops.
    runs.trim_history(run.out_dir, built.initial_epoch)
    history_csv = runs.path(run.out_dir, runs.HISTORY_FILE)
    callbacks = [
        tf.keras.callbacks.TerminateOnNaN(),
        *validation,
        tf.keras.callbacks.CSVLogger(history_csv, append=True),
        epoch_end,
        tf.keras.callbacks.TensorBoard(logs, update_freq="epoch"),
    ]
    history = built.model.fit(
        inputs.train,
        epochs=config.epochs,
        initial_epoch=built.initial_epoch,
        steps_per_epoch=run.steps,
        validation_data=inputs.val,
        callbacks=callbacks,
        verbose=2 if not sys.stdout.isatty() else 1,
    )
    out = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    print(f"final loss {out['loss'][-1]:.8g}", flush=True)
    return out


def _stop_reason(run: Run, built: ModelState, patience: int, history: dict) -> str:
    if history.get("loss") and not np.isfinite(history["loss"][-1]):
        return "nan"
    epochs_done = int(built.epoch.numpy())
    if patience_exhausted(built.progress, epochs_done, patience):
        return "patience"
    return "max_epochs" if epochs_done >= run.config.epochs else "interrupted"


def summarize(run: Run, built: ModelState, inputs: Inputs, history: dict) -> dict:
    """metrics.json's content (without the probe and export entries).

    ``history``: every epoch's metrics across resumes, from history.csv
    (`runs.read_history`); ``history`` (this session's) is used only for a run
    directory without one.
    """
    config, progress, patience = run.config, built.progress, _patience(run, inputs)
    epochs_done = int(built.epoch.numpy())
    history = runs.read_history(run.out_dir, epochs_done) or history
    optimizer_steps = int(built.optimizer.iterations.numpy())
    monitor = _monitor(run, inputs)
    best = float(progress.best_loss.numpy())  # lower-is-better (`Progress`)
    best = (
        (best if monitor_mode(monitor or "val_loss") == "min" else -best)
        if np.isfinite(best)
        else None
    )
    return {
        "protocol": config.protocol,
        "epochs_completed": epochs_done,
        "max_epochs": config.epochs,
        "stopped_early": epochs_done < config.epochs,
        "stop_reason": _stop_reason(run, built, patience, history),
        "monitor": monitor,
        "best_epoch": int(progress.best_epoch.numpy()),
        "best_value": best,
        "best_val_loss": best if monitor == "val_loss" else None,
        "patience": patience,
        "min_delta": config.min_delta,
        "steps_per_epoch": run.steps,
        "optimizer_steps": optimizer_steps,
        "users_seen": optimizer_steps * config.batch_size,
        "train_seconds": round(float(progress.train_seconds.numpy()), 2),
        "history": history,
        "final": {k: v[-1] for k, v in history.items()},
        "artifact_dir": run.artifact_dir,
        "vocab_size": run.vocab_size,
    }


def _probe(run: Run, encoder) -> dict | None:
    """The favorite-genre probe of the trained and of an untrained encoder (None: no genres)."""
    config = run.config
    if int(run.meta["vocab_sizes"]["genres"]) <= NUM_RESERVED:
        print("favorite-genre probe skipped: the data has no item genres/categories", flush=True)
        return None
    width = data_width(config, run.meta)
    trained = genre_probe(encoder, run.artifact_dir, config.seed, width)
    with run.strategy.scope():  # Keras' random init, also under --item_init=svd
        fresh = build_encoder(config, run.vocab_size)
    untrained = genre_probe(fresh, run.artifact_dir, config.seed, width)
    print(
        f"favorite-genre probe (eval, {trained['eval_users']} users): trained encoder "
        f"{trained['favorite_genre_accuracy']:.4f}, untrained encoder "
        f"{untrained['favorite_genre_accuracy']:.4f}, majority class "
        f"{trained['majority_accuracy']:.4f}"
    )
    return {
        "trained": trained,
        "untrained_favorite_genre_accuracy": untrained["favorite_genre_accuracy"],
    }


def _export(run: Run, model: tf.keras.Model) -> str:
    config = run.config
    item_embeddings = model.item_embeddings() if config.uses_de else None
    path = export_encoder(
        model.encoder,
        dataset.load_vocab(run.artifact_dir),
        os.path.join(config.run_dir, runs.EXPORT_DIR),
        max_len=config.max_len,
        item_embeddings=item_embeddings,
    )
    print(f"exported {path}")
    return path


def finish(run: Run, built: ModelState, inputs: Inputs, history: dict) -> dict:
    """Restores the best epoch's weights; summary, probe, export, metrics.json."""
    result = summarize(run, built, inputs, history)  # before the weights restore their step
    if built.best.latest_checkpoint:  # the best epoch's weights, as every loader gets them
        built.weights.restore(built.best.latest_checkpoint).assert_existing_objects_matched()
    print(
        f"kept epoch {result['best_epoch']} of {result['epochs_completed']} ("
        f"{result['monitor']} {result['best_value']}; stopped: {result['stop_reason']}); "
        f"{result['optimizer_steps']} steps, {result['users_seen']} users seen",
        flush=True,
    )
    if not distribute.is_chief():
        shutil.rmtree(run.out_dir, ignore_errors=True)
        return result
    config = run.config
    probe = None
    if config.probe and config.leave_one_out:
        print("favorite-genre probe skipped: leave_one_out has no eval users", flush=True)
    elif config.probe:
        probe = _probe(run, built.model.encoder)
    if probe is not None:
        result["probe"] = probe
    if config.export:
        result["export_dir"] = _export(run, built.model)
    if config.leave_one_out and config.uses_de and config.score_test:
        result["recommender"] = _recommender(run, built, inputs, result)
    runs.write_metrics(config.run_dir, result)
    return result


def _recommender(run: Run, built: ModelState, inputs: Inputs, result: dict) -> dict:
    """Leave-one-out: the test item ranked by the kept epoch's towers, written to
    ``RUN/recommender.json`` (`bt_tf.evaluation.recommender.score_cases`); its headline
    figures, for metrics.json."""
    from bt_tf.evaluation import recommender  # scipy and the evaluation stack: only here

    start = time.perf_counter()
    config, model = run.config, built.model
    sequences = dataset.read_sequences(run.artifact_dir, config.train_splits)
    item_emb = model.item_embeddings().numpy()
    cases = recommender.leave_one_out_cases(sequences, config.max_len, len(item_emb))
    user_emb = embed_items(model.encoder, cases.inputs)
    scored = recommender.score_cases(user_emb, item_emb, cases, seed=config.seed)
    report = {
        "run_dir": config.run_dir,
        "model": config.model,
        **scored,
        "epochs": result["epochs_completed"],
        "best_epoch": result["best_epoch"],
        "train_s": result["train_seconds"],
        "wall_s": round(result["train_seconds"] + time.perf_counter() - start, 2),
        "reference": recommender.SASREC_REFERENCES,
    }
    atomic.write_json(os.path.join(config.run_dir, recommender.JSON_FILE), report, indent=1)
    full, sampled = scored["full"], scored["sampled"]

    def line(block: dict) -> str:
        cells = (f"{k.upper()} {recommender.interval_cell(block, k)}" for k in ("hr@10", "ndcg@10"))
        return ", ".join(cells)

    print(
        f"leave-one-out test ({scored['n_users']} users): full ranking {line(full)}; "
        f"sampled (100 unrated negatives) {line(sampled)}",
        flush=True,
    )
    return {"full": full, "sampled": sampled, "n_users": scored["n_users"]}


def train(config: TrainConfig, artifact_dir: str | None = None) -> dict:
    """Trains (resuming), probes, exports; returns metrics.json's content.

    ``artifact_dir``: the preprocessed data; None preprocesses ``config.data``
    first when its artifacts are missing (`ensure_artifacts`). The model in
    memory after training, the probe, the export, and ``checkpoints/`` all hold
    the weights of ``metrics["best_epoch"]``.
    """
    # One training process per run directory (`runs.lock`); only the chief writes there.
    with runs.lock(config.run_dir, chief=distribute.is_chief()):
        run = prepare_run(config, artifact_dir)
        if isinstance(run, dict):  # finished before
            return run
        built = build_model(run)
        inputs = build_inputs(run, built.initial_epoch)
        history = fit(run, built, inputs)
        return finish(run, built, inputs, history)
