"""Downstream evaluation of trained runs: `python -m bt_tf.evaluate`.

    python -m bt_tf.evaluate --runs=runs/ml1m_bt,runs/ml1m_de \\
        --label_fractions=0.01,0.05,0.1,0.25,1.0 --seeds=3 --output_dir=runs/ml1m_report

For every run: the encoder is restored from its checkpoint (``RUN/checkpoints/``:
the weights of its best val_loss epoch, `metrics.json`'s ``best_epoch``) and frozen;
train/eval/test users are embedded; linear probes (`bt_tf.probes`) are trained
on a seeded fraction f of TRAIN users' labels, their L2 strength and stopping
epoch chosen on the same fraction f of EVAL users (at least
``--min_selection_users``; scarce labels are scarce for selection too), and
scored once on TEST users. Probes start from the prior (majority-class)
predictor and leave it only when a candidate beats it by more than
``--probe_se_rule`` standard errors on those eval users. Writes `report.md`,
`results.json` and PNG plots (`bt_tf.report.write_report`) to `--output_dir`.

Tasks (labels from each user's future, i.e. the interactions after the
history the encoder sees):

``next_item``
    the first future item, ranked over the FULL catalog (HR@k, NDCG@k, no
    sampled negatives); the items of the user's (max_len-truncated) history
    are excluded from the ranking (``--exclude_history``, default on: in
    MovieLens a user rates a movie once). Same rule for every model and floor.
``favorite_genre``
    the most frequent genre/category among the future items (ties -> the
    genre most frequent in train); accuracy and balanced accuracy.
``liked_item``
    for each future (user, item): rating >= ``--liked_threshold`` (4)? The
    probe sees the user embedding and the model's item embedding: the BT
    encoder's input embedding table, the DE (and BT+DE) item tower; accuracy
    and AUC.
``attr_<name>``
    user attributes where the data has them (synthetic ``segment``, ML-1M
    ``gender``/``age``); accuracy and balanced accuracy.

Floors, computed once per artifact dir (every run evaluated together must
share it): ``majority`` (majority class of the sampled train labels),
``popularity`` (next item: train-history counts), ``bag_of_items`` (the same
probes on L2-normalized history item counts; a seeded Gaussian random
projection to ``--bag_projection_dim`` when the catalog exceeds
``--bag_projection_above`` items), and ``untrained`` (an encoder of the same
architecture, freshly initialized with the run's seed).

Cost. One probe per (model, task, fraction, seed); the whole L2 grid trains
at once, probes stop early, and `bt_tf.probes.train_softmax_probe` skips the
work that cannot change a result (classes that are no train label share one
weight column, stopped grid members leave the stacked weights, sparse
features multiply as CSR matrices). `python -m benchmarks.evaluate` measures
one run's full evaluation (6k users with ML-1M-like history lengths, 3.5k
items, 18 genres, 4 tasks, 5 fractions x 3 seeds, every floor) per stage:
~280 s of CPU time in all, ~130 s of it the bag-of-items next-item probe,
which alone took ~340 s of CPU per seed at fraction 1.0 before (same
results). Each stage's wall and CPU time is logged and written to
``<output_dir>/timings.json``. Cheaper: fewer ``--label_fractions`` or
``--seeds``, ``--l2_grid=1e-3``, ``--probe_max_epochs=30``, or ``--no-floors``
when the floors are already known.

Caches (``--cache``, on by default), in ``<output_dir>/cache/``: every run's
and the untrained encoder's user and item embeddings
(``embeddings/<model>.npz``), computed once and reused by every (task,
fraction, seed) and every rerun while the run's latest checkpoint (its path
and the checksums in its ``.index`` file) and the data (metadata, width, user
ids) are unchanged; and the result rows per (model, task, fraction, seed),
reused while the checkpoint and the evaluation settings are unchanged, so an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow is imported: quiet unless --verbose

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import resource
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import export, probes, report
from bt_tf import features as F
from bt_tf import input as bt_input
from bt_tf.embeddings import embed_split
from bt_tf.errors import UserError

__all__ = [
    "DEFAULT_TASKS",
    "EvalData",
    "EvalSettings",
    "available_tasks",
    "load_eval_data",
    "run_names",
    "restore_run",
    "embed_users",
    "checkpoint_fingerprint",
    "data_fingerprint",
    "cached_embeddings",
    "evaluate_features",
    "floor_rows",
    "evaluate_runs",
    "main",
]

NEXT_ITEM = probes.NEXT_ITEM
FAVORITE_GENRE = "favorite_genre"
LIKED_ITEM = probes.LIKED_ITEM
DEFAULT_TASKS = (NEXT_ITEM, FAVORITE_GENRE, LIKED_ITEM)  # + every attr_<name> of the data
SPLITS = F.SPLITS
CACHE_DIR = "cache"
EMBEDDINGS_DIR = "embeddings"  # under CACHE_DIR
TIMINGS_FILE = "timings.json"

_KEEP = (
    F.USER_ID,
    bt_input.ITEMS,
    F.FUTURE_ITEM_IDS,
    F.FUTURE_RATINGS,
    F.FUTURE_GENRE_IDS,
)


# --------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that changes a probe result besides the model and (task, fraction, seed).

    Attributes:
        l2_grid: probe L2 strengths (chosen on eval; see `probes.train_softmax_probe`).
        probe_max_epochs, probe_patience, probe_min_epochs: probe early stopping.
        probe_se_rule: selection slack in standard errors (`probes.DEFAULT_SE_RULE`).
        min_selection_users: at fraction f, selection uses f of the eval users
            but at least this many (`probes.sample_selection_users`).
        exclude_history: remove history items from the next-item ranking.
        k: cutoff of HR@k / NDCG@k.
        liked_threshold: a future rating >= this is "liked".
        bag_projection_dim: random-projection width of the bag-of-items floor
            when the catalog (vocab incl. reserved ids) exceeds
            ``bag_projection_above``; below that the sparse bag is used as is.
        embed_batch_size: users per encoder forward pass.
    """

    l2_grid: tuple[float, ...] = probes.DEFAULT_L2_GRID
    probe_max_epochs: int = 200
    probe_patience: int = 5
    probe_min_epochs: int = 10
    probe_se_rule: float = probes.DEFAULT_SE_RULE
    min_selection_users: int = probes.MIN_SELECTION_USERS
    exclude_history: bool = True
    k: int = 10
    liked_threshold: float = 4.0
    bag_projection_dim: int = 256
    bag_projection_above: int = 5000
    embed_batch_size: int = 512

    def probe_kwargs(self) -> dict:
        return dict(
            l2_grid=tuple(self.l2_grid),
            max_epochs=self.probe_max_epochs,
            patience=self.probe_patience,
            min_epochs=min(self.probe_min_epochs, self.probe_max_epochs),
            se_rule=self.probe_se_rule,
        )

    def protocol(self) -> str:
        """The selection rule in one sentence, for the report."""
        return probes.selection_rule(self.min_selection_users, self.probe_se_rule)


