"""Embeddings out (the library of `python -m bt_tf.embed`, whose module doc has the details).

Every user's embedding as Parquet or TFRecord parts plus a TensorBoard
projector folder, from a `Source`: a run's restored encoder (`run_source`),
an exported SavedModel fed an artifact dir's users (`saved_model_source`) or
your own users from a JSON lines file (`input_source`). `write_embeddings`
writes (and resumes) an output directory; `read_embeddings` reads it back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import atomic, locks, runs
from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.errors import UserError
from bt_tf.evaluation import labels
from bt_tf.serving import export

FORMATS = ("parquet", "tfrecord")
ON_UNKNOWN = ("oov", "skip", "error")  # --input: what an item id the model never saw does
SPLIT_CHOICES = ("all", *F.SPLITS)
INPUT_SPLIT = "input"  # split name of the users of an --input file
INFO_FILE = "embed_info.json"
EMBEDDINGS_DIR = "embeddings"
PROJECTOR_DIR = "projector"
PROJECTOR_TENSOR = "user_embedding"  # checkpoint key of the projector's vectors
PROJECTOR_CHECKPOINT = "embeddings.ckpt"
METADATA_TSV = "metadata.tsv"
USER_ID_COL = "user_id"
SPLIT_COL = "split"
EMBEDDING_COL = "embedding"
FAVORITE_GENRE_COL = "favorite_genre"
_EXTENSIONS = {"parquet": ".parquet", "tfrecord": ".tfrecord"}
_ROW_GROUP_ROWS = 16_384  # Parquet rows buffered per row group


# --------------------------------------------------------------------------
# Sources


@dataclasses.dataclass
class Source:
    """Where the users and their embeddings come from.

    Attributes:
        description: identifies model and users in ``embed_info.json``; a rerun
            into the same directory must describe the same source.
        splits: split names this source has (``--split=all``).
        batches: ``split -> iterator`` of (raw user ids bytes ``[b]``, model
            input ``[b, L]``), deterministic; reading only, no model call.
        embed: model input ``[b, L]`` -> float32 ``[b, d]``.
        num_users: ``split -> number of users``, or None if unknown (progress only).
        artifact_dir: the preprocessing output the users come from (projector
            metadata: favorite genre, attributes), or None.
        batch_size: users per batch of ``batches`` (and per model call).
        checks: after a full pass of ``batches(split)``, what that pass counted
            in its input (`InputChecks.result`: unknown item ids, empty
            histories, duplicate or empty user ids), or None for sources
            that need no checks.
    """

    description: dict
    splits: tuple[str, ...]
    batches: Callable[[str], Iterator[tuple[np.ndarray, tf.Tensor]]]
    embed: Callable[[tf.Tensor], np.ndarray]
    num_users: Callable[[str], int | None]
    artifact_dir: str | None = None
    batch_size: int = 512
    checks: Callable[[], dict] | None = None


def _artifact_batches(artifact_dir: str, input_key: str, batch_size: int, max_len: int | None):
    """``split -> iterator`` of (user ids, ``input_key`` batch) in the artifact's file order."""

    def batches(split: str):
        ds = dataset.make_dataset(
            artifact_dir,
            split,
            batch_size,
            max_len=max_len,
            shuffle=False,
            repeat=False,
            outputs=[input_key, F.USER_ID],
        )
        for batch in ds:
            yield batch[F.USER_ID].numpy(), batch[input_key]

    return batches


def _artifact_counts(artifact_dir: str) -> Callable[[str], int | None]:
    counts = dataset.load_metadata(artifact_dir).get("num_users") or {}
    return lambda split: counts.get(split)


