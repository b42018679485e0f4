"""Everything about replicas and workers: collectives, strategies, the chief, input sharding.

Inside a replica step (`strategy.run`): `replica_context`, `num_replicas`,
`all_sum`, `gather_global`. Around training: `make_strategy` (the
``--strategy`` flag), `is_chief` / `worker_dir` (TF_CONFIG), and
`replica_contexts` / `interleave`, which decide how the global batch is
formed from per-replica shards (see `replica_contexts`).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.errors import UserError
from bt_tf.features import PAD_ID

# --------------------------------------------------------------------------
# Inside a replica step


def replica_context():
    """The replica context when running on several replicas, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas() -> int:
    """Replicas in sync (1 outside a replica context)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def all_sum(values):
    """SUM over replicas inside a multi-replica context; the identity otherwise."""
    ctx = replica_context()
    if ctx is None:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def gather_global(ctx, targets: tf.Tensor) -> tf.Tensor:
    """All-gathers `[b, L]` int ids over replicas: the global batch, replica 0 first.

    Every replica gets the same array (the rows in global-batch order), so
    candidates drawn from it with a shared seed are the same everywhere and
    the same as on one device. int64: collectives refuse a mix of host-memory
    (int32) and device tensors. Replicas may hold batches of different widths
    (length-bucketed input): each pads its rows with `PAD_ID` (never a
    candidate) to the widest replica's width first; a static width means
    fixed-width batches, the same on every replica, and skips that exchange.
    Returns int32.
    """
    targets = tf.cast(targets, tf.int64)
    if targets.shape[1] is not None:
        return tf.cast(ctx.all_gather(targets, axis=0), tf.int32)
    width = tf.shape(targets, out_type=tf.int64)[1]
    widest = tf.reduce_max(ctx.all_gather(tf.reshape(width, [1]), axis=0))
    targets = tf.pad(targets, [[0, 0], [0, widest - width]], constant_values=PAD_ID)
    return tf.cast(ctx.all_gather(targets, axis=0), tf.int32)


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


def task() -> tuple[str, int]:
    """(task type, index) from TF_CONFIG; ("chief", 0) on a single machine."""
    spec = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return spec.get("type", "chief"), int(spec.get("index", 0))


def is_chief() -> bool:
    kind, index = task()
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        return kind == "chief"
    return kind in ("chief", "worker") and index == 0


def worker_dir(run_dir: str) -> str:
    """Where this task writes: the run dir on the chief, a scratch dir on other workers."""
    if is_chief():
        return run_dir
    kind, index = task()
    return os.path.join(run_dir, ".workers", f"{kind}-{index}")


# --------------------------------------------------------------------------
# Input sharding


def replica_contexts(context: tf.distribute.InputContext) -> list[tf.distribute.InputContext]:
    """The input contexts of the replicas that one input pipeline feeds, one per replica.

    How the global batch is formed: training reads one shard of the train users
    per REPLICA. Replica r of R reads shard r (`bt_tf.data.dataset.make_dataset`
    with ``InputContext(R, r, R)``) in batches of batch_size / R and draws its
    views and next-item cuts from stateless seeds that include r, so no two
    replicas, and no two workers, share augmentation draws. The pipeline of a
    worker with L local replicas (pipeline p of P, L = R / P) feeds replicas
    p·L ... p·L+L-1: it builds their shards and interleaves their batches, since
    a worker's replicas take its pipeline's batches in turn. The global batches
    depend on R only: two single-replica workers (``multi_worker``) and one
    machine with two replicas (``mirrored``) train on the same batches.
    """
    total = context.num_replicas_in_sync
    local = total // context.num_input_pipelines
    first = context.input_pipeline_id * local
    return [tf.distribute.InputContext(total, first + i, total) for i in range(local)]


def interleave(parts: list[tf.data.Dataset]) -> tf.data.Dataset:
    """Batch 0 of each part in turn, then batch 1 of each, ..."""
    if len(parts) == 1:
        return parts[0]
    turns = tf.data.Dataset.range(len(parts)).repeat()
    return tf.data.Dataset.choose_from_datasets(parts, turns)