# --------------------------------------------------------------------------
# Labels


@dataclasses.dataclass
class EvalData:
    """Labels and features of one artifact dir, every split in file order.

    Attributes:
        artifact_dir: the preprocessing output they come from.
        num_items: item vocab size incl. the reserved ids.
        width: history width `history` was read at (the runs' max_len).
        user_ids: split -> ``[n_split]`` raw user ids (bytes).
        history: split -> int ``[n_split, width]`` history item ids, the most
            recent ``width``, right-padded with 0.
        labels: task -> split -> labels in `probes.evaluate_embeddings`'s
            layout (``[n]`` class ids with -1 unknown, next-item ids, or
            `probes.Pairs` indexing that split's users).
    """

    artifact_dir: str
    num_items: int
    width: int
    user_ids: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    labels: dict[str, dict[str, Any]]


def unavailable_tasks(artifact_dir: str) -> dict[str, str]:
    """Default tasks the data cannot support -> why (own data without ratings or categories)."""
    meta = bt_input.load_metadata(artifact_dir)
    out = {}
    if meta.get("has_ratings") is False:
        out[LIKED_ITEM] = "the data has no ratings (no --rating_col)"
    if int(meta["vocab_sizes"]["genres"]) <= F.NUM_RESERVED:
        out[FAVORITE_GENRE] = "no item has a genre/category (e.g. no --items_file)"
    return out


def available_tasks(artifact_dir: str) -> list[str]:
    """The tasks this data supports: `DEFAULT_TASKS` (minus `unavailable_tasks`) +
    ``attr_<name>`` per user attribute."""
    meta = bt_input.load_metadata(artifact_dir)
    attrs = sorted((meta.get("attributes") or {}).keys())
    missing = unavailable_tasks(artifact_dir)
    tasks = [t for t in DEFAULT_TASKS if t not in missing]
    return tasks + [F.ATTRIBUTE_PREFIX + a for a in attrs]


