"""Labels of the downstream tasks: derived from each user's future, and sampled.

Derivation (one function per label kind): `favorite_genre`, `first_future_item`
(next item), `liked_item_pairs` (liked item, `Pairs`), `item_counts` (the
popularity prior). Sampling, the scarce-label protocol (DESIGN.md,
"Downstream evaluation"): `sample_label_fraction` draws a seeded (stratified)
fraction of the users a probe may learn from that keep their labels
(`protocol.sample_fold_labels` applies it to a fold's pool). Plain numpy, no
TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from bt_tf.features import NUM_RESERVED, PAD_ID, SPLITS

__all__ = [
    "Pairs",
    "as_pairs",
    "as_ragged",
    "check_splits",
    "sample_label_fraction",
    "favorite_genre",
    "first_future_item",
    "liked_item_pairs",
    "item_counts",
    "users_with_pairs",
]


def sample_label_fraction(
    labels: np.ndarray, fraction: float, seed: int, *, stratify: bool = True
) -> np.ndarray:
    """Seeded sample of the users whose labels a probe may train on.

    Args:
      labels: ``[n]`` int labels of the users a probe may learn from only (the
        caller passes those, so scored users cannot leak); ``< 0`` = unknown,
        never taken.
      fraction: in ``(0, 1]``; ``1.0`` returns every labelled index.
      seed: same seed -> same sample. For a fixed seed the samples are NESTED
        across fractions (1% is a subset of 5%): each class is shuffled once by
        the seed and the first ``k`` members are taken.
      stratify: per class ``c`` with ``n_c`` labelled users take
        ``k_c = max(1, floor(fraction * n_c + 0.5))`` (round half up, so within
        0.5 of exact, and at least one per class present). If False (tasks with
        thousands of classes, e.g. next item, or per-user pair tasks), take
        ``k = max(1, floor(fraction * n + 0.5))`` users uniformly.

    Returns:
      Sorted int64 indices into ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    labelled = np.flatnonzero(labels >= 0)
    if fraction == 1.0 or not labelled.size:
        return labelled.astype(np.int64)
    rng = np.random.default_rng(seed)
    if not stratify:
        k = max(1, int(np.floor(fraction * labelled.size + 0.5)))
        return np.sort(rng.permutation(labelled)[:k]).astype(np.int64)
    taken = []
    for c in np.unique(labels[labelled]):
        members = labelled[labels[labelled] == c]
        k = min(members.size, max(1, int(np.floor(fraction * members.size + 0.5))))
        taken.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(taken)).astype(np.int64)


def as_ragged(values: Any, row_lengths: np.ndarray | None = None):
    """(flat [total], user_of_each [total], n) from a list of arrays, a padded
    ``[n, L]`` array (0 = padding is dropped), or flat values + row lengths."""
    if row_lengths is not None:
        flat = np.asarray(values).reshape(-1)
        lengths = np.asarray(row_lengths).astype(np.int64).reshape(-1)
        if lengths.sum() != flat.size:
            raise ValueError(
                f"row_lengths sum to {lengths.sum()} but there are {flat.size} values."
            )
        return flat, np.repeat(np.arange(lengths.size), lengths), lengths.size
    if isinstance(values, np.ndarray) and values.ndim == 2:
        r, _ = np.nonzero(values != PAD_ID)
        return values[values != PAD_ID], r, values.shape[0]
    rows = [np.asarray(v).reshape(-1) for v in values]
    lengths = np.array([r.size for r in rows], dtype=np.int64)
    flat = np.concatenate(rows) if rows else np.zeros(0)
    return flat, np.repeat(np.arange(len(rows)), lengths), len(rows)


def favorite_genre(genre_ids: Any, row_lengths: np.ndarray | None = None) -> np.ndarray:
    """Future favorite genre per user: the most frequent genre id among the
    genres of the user's future items (each item adds 1 to each of its genres).

    Args:
      genre_ids: per user, the flat genre ids of the future items
        (`features.FUTURE_GENRE_IDS`): a list of arrays, a padded ``[n, L]``
        array (0 = padding), or flat values with ``row_lengths``.
      row_lengths: ``[n]``, only with flat ``genre_ids``.

    Returns:
      ``[n]`` int64 labels. Ties -> the smallest genre id (vocabularies are
      frequency-ordered, so that is the genre most frequent in train). Reserved
      ids (pad/mask/OOV) are ignored; users without a genre get ``-1``.
    """
    flat, user, n = as_ragged(genre_ids, row_lengths)
    flat = flat.astype(np.int64)
    keep = flat >= NUM_RESERVED
    flat, user = flat[keep], user[keep]
    out = np.full(n, -1, dtype=np.int64)
    if not flat.size:
        return out
    pairs, counts = np.unique(np.stack([user, flat], axis=1), axis=0, return_counts=True)
    # Sort by user, then count descending, then genre ascending; first per user wins.
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    out[pairs[first, 0]] = pairs[first, 1]
    return out