def run_source(run_dir: str, *, batch_size: int = 512) -> Source:
    """A run's encoder (latest checkpoint, `export.restore_encoder`) on its artifact's users."""
    encoder, config = export.restore_encoder(run_dir)
    artifact_dir, max_len = config["artifact_dir"], int(config["max_len"])
    forward = tf.function(
        lambda items: encoder(items, training=False),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    checkpoint = runs.latest_checkpoint(run_dir)
    description = {
        "kind": "run",
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": posixpath.basename(checkpoint),
        "artifact_dir": os.path.abspath(artifact_dir),
        "max_len": max_len,
    }
    return Source(
        description=description,
        splits=F.SPLITS,
        batches=_artifact_batches(artifact_dir, dataset.ITEMS, batch_size, max_len),
        embed=lambda items: forward(items).numpy(),
        num_users=_artifact_counts(artifact_dir),
        artifact_dir=artifact_dir,
        batch_size=batch_size,
    )


def _serving_embed(export_dir: str) -> tuple[Callable[[tf.Tensor], np.ndarray], dict]:
    """(raw ids string ``[b, L]`` -> float32 ``[b, d]`` via ``serving_default``, description)."""
    embed, description, _ = _load_serving(export_dir)
    return embed, description


def _load_serving(export_dir: str):
    """`_serving_embed`'s pair and the export's vocabulary test: raw item ids (a list of
    str) -> bool array, True for ids in the vocabulary (None when the export has no
    ``lookup_ids`` function)."""
    loaded = export.load_export(export_dir)
    if export.SERVING_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{export_dir} has no {export.SERVING_SIGNATURE!r} signature.")

    def embed(raw: tf.Tensor) -> np.ndarray:  # `loaded` owns the signature's variables
        out = loaded.signatures[export.SERVING_SIGNATURE](**{export.INPUT_KEY: raw})
        return out[export.EMBEDDING_KEY].numpy()

    description = {
        "saved_model": os.path.abspath(export_dir),
        "fingerprint": tf.saved_model.experimental.read_fingerprint(export_dir).singleprint(),
    }
    known = None
    if hasattr(loaded, "lookup_ids"):

        def known(items: list[str]) -> np.ndarray:
            # One id per row: the lookup keeps the last max_len ids of a row.
            ids = loaded.lookup_ids(tf.constant(np.array(items, dtype=object).reshape(-1, 1)))
            return ids.numpy()[:, 0] != F.OOV_ID

    return embed, description, known


def default_artifact_dir(export_dir: str) -> str | None:
    """The artifact dir of the run an export sits in (``EXPORT/../config.json``), if any."""
    path = posixpath.join(posixpath.dirname(os.path.normpath(export_dir)), runs.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f).get("artifact_dir")


def saved_model_source(export_dir: str, artifact_dir: str, *, batch_size: int = 512) -> Source:
    """An export's ``serving_default`` on the raw history item ids of the artifact's users."""
    embed, description = _serving_embed(export_dir)
    description = {"kind": "saved_model", **description}
    description["artifact_dir"] = os.path.abspath(artifact_dir)
    return Source(
        description=description,
        splits=F.SPLITS,
        batches=_artifact_batches(artifact_dir, F.HISTORY_RAW_ITEM_IDS, batch_size, None),
        embed=embed,
        num_users=_artifact_counts(artifact_dir),
        artifact_dir=artifact_dir,
        batch_size=batch_size,
    )


def _input_records(path: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, user id, raw item ids oldest first) per line of a JSON-lines file;
    blank lines skipped.

    Raises:
        UserError: ``<problem> (<file>:<line>)`` for a line that is not UTF-8, not
            JSON, not an object with ``user_id`` and ``item_ids``, or whose values
            have the wrong type (``user_id``: string or integer; ``item_ids``: a
            list of non-empty strings or integers).
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"({path}:{lineno})"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"bytes {raw[err.start : err.end]!r} at byte {err.start} are not UTF-8 {where}"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"not JSON: {err.msg} at column {err.colno} {where}") from None
            if not isinstance(record, dict) or not {"user_id", "item_ids"} <= set(record):
                raise UserError(
                    f'expected {{"user_id": "...", "item_ids": ["...", ...]}}, got '
                    f"{line.strip()[:80]!r} {where}"
                )
            user, items = record["user_id"], record["item_ids"]
            if isinstance(user, bool) or not isinstance(user, (str, int)):
                raise UserError(f"user_id must be a string or an integer, got {user!r:.80} {where}")
            if not isinstance(items, list) or any(
                isinstance(i, bool) or not isinstance(i, (str, int)) or i == "" for i in items
            ):
                raise UserError(
                    "item_ids must be a list of non-empty strings or integers, got "
                    f"{items!r:.80} {where}"
                )
            yield lineno, str(user), [str(i) for i in items]