def _check_tasks(tasks: Sequence[str] | None, artifact_dir: str) -> list[str]:
    known = available_tasks(artifact_dir)
    if tasks is None:
        return known
    unknown = [t for t in tasks if t not in known]
    if unknown:
        why = unavailable_tasks(artifact_dir)
        reasons = "".join(f" ({t}: {why[t]})" for t in unknown if t in why)
        raise ValueError(
            f"tasks {unknown} are not available for {artifact_dir}{reasons}; known: {known}"
        )
    return list(tasks)


def _no_encoder(items, training=False):
    """An "encoder" with 0-wide output: lets `embed_split` read features only."""
    return tf.zeros([tf.shape(items)[0], 0])


def load_eval_data(
    artifact_dir: str,
    *,
    width: int | None = None,
    tasks: Sequence[str] | None = None,
    liked_threshold: float = 4.0,
) -> EvalData:
    """Reads every split once and derives the labels of `tasks` (default: all available).

    Args:
        artifact_dir: preprocessing output dir.
        width: history width (default: the artifact's max_len).
        tasks: subset of `available_tasks(artifact_dir)`.
        liked_threshold: future rating >= this -> liked.
    """
    tasks = _check_tasks(tasks, artifact_dir)
    meta = bt_input.load_metadata(artifact_dir)
    width = int(width or meta["max_len"])
    attrs = [t for t in tasks if t.startswith(F.ATTRIBUTE_PREFIX)]
    user_ids, history, labels = {}, {}, {t: {} for t in tasks}
    for split in SPLITS:
        _, kept = embed_split(
            _no_encoder, artifact_dir, split, max_len=width, keep=list(_KEEP) + attrs
        )
        user_ids[split] = kept[F.USER_ID]
        history[split] = kept[bt_input.ITEMS].astype(np.int64)
        future = kept[F.FUTURE_ITEM_IDS].astype(np.int64)
        for task in tasks:
            if task == NEXT_ITEM:
                labels[task][split] = probes.first_future_item(future)
            elif task == FAVORITE_GENRE:
                labels[task][split] = probes.favorite_genre(kept[F.FUTURE_GENRE_IDS])
            elif task == LIKED_ITEM:
                labels[task][split] = probes.liked_item_pairs(
                    future, kept[F.FUTURE_RATINGS], threshold=liked_threshold
                )
            else:
                labels[task][split] = kept[task].astype(np.int64).reshape(-1)
    return EvalData(
        artifact_dir=artifact_dir,
        num_items=int(meta["vocab_sizes"]["items"]),
        width=width,
        user_ids=user_ids,
        history=history,
        labels=labels,
    )


# --------------------------------------------------------------------------
# Runs


def _read_run_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{run_dir!r} has no config.json: not a run directory (python -m bt_tf.train "
            "--output_dir=RUN writes one)."
        )
    with open(path) as f:
        return json.load(f)


def run_names(configs: Sequence[Mapping[str, Any]], run_dirs: Sequence[str]) -> list[str]:
    """One unique name per run: its ``model`` ("bt", "de", "bt+de"), or, when
    several runs share a model type, their run-dir basenames (made unique with
    ``-2``, ``-3``... if those collide too)."""
    types = [c.get("model", "bt") for c in configs]
    names = [
        t if types.count(t) == 1 else os.path.basename(os.path.normpath(d)) or t
        for t, d in zip(types, run_dirs)
    ]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def restore_run(run_dir: str) -> tuple[tf.keras.layers.Layer, np.ndarray, dict]:
    """(frozen encoder, item embeddings ``[vocab, d]``, config dict) of a run.

    Item embeddings: the DE item tower for "de" and "bt+de" runs, the encoder's
    input embedding table for "bt" runs.
    """
    encoder, config = export.restore_encoder(run_dir)
    encoder.trainable = False
    vocab = int(config["encoder"]["vocab_size"])
    if "de" in config.get("model", "bt").split("+"):
        items = export.restore_item_embeddings(run_dir, vocab, encoder.output_dim)
    else:
        items = encoder.item_embedding.embeddings.numpy()
    return encoder, np.asarray(items, np.float32), config


def untrained_encoder(config: Mapping[str, Any]):
    """A fresh `SequenceEncoder` of the run's architecture, initialized with its seed."""
    from bt_tf.encoders import SequenceEncoder

    tf.keras.utils.set_random_seed(int(config.get("seed", 0)))
    encoder = SequenceEncoder(**config["encoder"], name="encoder")
    encoder(tf.fill([1, 1], F.NUM_RESERVED), training=False)  # create variables
    encoder.trainable = False
    return encoder