def first_future_item(future_item_ids: Any) -> np.ndarray:
    """``[n]`` next-item targets: each user's first future item (0 if none).

    ``future_item_ids``: a list of arrays or a padded ``[n, L]`` array.
    """
    if isinstance(future_item_ids, np.ndarray) and future_item_ids.ndim == 2:
        return (
            future_item_ids[:, 0].astype(np.int64)
            if future_item_ids.shape[1]
            else (np.zeros(future_item_ids.shape[0], dtype=np.int64))
        )
    return np.array(
        [int(np.asarray(v).reshape(-1)[0]) if np.size(v) else PAD_ID for v in future_item_ids],
        dtype=np.int64,
    )


@dataclasses.dataclass(frozen=True)
class Pairs:
    """(user, item, label) triples of one split for the liked-item task.

    ``user_index [m]`` rows into that split's user embeddings, ``item_ids [m]``
    item vocab ids, ``labels [m]`` 1 = liked (rating >= threshold) else 0.
    """

    user_index: np.ndarray
    item_ids: np.ndarray
    labels: np.ndarray

    def subset(self, mask_or_index: np.ndarray) -> Pairs:
        return Pairs(
            self.user_index[mask_or_index],
            self.item_ids[mask_or_index],
            self.labels[mask_or_index],
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def liked_item_pairs(future_item_ids: Any, future_ratings: Any, *, threshold: float = 4.0) -> Pairs:
    """Liked-item labels from the future: one pair per future interaction,
    label ``rating >= threshold`` (ML: 4 stars; Yelp: 4.0).

    Inputs are lists of per-user arrays or padded ``[n, L]`` arrays (item 0 =
    padding). Pairs whose item is a reserved id (pad, mask, OOV: unknown to
    the train vocabulary, so no model has an embedding for it) are dropped.
    """
    items, user, _ = as_ragged(future_item_ids)
    if isinstance(future_ratings, np.ndarray) and future_ratings.ndim == 2:
        ratings = future_ratings[np.asarray(future_item_ids) != PAD_ID]
    else:
        ratings, _, _ = as_ragged(future_ratings)
    if ratings.shape != items.shape:
        raise ValueError(f"{items.size} future items but {ratings.size} ratings; they must align.")
    keep = items.astype(np.int64) >= NUM_RESERVED
    return Pairs(
        user[keep].astype(np.int64),
        items[keep].astype(np.int64),
        (ratings[keep] >= threshold).astype(np.int64),
    )


def item_counts(item_ids: Any, num_items: int) -> np.ndarray:
    """``[num_items]`` float64 occurrence counts (reserved ids count 0).

    ``item_ids``: a list of arrays or padded ``[n, L]`` (0 = padding), e.g. the
    train users' histories for the popularity floor.
    """
    flat, _, _ = as_ragged(item_ids)
    flat = flat.astype(np.int64)
    flat = flat[(flat >= NUM_RESERVED) & (flat < num_items)]
    return np.bincount(flat, minlength=num_items).astype(np.float64)


def as_pairs(value: Any) -> Pairs:
    """`Pairs` from `Pairs` or a mapping with the same fields."""
    if isinstance(value, Pairs):
        return value
    return Pairs(
        np.asarray(value["user_index"]).astype(np.int64),
        np.asarray(value["item_ids"]).astype(np.int64),
        np.asarray(value["labels"]).astype(np.int64),
    )


def check_splits(task: str, per_split: Mapping[str, Any]) -> None:
    """Raises unless ``per_split`` has labels of the train, eval and test users."""
    missing = [s for s in SPLITS if s not in per_split]
    if missing:
        raise ValueError(f"labels[{task!r}] lacks split(s) {missing}; need train, eval, test.")


def users_with_pairs(pairs: Pairs, n_users: int) -> np.ndarray:
    """``[n_users]`` 0 for users with at least one pair, -1 for the others."""
    has_pair = np.zeros(n_users, dtype=bool)
    has_pair[pairs.user_index] = True
    return np.where(has_pair, 0, -1)