def read_input_file(path: str) -> Iterator[tuple[str, list[str]]]:
    """(user id, raw item ids oldest first) per line of a JSON-lines file; blank lines
    skipped. Raises `UserError` naming the file and line of a malformed record."""
    for _, user, items in _input_records(path):
        yield user, items


_LISTED_LINES = 10  # line numbers kept per kind of finding in embed_info.json


class InputChecks:
    """What one pass over an ``--input`` file found, counted (``embed_info.json``'s
    ``checks`` of the ``input`` split; `describe_checks` says it in words).

    Kinds, each with a count and the first `_LISTED_LINES` line numbers:
    ``unknown_items`` (users with item ids the model's vocabulary lacks),
    ``only_unknown_items`` (users all of whose item ids are unknown: under
    ``oov`` they all get the same vector), ``empty_histories`` (no item id at
    all: the all-padding output), ``duplicate_user_ids`` (a user id seen on an
    earlier line; written again), ``empty_user_ids``, and ``skipped`` (users
    left out under ``--on_unknown=skip``).
    """

    KINDS = (
        "unknown_items",
        "only_unknown_items",
        "empty_histories",
        "duplicate_user_ids",
        "empty_user_ids",
        "skipped",
    )

    def __init__(self, on_unknown: str):
        self.on_unknown = on_unknown
        self.users = self.written = self.unknown_ids = 0
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.lines: dict[str, list[int]] = {k: [] for k in self.KINDS}
        self._seen: set[str] = set()

    def add(self, kind: str, lineno: int) -> None:
        self.counts[kind] += 1
        if len(self.lines[kind]) < _LISTED_LINES:
            self.lines[kind].append(lineno)

    def user(self, lineno: int, user: str) -> None:
        self.users += 1
        if not user.strip():
            self.add("empty_user_ids", lineno)
        if user in self._seen:
            self.add("duplicate_user_ids", lineno)
        self._seen.add(user)

    def result(self) -> dict:
        return {
            "on_unknown": self.on_unknown,
            "users_read": self.users,
            "users_written": self.written,
            "unknown_item_ids": self.unknown_ids,
            **self.counts,
            "first_lines": {k: v for k, v in self.lines.items() if v},
        }


def describe_checks(checks: dict, path: str) -> str | None:
    """One line for stderr about what `InputChecks` found in `path`; None when nothing."""
    n = checks
    parts = []
    if n["unknown_items"]:
        what = {
            "oov": "embedded as the out-of-vocabulary item",
            "skip": "dropped from the histories",
        }[n["on_unknown"]]
        parts.append(
            f"{n['unknown_items']} users with {n['unknown_item_ids']} item ids the model "
            f"never saw ({what}; {n['only_unknown_items']} users had only such ids)"
        )
    labels_ = {
        "empty_histories": "users with no item id"
        + (" (embedded as an empty history)" if n["on_unknown"] != "skip" else ""),
        "duplicate_user_ids": "repeated user ids (written again)",
        "empty_user_ids": "empty user ids",
        "skipped": "users left out (no known item id; --on_unknown=skip)",
    }
    parts += [f"{n[k]} {label}" for k, label in labels_.items() if n[k]]
    if not parts:
        return None
    lines = ", ".join(
        f"{k} at line{'s' * (len(v) > 1)} {', '.join(map(str, v))}"
        for k, v in n.get("first_lines", {}).items()
    )
    return (
        f"warning: {path}: {n['users_read']} users read, {n['users_written']} written; "
        f"{'; '.join(parts)} (first {lines})"
    )