def _extents(items: np.ndarray) -> np.ndarray:
    """``[n]`` one past each row's last non-padding position (0 for an empty row)."""
    real = items != F.PAD_ID
    last = items.shape[1] - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 0)


def embed_users(encoder, data: EvalData, *, batch_size: int = 512) -> dict[str, np.ndarray]:
    """split -> float32 ``[n_split, d]`` frozen embeddings, aligned with ``data``'s users.

    Feeds ``data.history`` (the ``items`` batches `embed_split` reads, kept by
    `load_eval_data`) through ``encoder(items, training=False)``, so the splits
    are read from disk once for all models, not once per model. Users go in
    order of history length and each batch is cut to its longest history:
    padding never reaches the encoder's output (it is masked), and with
    ML-1M-like lengths (median ~80 of 200) it takes 0.56x the CPU time of
    full-width batches (7.9 s instead of 14.0 s for 6k users, d 64, 2 blocks).
    """
    forward = tf.function(
        lambda items: encoder(items, training=False),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    out = {}
    for split in SPLITS:
        items = data.history[split].astype(np.int32)
        extents = _extents(items)
        order = np.argsort(extents, kind="stable")
        parts = []
        for s in range(0, len(items), batch_size):
            idx = order[s : s + batch_size]
            width = max(1, int(extents[idx].max()))
            parts.append(forward(items[idx, :width]).numpy())
        emb = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
        out[split] = np.empty_like(emb)
        out[split][order] = emb
    return out


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_fingerprint(run_dir: str) -> dict:
    """What identifies a run's latest checkpoint: its path and the SHA-256 of its
    ``.index`` file, which holds a CRC32C of every saved tensor, so retrained
    weights give a new fingerprint even under the same name."""
    path = _latest_checkpoint(run_dir)
    return {
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": path,
        "index_sha256": _sha256_file(path + ".index"),
    }


def data_fingerprint(data: EvalData) -> dict:
    """What identifies the evaluated users: the artifact's metadata, the width
    and every split's user ids in order."""
    ids = hashlib.sha256()
    for split in SPLITS:
        ids.update(split.encode())
        for user in data.user_ids[split]:
            ids.update(user if isinstance(user, bytes) else str(user).encode())
            ids.update(b"\0")
    return {
        "artifact_dir": os.path.abspath(data.artifact_dir),
        "metadata_sha256": _sha256_file(os.path.join(data.artifact_dir, F.METADATA_FILE)),
        "width": int(data.width),
        "user_ids_sha256": ids.hexdigest(),
    }


def cached_embeddings(
    cache_dir: str | None, name: str, fingerprint: Mapping[str, Any], compute
) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """``compute() -> (split -> user embeddings, item embeddings)``, stored in
    ``<cache_dir>/embeddings/<name>.npz`` under ``fingerprint`` (the run's
    checkpoint and the data) and read back while it matches.

    Returns (user embeddings, item embeddings, whether they came from the cache).
    """
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, EMBEDDINGS_DIR, urllib.parse.quote(name, safe="") + ".npz")
        if os.path.exists(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == key:
                        return {s: z[s] for s in SPLITS}, z["items"], True
            except (OSError, ValueError, KeyError) as err:  # unreadable: recompute
                logging.warning("ignoring embedding cache %s: %s", path, err)
    emb, items = compute()
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, fingerprint=np.array(key), items=items, **emb)
        os.replace(tmp, path)  # never a half-written cache
    return emb, items, False


# --------------------------------------------------------------------------
# Stage timings


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageClock:
    """Wall and CPU time per stage; ``records`` is a list of
    ``{"stage", "wall_s", "cpu_s"}``. CPU time is this process's (every
    thread): on a shared machine it is the figure that does not depend on the
    other users' load."""

    def __init__(self, records: list | None = None):
        self.records = records if records is not None else []

    @contextlib.contextmanager
    def __call__(self, stage: str):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            record = {
                "stage": stage,
                "wall_s": round(time.perf_counter() - wall, 3),
                "cpu_s": round(_cpu_seconds() - cpu, 3),
            }
            self.records.append(record)
            logging.info("time %s: wall %.1fs, cpu %.1fs", stage, record["wall_s"], record["cpu_s"])


# --------------------------------------------------------------------------
# Probing with a per-(model, task, fraction, seed) cache


