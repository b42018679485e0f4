"""The evaluated users of one artifact dir: ids, histories and every task's labels (`EvalData`).

Every split is read once (`load_eval_data`) and each task derives its labels
from the kept features (`tasks.Task.derive`); the embeddings of every model
are computed from the same histories (`embedding_cache.embed_users`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_split
from bt_tf.evaluation.tasks import DEFAULT_TASKS, OPT_IN_TASKS, get_task

__all__ = ["EvalData", "available_tasks", "unavailable_tasks", "load_eval_data"]

# Features read for every task (+ what a task `reads`, e.g. its user attribute).
_KEEP = (
    F.USER_ID,
    F.ITEMS,
    F.FUTURE_ITEM_IDS,
    F.FUTURE_RATINGS,
    F.FUTURE_GENRE_IDS,
)


@dataclasses.dataclass(frozen=True)
class EvalData:
    """Labels and features of one artifact dir, every split in file order.

    Attributes:
        artifact_dir: the preprocessing output they come from.
        num_items: item vocab size incl. the reserved ids.
        width: history width `history` was read at (the runs' max_len).
        user_ids: split -> ``[n_split]`` raw user ids (bytes).
        history: split -> int ``[n_split, width]`` history item ids, the most
            recent ``width``, right-padded with 0.
        labels: task -> split -> labels in `tasks.evaluate_embeddings`'s
            layout (``[n]`` class ids with -1 unknown, next-item ids, or
            `labels.Pairs` indexing that split's users).
        not_scored: default tasks the data cannot support -> why (e.g. a log
            without item categories or ratings; `unavailable_tasks`), when the
            tasks were the defaults.
    """

    artifact_dir: str
    num_items: int
    width: int
    user_ids: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    labels: dict[str, dict[str, Any]]
    not_scored: dict[str, str] = dataclasses.field(default_factory=dict)


def unavailable_tasks(artifact_dir: str) -> dict[str, str]:
    """Default tasks the data cannot support -> why (own data without ratings or categories)."""
    meta = dataset.load_metadata(artifact_dir)
    why = {name: get_task(name).unavailable(meta) for name in DEFAULT_TASKS}
    return {name: reason for name, reason in why.items() if reason}


def available_tasks(artifact_dir: str) -> list[str]:
    """The tasks this data supports: `DEFAULT_TASKS` (minus `unavailable_tasks`) +
    ``attr_<name>`` per user attribute."""
    meta = dataset.load_metadata(artifact_dir)
    attrs = sorted((meta.get("attributes") or {}).keys())
    missing = unavailable_tasks(artifact_dir)
    tasks = [t for t in DEFAULT_TASKS if t not in missing]
    return tasks + [F.ATTRIBUTE_PREFIX + a for a in attrs]


def _check_tasks(tasks: Sequence[str] | None, artifact_dir: str) -> list[str]:
    known = available_tasks(artifact_dir)
    if tasks is None:
        return known
    known += [t for t in OPT_IN_TASKS if get_task(t).unavailable(
        dataset.load_metadata(artifact_dir)) is None]  # fmt: skip
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
    splits: Sequence[str] = F.SPLITS,
) -> EvalData:
    """Reads each of ``splits`` once and derives the labels of `tasks` (default: all
    available).

    Args:
        artifact_dir: preprocessing output dir.
        width: history width (default: the artifact's max_len).
        tasks: subset of `available_tasks(artifact_dir)`.
        liked_threshold: future rating >= this -> liked.
        splits: the splits read (a search reads train and eval only, never test).
    """
    not_scored = unavailable_tasks(artifact_dir) if tasks is None else {}
    tasks = _check_tasks(tasks, artifact_dir)
    meta = dataset.load_metadata(artifact_dir)
    width = int(width or meta["max_len"])
    derive = {name: get_task(name) for name in tasks}
    reads = [f for task in derive.values() for f in task.reads]
    user_ids, history, labels = {}, {}, {name: {} for name in tasks}
    for split in splits:
        _, kept = embed_split(
            _no_encoder, artifact_dir, split, max_len=width, keep=list(_KEEP) + reads
        )
        user_ids[split] = kept[F.USER_ID]
        history[split] = kept[F.ITEMS].astype(np.int64)
        for name, task in derive.items():
            labels[name][split] = task.derive(kept, liked_threshold=liked_threshold)
    return EvalData(
        artifact_dir=artifact_dir,
        num_items=int(meta["vocab_sizes"]["items"]),
        width=width,
        user_ids=user_ids,
        history=history,
        labels=labels,
        not_scored=not_scored,
    )