def input_source(
    export_dir: str, input_path: str, *, batch_size: int = 512, on_unknown: str = "oov"
) -> Source:
    """An export's ``serving_default`` on the users of a JSON-lines file (`_input_records`).

    ``on_unknown``: what an item id the model's vocabulary lacks does: ``oov``
    embeds it as the out-of-vocabulary item (as training does with items
    outside the vocabulary), ``skip`` drops it (a user left with no item is not
    written), ``error`` stops with its file and line. Every pass counts what it
    found (`InputChecks`, the source's ``checks``). An input without any user is
    a `UserError`.
    """
    if on_unknown not in ON_UNKNOWN:
        raise ValueError(f"on_unknown={on_unknown!r}: expected one of {ON_UNKNOWN}")
    if not tf.io.gfile.exists(input_path):
        raise FileNotFoundError(f"--input file {input_path!r} does not exist.")
    if next(_input_records(input_path), None) is None:
        raise UserError(f"--input file {input_path} holds no user (it is empty or blank)")
    embed, description, known = _load_serving(export_dir)
    if known is None and on_unknown != "oov":
        raise UserError(
            f"{export_dir} cannot tell known item ids from unknown ones (no lookup_ids "
            f"function): --on_unknown={on_unknown} needs an export of bt_tf.export"
        )
    description = {"kind": "input", **description, "on_unknown": on_unknown}
    description.update(input=os.path.abspath(input_path), input_sha256=runs.file_sha256(input_path))
    info_path = posixpath.join(export_dir, export.EXPORT_INFO_FILE)
    max_len = None
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as f:
            max_len = json.load(f).get("max_len")  # the export keeps the last max_len anyway
    checks = {"last": None}

    def batches(split: str):
        tally = InputChecks(on_unknown)
        records = _input_records(input_path)
        while chunk := list(itertools.islice(records, batch_size)):
            flat = [item for _, _, items in chunk for item in items]
            is_known = known(flat) if known is not None and flat else np.ones(len(flat), bool)
            users, rows, at = [], [], 0
            for lineno, user, items in chunk:
                tally.user(lineno, user)
                mask, at = is_known[at : at + len(items)], at + len(items)
                if not items:
                    tally.add("empty_histories", lineno)
                elif not mask.all():
                    tally.add("unknown_items", lineno)
                    tally.unknown_ids += int((~mask).sum())
                    if not mask.any():
                        tally.add("only_unknown_items", lineno)
                    if on_unknown == "error":
                        first = items[int(np.argmin(mask))]
                        raise UserError(
                            f"item id {first!r:.80} is not in the model's vocabulary "
                            f"(--on_unknown=error) ({input_path}:{lineno})"
                        )
                    if on_unknown == "skip":
                        items = [i for i, k in zip(items, mask) if k]
                if on_unknown == "skip" and not items:
                    tally.add("skipped", lineno)
                    continue
                users.append(user)
                rows.append(items[-max_len:] if max_len else items)
            tally.written += len(users)
            checks["last"] = tally.result()
            if not rows:
                continue
            width = max(1, max(len(r) for r in rows))
            raw = np.array([r + [""] * (width - len(r)) for r in rows], dtype=object)
            yield np.array([u.encode() for u in users], dtype=object), tf.constant(raw)
        checks["last"] = tally.result()

    return Source(
        description=description,
        splits=(INPUT_SPLIT,),
        batches=batches,
        embed=embed,
        num_users=lambda split: None,
        batch_size=batch_size,
        checks=lambda: checks["last"],
    )


# --------------------------------------------------------------------------
# Writing parts


def _decode_ids(user_ids: Iterable[bytes]) -> list[str]:
    out = []
    for u in user_ids:
        try:
            out.append(u.decode("utf-8") if isinstance(u, bytes) else str(u))
        except UnicodeDecodeError:
            raise ValueError(f"user id {u!r} is not UTF-8 text.") from None
    return out


def _parquet_schema():
    import pyarrow as pa

    return pa.schema(
        [
            (USER_ID_COL, pa.string()),
            (SPLIT_COL, pa.string()),
            (EMBEDDING_COL, pa.list_(pa.float32())),
        ]
    )