class _Cache:
    """``<out_dir>/cache/<model>.json``: rows per "task|fraction|seed" under a
    fingerprint (run checkpoint + settings); a changed fingerprint drops them."""

    def __init__(self, directory: str | None, model: str, fingerprint: Mapping[str, Any]):
        self.path = None
        self.entries: dict[str, list] = {}
        self.fingerprint = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()
        if directory is None:
            return
        # Percent-encoding is injective: "bt+de" and "bt_de" get different files.
        self.path = os.path.join(directory, urllib.parse.quote(model, safe="") + ".json")
        if os.path.exists(self.path):
            with open(self.path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") == self.fingerprint:
                self.entries = stored["rows"]

    @staticmethod
    def key(task: str, fraction: float, seed: int) -> str:
        return f"{task}|{float(fraction)!r}|{int(seed)}"

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, rows: list[dict]) -> None:
        self.entries[key] = rows
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": self.fingerprint, "rows": self.entries}, f)
        os.replace(tmp, self.path)  # never a half-written cache


def _nan_to_none(rows: list[dict]) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows
    ]


def _none_to_nan(rows: list[dict]) -> list[dict]:
    return [
        {k: (float("nan") if k == "value" and v is None else v) for k, v in r.items()} for r in rows
    ]


def evaluate_features(
    model: str,
    emb: Mapping[str, Any],
    data: EvalData,
    *,
    fractions: Sequence[float],
    seeds: Sequence[int],
    tasks: Sequence[str] | None = None,
    item_emb: np.ndarray | None = None,
    settings: EvalSettings = EvalSettings(),
    cache_dir: str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    clock: StageClock | None = None,
) -> list[dict]:
    """`probes.evaluate_embeddings` for one model, one (task, fraction, seed) at a time.

    Args:
        model: name in every row.
        emb: split -> ``[n_split, d]`` dense or sparse user features aligned
            with ``data``.
        data: `load_eval_data` output.
        fractions, seeds: label fractions of train users, sampling seeds.
        tasks: subset of ``data.labels`` (default all).
        item_emb: ``[num_items, e]`` item embeddings for liked item (None ->
            one-hot items).
        cache_dir: where finished (task, fraction, seed) rows are stored and
            reused (None: no cache); ``fingerprint`` identifies the features
            (e.g. the run's checkpoint).
        extra: fields added to every row (e.g. ``run_dir``, ``batch_size``).
        clock: records the time of each task (stage ``"<model>: <task>"``).
    """
    tasks = list(data.labels) if tasks is None else list(tasks)
    fp = {
        "model": model,
        "features": dict(fingerprint or {}),
        "settings": dataclasses.asdict(settings),
        "artifact_dir": data.artifact_dir,
        "width": data.width,
    }
    cache = _Cache(cache_dir, model, fp)
    clock = clock or StageClock()
    rows: list[dict] = []
    for task in tasks:
        with clock(f"{model}: {task}"):
            rows += _task_rows(
                model, emb, data, task, fractions, seeds, item_emb, settings, cache, extra
            )
    return rows


def _task_rows(model, emb, data, task, fractions, seeds, item_emb, settings, cache, extra):
    """Rows of one task for every (fraction, seed), from the cache where it has them."""
    rows: list[dict] = []
    for fraction in fractions:
        for seed in seeds:
            key = cache.key(task, fraction, seed)
            cached = cache.get(key)
            if cached is not None:
                logging.info("%s %s fraction=%g seed=%d: cached", model, task, fraction, seed)
                rows += _none_to_nan(cached)
                continue
            new = probes.evaluate_embeddings(
                emb,
                {task: data.labels[task]},
                model=model,
                fractions=[fraction],
                seeds=[seed],
                num_items=data.num_items,
                item_emb=item_emb,
                history=data.history,
                exclude_history=settings.exclude_history,
                k=settings.k,
                min_selection_users=settings.min_selection_users,
                probe_kwargs=settings.probe_kwargs(),
            )
            new = [dict(r, **(extra or {})) for r in new]
            logging.info(
                "%s %s fraction=%g seed=%d: %s",
                model,
                task,
                fraction,
                seed,
                ", ".join(f"{r['metric']}={r['value']:.4f}" for r in new),
            )
            cache.put(key, _nan_to_none(new))
            rows += new
    return rows