class _PartWriter:
    """One part file, written to a temporary file beside it and fsynced and renamed by
    `close` (`bt_tf.atomic.replacing`): a part is complete or absent."""

    def __init__(self, path: str, fmt: str, split: str):
        self.path, self.fmt, self.split, self.rows = path, fmt, split, 0
        self._replacing = atomic.replacing(path)
        self._tmp = self._replacing.__enter__()
        self._buffer: list[tuple[list[str], np.ndarray]] = []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self._tmp, _parquet_schema())
        else:
            self._writer = tf.io.TFRecordWriter(self._tmp)

    def write(self, user_ids: np.ndarray, embeddings: np.ndarray) -> None:
        ids = _decode_ids(user_ids)
        self.rows += len(ids)
        if self.fmt == "tfrecord":
            for user, vector in zip(ids, embeddings):
                self._writer.write(_example(user, self.split, vector).SerializeToString())
            return
        self._buffer.append((ids, embeddings))
        if sum(len(b[0]) for b in self._buffer) >= _ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        ids = [u for b in self._buffer for u in b[0]]
        emb = np.concatenate([b[1] for b in self._buffer]).astype(np.float32)
        n, d = emb.shape
        vectors = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(emb.reshape(-1))
        )
        table = pa.table(
            [pa.array(ids, pa.string()), pa.array([self.split] * n, pa.string()), vectors],
            schema=_parquet_schema(),
        )
        self._writer.write_table(table)
        self._buffer = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush()
        self._writer.close()
        self._replacing.__exit__(None, None, None)  # fsync, rename to the part's name


def _example(user: str, split: str, vector: np.ndarray) -> tf.train.Example:
    feature = {
        USER_ID_COL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
        SPLIT_COL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode()])),
        EMBEDDING_COL: tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _read_part(path: str, fmt: str) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(user ids, splits, float32 ``[b, d]``) per record batch of one part file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=_ROW_GROUP_ROWS):
            emb = batch.column(EMBEDDING_COL)
            values = emb.flatten().to_numpy().astype(np.float32)
            yield (
                batch.column(USER_ID_COL).to_pylist(),
                batch.column(SPLIT_COL).to_pylist(),
                values.reshape(len(emb), -1) if len(emb) else values.reshape(0, 0),
            )
        return
    spec = {
        USER_ID_COL: tf.io.FixedLenFeature([], tf.string),
        SPLIT_COL: tf.io.FixedLenFeature([], tf.string),
        EMBEDDING_COL: tf.io.RaggedFeature(tf.float32),
    }
    for records in tf.data.TFRecordDataset(path).batch(_ROW_GROUP_ROWS):
        parsed = tf.io.parse_example(records, spec)
        yield (
            _decode_ids(parsed[USER_ID_COL].numpy()),
            _decode_ids(parsed[SPLIT_COL].numpy()),
            parsed[EMBEDDING_COL].to_tensor().numpy().astype(np.float32),
        )


def read_embeddings(output_dir: str, split: str | None = None):
    """Reads what `write_embeddings` wrote: (user ids ``[n]`` str, splits ``[n]`` str,
    embeddings float32 ``[n, d]``) in output order, every split or one."""
    info = _read_info(output_dir)
    if info is None:
        raise FileNotFoundError(f"No {INFO_FILE} in {output_dir!r}: run python -m bt_tf.embed.")
    fmt = info["settings"]["format"]
    ids, splits, vectors = [], [], []
    for name, entry in info["splits"].items():
        if split is not None and name != split:
            continue
        for part in entry["parts"]:
            for u, s, e in _read_part(posixpath.join(output_dir, part), fmt):
                ids += u
                splits += s
                vectors.append(e)
    dim = int(info.get("dim") or 0)
    emb = np.concatenate(vectors) if vectors else np.zeros([0, dim], np.float32)
    return np.array(ids, dtype=object), np.array(splits, dtype=object), emb


# --------------------------------------------------------------------------
# Progress


class _Counter:
    """Fallback progress without tqdm: ``split: n/total users`` on stderr, at most once a second."""

    def __init__(self, total: int | None, desc: str):
        self.total, self.desc, self.n, self._last = total, desc, 0, 0.0

    def update(self, n: int) -> None:
        self.n += n
        if time.monotonic() - self._last >= 1.0:
            self._show("\r")

    def _show(self, prefix: str, end: str = "") -> None:
        self._last = time.monotonic()
        total = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"{prefix}{self.desc}: {self.n}{total} users{end}")
        sys.stderr.flush()

    def close(self) -> None:
        self._show("\r", "\n")