def floor_rows(
    data: EvalData,
    *,
    fractions: Sequence[float],
    seeds: Sequence[int],
    tasks: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    cache_dir: str | None = None,
    clock: StageClock | None = None,
) -> list[dict]:
    """Label-only floors (``majority``, ``popularity``) and the ``bag_of_items`` probe
    (sparse history counts unless the catalog exceeds ``bag_projection_above``)."""
    tasks = list(data.labels) if tasks is None else list(tasks)
    clock = clock or StageClock()
    with clock("majority + popularity"):
        rows = _label_floors(data, fractions, seeds, tasks, settings)
    projection = (
        settings.bag_projection_dim if data.num_items > settings.bag_projection_above else None
    )
    with clock("bag_of_items: features"):
        bag = {
            s: probes.bag_of_items_features(
                data.history[s], data.num_items, projection_dim=projection, seed=0
            )
            for s in SPLITS
        }
    rows += evaluate_features(
        "bag_of_items",
        bag,
        data,
        fractions=fractions,
        seeds=seeds,
        tasks=tasks,
        settings=settings,
        cache_dir=cache_dir,
        fingerprint={"projection_dim": projection},
        clock=clock,
    )
    return rows


def _label_floors(data, fractions, seeds, tasks, settings) -> list[dict]:
    rows = probes.majority_floor(
        {t: data.labels[t] for t in tasks if t != NEXT_ITEM}, fractions=fractions, seeds=seeds
    )
    if NEXT_ITEM in tasks:
        counts = probes.item_counts(data.history["train"], data.num_items)
        rows += probes.popularity_floor(
            counts,
            data.labels[NEXT_ITEM]["test"],
            test_history=data.history["test"] if settings.exclude_history else None,
            fractions=fractions,
            seeds=seeds,
            k=settings.k,
        )
    return rows


# --------------------------------------------------------------------------
# The driver


def _latest_checkpoint(run_dir: str) -> str:
    """The run's weights: its best epoch (`bt_tf.train` keeps only those in checkpoints/)."""
    path = tf.train.latest_checkpoint(os.path.join(run_dir, export.CHECKPOINT_DIR))
    if path is None:
        raise FileNotFoundError(f"{run_dir!r} has no checkpoint; train it first.")
    return path


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds={seeds}: need at least one seed.")
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def evaluate_runs(
    run_dirs: Sequence[str],
    out_dir: str | None,
    *,
    label_fractions: Sequence[float] = probes.DEFAULT_FRACTIONS,
    seeds: int | Sequence[int] = 3,
    tasks: Sequence[str] | None = None,
    include_floors: bool = True,
    names: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    cache: bool = True,
    write: bool = True,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    title: str = "Downstream evaluation",
    timings: list | None = None,
) -> list[dict]:
    """Evaluates trained runs (and the floors) on every task; writes the report.

    Args:
        run_dirs: training run dirs (`bt_tf.train` output), all on one artifact dir.
        out_dir: report and cache directory (None: no cache, nothing written).
        label_fractions: fractions of train users whose labels the probes see.
        seeds: a count n (seeds 0..n-1) or explicit seeds.
        tasks: subset of `available_tasks` (default: all).
        include_floors: add majority / popularity / bag-of-items / untrained.
        names: model names (default `run_names`).
        settings: probe and task settings.
        cache: reuse the user embeddings of every run and floor encoder
            (``out_dir/cache/embeddings/``, keyed by the checkpoint and the
            data) and finished (model, task, fraction, seed) results
            (``out_dir/cache/<model>.json``).
        write: write ``report.md``, ``results.json``, ``timings.json`` and
            plots to ``out_dir``.
        baseline, compare: the relative-improvement table of the report.
        timings: if given, a list that gets one ``{"stage", "wall_s",
            "cpu_s"}`` per stage (loading, each model's embedding, each
            model's and floor's tasks, the report); every stage is also logged.

    Returns:
        Result rows (`probes.evaluate_embeddings` layout); rows of runs also
        carry ``run_dir``, ``model_type``, ``batch_size``, ``epochs``,
        ``steps_per_epoch``.
    """
    if not run_dirs:
        raise ValueError("evaluate_runs needs at least one run directory.")
    seeds = _seed_list(seeds)
    fractions = [float(f) for f in label_fractions]
    configs = [_read_run_config(d) for d in run_dirs]
    artifacts = {os.path.normpath(c["artifact_dir"]) for c in configs}
    if len(artifacts) != 1:
        listing = "; ".join(f"{d}: {c['artifact_dir']}" for d, c in zip(run_dirs, configs))
        raise ValueError(
            "runs evaluated together must share one artifact dir (the same users and "
            f"labels), got {listing}. Evaluate them separately."
        )
    artifact_dir = configs[0]["artifact_dir"]
    widths = {int(c["max_len"]) for c in configs}
    if len(widths) != 1:
        raise ValueError(f"runs have different max_len {sorted(widths)}; evaluate them apart.")
    names = list(names) if names is not None else run_names(configs, run_dirs)
    if len(names) != len(run_dirs) or len(set(names)) != len(names):
        raise ValueError(f"names {names} must be unique, one per run dir.")
    cache_dir = os.path.join(out_dir, CACHE_DIR) if (cache and out_dir) else None

    clock = StageClock(timings)
    with clock("load data"):
        data = load_eval_data(
            artifact_dir, width=widths.pop(), tasks=tasks, liked_threshold=settings.liked_threshold
        )
        data_fp = data_fingerprint(data)
    tasks = list(data.labels)
    common = dict(
        data=data,
        fractions=fractions,
        seeds=seeds,
        tasks=tasks,
        settings=settings,
        cache_dir=cache_dir,
        clock=clock,
    )
    rows: list[dict] = []
    for run_dir, config, name in zip(run_dirs, configs, names):
        if not os.path.exists(os.path.join(run_dir, "metrics.json")):
            logging.warning(
                "%s has no metrics.json (unfinished?); using its best epoch so far", run_dir
            )
        checkpoint = checkpoint_fingerprint(run_dir)

        def embed_run(run_dir=run_dir):
            encoder, item_emb, _ = restore_run(run_dir)
            return embed_users(encoder, data, batch_size=settings.embed_batch_size), item_emb

        with clock(f"{name}: embed"):
            emb, item_emb, hit = cached_embeddings(
                cache_dir, name, {"run": checkpoint, "data": data_fp}, embed_run
            )
        logging.info("%s: embeddings %s", name, "cached" if hit else "computed")
        extra = dict(
            run_dir=run_dir,
            model_type=config.get("model", "bt"),
            batch_size=int(config["batch_size"]),
            epochs=int(config["epochs"]),
            steps_per_epoch=int(config.get("steps_per_epoch") or 0),
        )
        rows += evaluate_features(
            name, emb, item_emb=item_emb, fingerprint=checkpoint, extra=extra, **common
        )
    if include_floors:
        rows += floor_rows(**common)
        architectures: dict[str, list[str]] = {}
        for config, name in zip(configs, names):
            key = json.dumps([config["encoder"], int(config.get("seed", 0))], sort_keys=True)
            architectures.setdefault(key, []).append(name)
        for key, members in architectures.items():
            kwargs, seed = json.loads(key)
            floor = "untrained" if len(architectures) == 1 else f"untrained({members[0]})"
            floor_fp = {"encoder": kwargs, "seed": seed}

            def embed_untrained(kwargs=kwargs, seed=seed):
                encoder = untrained_encoder({"encoder": kwargs, "seed": seed})
                emb = embed_users(encoder, data, batch_size=settings.embed_batch_size)
                return emb, encoder.item_embedding.embeddings.numpy()

            with clock(f"{floor}: embed"):
                emb, item_emb, _ = cached_embeddings(
                    cache_dir,
                    floor,
                    {"untrained": floor_fp, "tensorflow": tf.__version__, "data": data_fp},
                    embed_untrained,
                )
            rows += evaluate_features(floor, emb, item_emb=item_emb, fingerprint=floor_fp, **common)
    if write:
        if out_dir is None:
            raise ValueError("write=True needs an out_dir.")
        with clock("report"):
            paths = report.write_report(
                rows,
                out_dir,
                baseline=baseline,
                compare=compare,
                title=title,
                protocol=settings.protocol(),
            )
        with open(os.path.join(out_dir, TIMINGS_FILE), "w") as f:
            json.dump({"stages": clock.records, "cpu_count": os.cpu_count()}, f, indent=1)
        logging.info("wrote %s", paths["markdown"])
    return rows


# --------------------------------------------------------------------------
# CLI


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# argparse types: comma-separated values, checked (errors name the flag).
fraction_list = cli.comma_list(float, "fractions in (0, 1]", lambda f: 0.0 < f <= 1.0)
_l2_list = cli.comma_list(float, "L2 strengths >= 0", lambda v: v >= 0.0)


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