def _progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return _Silent(total, desc)
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, desc)
    return tqdm(total=total, desc=desc, unit=" users", file=sys.stderr, dynamic_ncols=True)


class _Silent(_Counter):
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------
# The job


def _read_info(output_dir: str) -> dict | None:
    path = posixpath.join(output_dir, INFO_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            info = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            info = err
    if not isinstance(info, dict):
        raise UserError(
            f"{path} is unreadable ({info}); delete {output_dir} (or pass --overwrite) and "
            "run bt_tf.embed again"
        )
    return info


def _write_info(output_dir: str, info: dict) -> None:
    atomic.write_json(posixpath.join(output_dir, INFO_FILE), info, indent=2)


def _part_path(split: str, index: int, fmt: str) -> str:
    """Part path relative to the output dir."""
    return posixpath.join(EMBEDDINGS_DIR, f"{split}-{index:05d}{_EXTENSIONS[fmt]}")


def _embed_split(
    source: Source, split: str, output_dir: str, fmt: str, part_batches: int, progress: bool
) -> dict:
    """Writes the missing parts of one split; returns ``{"users", "parts", "dim"}``.

    Part ``k`` holds the users of batches ``[k * part_batches, (k + 1) * part_batches)``
    of the split's deterministic stream, so a part is the same file whichever
    run writes it. Users of finished parts are read but not embedded.
    """
    bar = _progress(source.num_users(split), split, progress)
    users, parts, dim, writer = 0, [], None, None
    try:
        for number, (ids, inputs) in enumerate(source.batches(split)):
            if number % part_batches == 0:  # the first batch of part `number // part_batches`
                if writer is not None:
                    writer.close()
                parts.append(_part_path(split, number // part_batches, fmt))
                path = posixpath.join(output_dir, parts[-1])
                writer = None if tf.io.gfile.exists(path) else _PartWriter(path, fmt, split)
            if writer is not None:
                emb = np.asarray(source.embed(inputs), np.float32)
                dim = int(emb.shape[1])
                writer.write(ids, emb)
            users += len(ids)
            bar.update(len(ids))
        if writer is not None:
            writer.close()
    finally:
        bar.close()
    out = {"users": users, "parts": parts, "dim": dim}
    if source.checks is not None:
        out["checks"] = source.checks()
    return out


def _sample(total: int, max_users: int, seed: int) -> np.ndarray:
    """Sorted row indices of the projector sample (all rows when ``total <= max_users``)."""
    if total <= max_users:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=max_users, replace=False))


def _label_columns(artifact_dir: str) -> tuple[bool, dict]:
    """(has future genres, {attribute: spec}) of an artifact dir: its metadata.tsv columns."""
    spec = dataset.feature_spec(dataset.load_schema(artifact_dir))
    attrs = dataset.load_metadata(artifact_dir).get("attributes") or {}
    return F.FUTURE_GENRE_IDS in spec, {
        a: attrs[a] for a in attrs if F.ATTRIBUTE_PREFIX + a in spec
    }


def _labels(artifact_dir: str, split: str, wanted: set[str]) -> dict[str, list[str]]:
    """user id -> [favorite genre name (if the data has genres), attribute class names...]
    for the ``wanted`` users of `split`."""
    has_genres, attrs = _label_columns(artifact_dir)
    genres = dataset.load_vocab(artifact_dir, "genres") if has_genres else []
    keys = [F.FUTURE_GENRE_IDS] * has_genres + [F.ATTRIBUTE_PREFIX + a for a in attrs]
    ds = dataset.make_dataset(
        artifact_dir, split, 1024, shuffle=False, repeat=False, outputs=[F.USER_ID, *keys]
    )
    out = {}
    for batch in ds:
        ids = _decode_ids(batch[F.USER_ID].numpy())
        columns = []
        if has_genres:
            future = batch[F.FUTURE_GENRE_IDS].merge_dims(1, -1).to_tensor(default_value=0)
            favorite = labels.favorite_genre(future.numpy())  # -1: no genre
            columns.append([genres[g] if g >= 0 else "" for g in favorite])
        for name, spec in attrs.items():
            classes = spec.get("classes") or []
            values = batch[F.ATTRIBUTE_PREFIX + name].numpy().reshape(-1)  # -1: unknown
            columns.append([classes[v] if 0 <= v < len(classes) else "" for v in values])
        for row, user in enumerate(ids):
            if user in wanted:
                out[user] = [c[row] for c in columns]
    return out


def _tsv_cell(value: str) -> str:
    return " ".join(str(value).split())  # no tabs or newlines inside a cell


def write_projector(
    output_dir: str, info: dict, *, max_users: int, seed: int, artifact_dir: str | None
) -> dict:
    """Writes ``DIR/projector/`` (replacing an old one) from the finished parts; returns
    ``{"users", "max_users", "seed", "splits"}``."""
    fmt = info["settings"]["format"]
    splits = list(info["splits"])
    total = sum(info["splits"][s]["users"] for s in splits)
    chosen = _sample(total, max_users, seed)
    ids, split_of, vectors, start = [], [], [], 0
    for split in splits:
        for part in info["splits"][split]["parts"]:
            for u, s, e in _read_part(posixpath.join(output_dir, part), fmt):
                lo, hi = np.searchsorted(chosen, [start, start + len(u)])
                pick = chosen[lo:hi] - start
                ids += [u[i] for i in pick]
                split_of += [s[i] for i in pick]
                vectors.append(e[pick])
                start += len(u)
    dim = int(info.get("dim") or 0)
    vectors = np.concatenate(vectors) if vectors else np.zeros([0, dim], np.float32)

    header, extra = [USER_ID_COL, SPLIT_COL], {}
    if artifact_dir is not None:
        has_genres, attrs = _label_columns(artifact_dir)
        header += [FAVORITE_GENRE_COL] * has_genres + list(attrs)
        for split in splits:
            wanted = {u for u, s in zip(ids, split_of) if s == split}
            if wanted:
                extra.update(
                    {(split, u): v for u, v in _labels(artifact_dir, split, wanted).items()}
                )
    rows = [[u, s, *extra.get((s, u), [""] * (len(header) - 2))] for u, s in zip(ids, split_of)]

    from tensorboard.plugins import projector

    final = posixpath.join(output_dir, PROJECTOR_DIR)
    tmp = final + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.io.gfile.makedirs(tmp)
    with tf.io.gfile.GFile(posixpath.join(tmp, METADATA_TSV), "w") as f:
        for row in [header, *rows]:
            f.write("\t".join(_tsv_cell(c) for c in row) + "\n")
    variable = tf.Variable(vectors, name=PROJECTOR_TENSOR)
    tf.train.Checkpoint(**{PROJECTOR_TENSOR: variable}).write(
        posixpath.join(tmp, PROJECTOR_CHECKPOINT)
    )
    # The checkpoint state TensorBoard looks for, relative so the folder can move.
    with tf.io.gfile.GFile(posixpath.join(tmp, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{PROJECTOR_CHECKPOINT}"\n')
        f.write(f'all_model_checkpoint_paths: "{PROJECTOR_CHECKPOINT}"\n')
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = f"{PROJECTOR_TENSOR}/.ATTRIBUTES/VARIABLE_VALUE"
    embedding.metadata_path = METADATA_TSV
    projector.visualize_embeddings(tmp, config)
    if tf.io.gfile.exists(final):
        tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    return {"users": len(ids), "max_users": max_users, "seed": seed, "splits": splits}


class OutputMismatch(UserError):
    """The output dir holds embeddings of other settings or another model."""


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    """``key: old -> new`` for every differing (nested) setting."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.append(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return "; ".join(o for o in out if o)


def _clear(output_dir: str) -> None:
    """Removes what `write_embeddings` writes (and nothing else) from `output_dir`."""
    for name in (EMBEDDINGS_DIR, PROJECTOR_DIR, PROJECTOR_DIR + ".tmp"):
        path = posixpath.join(output_dir, name)
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    path = posixpath.join(output_dir, INFO_FILE)
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


# long: the resumable write loop reads best as one piece; its steps are helpers
def write_embeddings(
    source: Source,
    output_dir: str,
    *,
    splits: Sequence[str] | None = None,
    fmt: str = "parquet",
    part_size: int = 100_000,
    projector_users: int = 10_000,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Embeds the users of `splits` into `output_dir` (layout: module docstring).

    Args:
        source: `run_source`, `saved_model_source` or `input_source`.
        output_dir: destination; resumed if it holds a run with the same settings.
        splits: subset of ``source.splits`` (default: all of them).
        fmt: "parquet" or "tfrecord".
        part_size: users per part file (rounded up to whole batches).
        projector_users: projector sample size; 0 = no projector.
        seed: seeds the projector sample.
        overwrite: delete a previous output (other settings) instead of failing.
        progress: show a progress bar on stderr.

    Returns:
        the ``embed_info.json`` content.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}.")
    if part_size < 1 or projector_users < 0:
        raise ValueError(
            f"part_size={part_size} must be >= 1 and projector_users={projector_users} >= 0."
        )
    batch_size = source.batch_size
    splits = list(source.splits if splits is None else splits)
    unknown = [s for s in splits if s not in source.splits]
    if unknown:
        raise ValueError(f"splits {unknown} are not in this source's {list(source.splits)}.")
    part_batches = math.ceil(part_size / batch_size)
    settings = {
        "source": source.description,
        "format": fmt,
        "batch_size": batch_size,
        "part_size": part_batches * batch_size,
    }
    # One writer per output directory: a second bt_tf.embed into it stops at once.
    with locks.hold_dir(output_dir, hint=" or choose another --output_dir"):
        info = _read_info(output_dir)
        if info is not None and info.get("settings") != settings:
            if not overwrite:
                raise OutputMismatch(
                    f"{output_dir} holds embeddings written with other settings or another model "
                    f"({_differences(info.get('settings') or {}, settings)}); pass --overwrite to "
                    "replace them, or choose another --output_dir."
                )
            _clear(output_dir)
            info = None
        if info is None:
            info = {"settings": settings, "dim": None, "splits": {}, "projector": None}
            _write_info(output_dir, info)
        tf.io.gfile.makedirs(posixpath.join(output_dir, EMBEDDINGS_DIR))

        for split in splits:
            done = info["splits"].get(split)
            if done and all(
                tf.io.gfile.exists(posixpath.join(output_dir, p)) for p in done["parts"]
            ):
                continue
            result = _embed_split(source, split, output_dir, fmt, part_batches, progress)
            info["dim"] = info["dim"] or result["dim"]
            info["splits"][split] = {
                k: result[k] for k in ("users", "parts", "checks") if k in result
            }
            info["splits"] = {s: info["splits"][s] for s in _ordered(info["splits"])}
            _write_info(output_dir, info)
        if info["dim"] is None and any(v["parts"] for v in info["splits"].values()):
            first = next(p for v in info["splits"].values() for p in v["parts"])
            info["dim"] = int(next(_read_part(posixpath.join(output_dir, first), fmt))[2].shape[1])
            _write_info(output_dir, info)

        chosen = _ordered(splits)
        total = sum(info["splits"][split]["users"] for split in chosen)
        if projector_users and total:
            wanted = {"max_users": projector_users, "seed": seed, "splits": chosen}
            old = {k: (info["projector"] or {}).get(k) for k in wanted}
            if old != wanted or not tf.io.gfile.exists(posixpath.join(output_dir, PROJECTOR_DIR)):
                info["projector"] = write_projector(
                    output_dir,
                    dict(info, splits={split: info["splits"][split] for split in chosen}),
                    max_users=projector_users,
                    seed=seed,
                    artifact_dir=source.artifact_dir,
                )
                _write_info(output_dir, info)
        return info


def _ordered(splits: Iterable[str]) -> list[str]:
    order = [*F.SPLITS, INPUT_SPLIT]
    return sorted(splits, key=lambda s: order.index(s) if s in order else len(order))