def add_flags(parser) -> None:
    """The evaluation flags shared with `bt_tf.reproduce` (not --runs / --output_dir).

    `parser`: an `argparse.ArgumentParser` or argument group.
    """
    d = EvalSettings()
    add = parser.add_argument
    add(
        "--label_fractions",
        type=fraction_list,
        default=list(probes.DEFAULT_FRACTIONS),
        help="fractions of train users' labels the probes see, comma-separated",
    )
    add("--seeds", type=_at_least(1), default=3, help="label-sampling seeds per fraction (0..n-1)")
    add(
        "--tasks",
        default="",
        help=f"comma-separated subset of {', '.join(DEFAULT_TASKS)}, attr_<name> (empty: all)",
    )
    boolean = argparse.BooleanOptionalAction
    add("--floors", default=True, action=boolean, help="also evaluate the baseline floors")
    add("--cache", default=True, action=boolean, help="reuse results cached in OUTPUT_DIR/cache")
    add("--l2_grid", type=_l2_list, default=list(d.l2_grid), help="probe L2 values (on eval)")
    add(
        "--probe_max_epochs",
        type=_at_least(1),
        default=d.probe_max_epochs,
        help="probe training epochs, at most",
    )
    add(
        "--probe_patience",
        type=_at_least(1),
        default=d.probe_patience,
        help="probe early stopping: epochs without an eval gain",
    )
    add(
        "--probe_min_epochs",
        type=_at_least(0),
        default=d.probe_min_epochs,
        help="probe epochs before early stopping may stop",
    )
    add(
        "--probe_se_rule",
        type=float,
        default=d.probe_se_rule,
        help="probe selection: the simplest candidate within this many standard errors "
        "of the best wins (0 = plain argmax)",
    )
    add(
        "--min_selection_users",
        type=_at_least(1),
        default=d.min_selection_users,
        help="at label fraction f, probes are selected on f of the eval users, at least this many",
    )
    add(
        "--exclude_history",
        default=d.exclude_history,
        action=boolean,
        help="next item: leave the user's history items out of the ranking",
    )
    add("--k", type=_at_least(1), default=d.k, help="HR@k / NDCG@k cutoff")
    add(
        "--liked_threshold",
        type=float,
        default=d.liked_threshold,
        help="liked item: a future rating >= this is liked",
    )
    add(
        "--bag_projection_dim",
        type=_at_least(1),
        default=d.bag_projection_dim,
        help="bag-of-items floor: random-projection width for large catalogs",
    )
    add(
        "--bag_projection_above",
        type=int,
        default=d.bag_projection_above,
        help="bag-of-items floor: project the bag when the catalog has more items",
    )
    add("--baseline", default="de", help="model the improvements are relative to")
    add("--compare", default="bt,bt+de", help="models whose improvement over --baseline is shown")


def settings_from_flags(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        l2_grid=tuple(args.l2_grid),
        probe_max_epochs=args.probe_max_epochs,
        probe_patience=args.probe_patience,
        probe_min_epochs=args.probe_min_epochs,
        probe_se_rule=args.probe_se_rule,
        min_selection_users=args.min_selection_users,
        exclude_history=args.exclude_history,
        k=args.k,
        liked_threshold=args.liked_threshold,
        bag_projection_dim=args.bag_projection_dim,
        bag_projection_above=args.bag_projection_above,
    )


def tasks_from_flags(args: argparse.Namespace) -> list[str] | None:
    return [t.strip() for t in args.tasks.split(",") if t.strip()] or None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("bt_tf.evaluate", description=cli.summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument(
        "--output_dir", default="", help="report dir (empty: report/ beside the first run)"
    )
    add_flags(parser.add_argument_group("evaluation flags (the probes of bt_tf.probes)"))
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    args = build_parser().parse_args(argv)
    run_dirs = [r for r in args.runs.split(",") if r.strip()]
    if not run_dirs:
        raise UserError("--runs names no run directory")
    for run_dir in run_dirs:  # before any work
        try:
            _read_run_config(run_dir)
        except FileNotFoundError as err:
            raise UserError(f"--runs: {err}") from None
    out_dir = args.output_dir or os.path.join(os.path.dirname(run_dirs[0]) or ".", "report")
    rows = evaluate_runs(
        run_dirs,
        out_dir,
        label_fractions=args.label_fractions,
        seeds=args.seeds,
        tasks=tasks_from_flags(args),
        include_floors=args.floors,
        settings=settings_from_flags(args),
        cache=args.cache,
        baseline=args.baseline,
        compare=[m for m in args.compare.split(",") if m.strip()],
    )
    print(os.path.join(out_dir, "report.md"))
    return rows


if __name__ == "__main__":
    cli.run_main(main)
