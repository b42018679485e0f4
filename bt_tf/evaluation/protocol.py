"""Who is scored and whose labels a probe may see: the evaluated population and its folds.

Two protocols (`Protocol`), both on the users of `eval_data.EvalData` pooled
into one population (`Population`: the splits in train, eval, test order):

- **cross-fitted** (``probe_folds = K >= 2``, the default): every user of
  ``users`` (default all three splits) is scored once per (fraction, seed).
  The users are dealt into K folds by a hash of their id (`fold_of`), so the
  folds do not depend on the model, the task or the label; fold k is scored
  by probes trained on labels of the OTHER folds only. No encoder ever reads
  a label: labels are each user's future interactions, encoders see
  histories only.
- **inductive** (``probe_folds`` 0 or 1): the old split: labels come from the
  train and eval users, the test users are scored.

Within a fold the labelled users are a seeded fraction f of the fold's pool
(`sample_fold_labels`); the probe is then selected by cross-validation inside
those labelled users only (`linear.select_and_fit`), so at label fraction f
nothing beyond f of the pool's labels reaches the probe or its selection.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse

from bt_tf.evaluation.labels import Pairs, as_pairs, sample_label_fraction
from bt_tf.features import SPLITS

__all__ = [
    "DEFAULT_PROBE_FOLDS",
    "Protocol",
    "Population",
    "Fold",
    "fold_of",
    "sample_fold_labels",
]

DEFAULT_PROBE_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class Population:
    """The users of some splits, concatenated in train, eval, test order.

    ``rows[split]`` is the slice of the population that holds ``split``'s users
    in file order, so a split's embeddings ``[n_split, d]`` stack into the
    population's ``[N, d]`` (`stack`).
    """

    splits: tuple[str, ...]
    user_ids: np.ndarray  # [N]
    split_of: np.ndarray  # [N] split names
    rows: Mapping[str, slice]

    @staticmethod
    def make(user_ids: Mapping[str, np.ndarray], splits: Sequence[str] = SPLITS) -> Population:
        splits = tuple(s for s in SPLITS if s in splits)
        rows, start = {}, 0
        for s in splits:
            rows[s] = slice(start, start + len(user_ids[s]))
            start += len(user_ids[s])
        ids = np.concatenate([np.asarray(user_ids[s], dtype=object) for s in splits])
        split_of = np.concatenate([np.full(len(user_ids[s]), s, dtype=object) for s in splits])
        return Population(splits, ids, split_of, rows)

    @property
    def size(self) -> int:
        return int(self.user_ids.size)

    def stack(self, per_split: Mapping[str, Any]):
        """``[N, ...]`` from per-split arrays (dense or scipy sparse), in population order."""
        parts = [per_split[s] for s in self.splits]
        if any(scipy.sparse.issparse(p) for p in parts):
            return scipy.sparse.vstack(parts, format="csr")
        return np.concatenate([np.asarray(p) for p in parts], axis=0)

    def stack_labels(self, per_split: Mapping[str, Any]):
        """One task's labels in population order: arrays are stacked, `Pairs` re-indexed."""
        first = per_split[self.splits[0]]
        if isinstance(first, Pairs) or isinstance(first, Mapping):
            pairs = [as_pairs(per_split[s]) for s in self.splits]
            offsets = [self.rows[s].start for s in self.splits]
            return Pairs(
                np.concatenate([p.user_index + o for p, o in zip(pairs, offsets)]),
                np.concatenate([p.item_ids for p in pairs]),
                np.concatenate([p.labels for p in pairs]),
            )
        return np.concatenate([np.asarray(per_split[s]).reshape(-1) for s in self.splits])


@dataclasses.dataclass(frozen=True)
class Fold:
    """One probe's users: labels may be sampled from ``pool``, ``scored`` are scored.

    Both are population rows; they never overlap.
    """

    index: int
    pool: np.ndarray
    scored: np.ndarray


def fold_of(user_ids: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` fold in ``0..k-1`` of each user: users ordered by the SHA-256 of
    their id, then dealt round-robin (balanced folds, stable under any change
    but the set of users)."""
    keys = [hashlib.sha256(_bytes(u)).digest() for u in user_ids]
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    fold = np.empty(len(keys), dtype=np.int64)
    fold[order] = np.arange(len(keys)) % k
    return fold


def _bytes(user) -> bytes:
    return user if isinstance(user, bytes) else str(user).encode()


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How users are split between labels and scores.

    Attributes:
        probe_folds: K >= 2: cross-fitted over ``users`` (every user scored
            once); 0 or 1: inductive (train + eval labelled, test scored).
        users: the splits pooled by the cross-fitted protocol (the tuner
            uses train and eval only, so that test users stay unread).
        inner_folds: cross-validation folds of the probe's selection, inside
            the labelled users (`linear.select_and_fit`).
    """

    probe_folds: int = DEFAULT_PROBE_FOLDS
    users: tuple[str, ...] = SPLITS
    inner_folds: int = 3

    def __post_init__(self):
        if self.probe_folds < 0 or self.inner_folds < 2:
            raise ValueError("probe_folds must be >= 0 and inner_folds >= 2")
        unknown = set(self.users) - set(SPLITS)
        if unknown or not self.users:
            raise ValueError(f"users={self.users}: expected a subset of {SPLITS}")

    @property
    def cross_fitted(self) -> bool:
        return self.probe_folds >= 2

    @property
    def name(self) -> str:
        return f"cross-fitted ({self.probe_folds} folds)" if self.cross_fitted else "inductive"

    def population_splits(self) -> tuple[str, ...]:
        return tuple(self.users) if self.cross_fitted else SPLITS

    def folds(self, population: Population) -> list[Fold]:
        """The folds over ``population`` (made with `population_splits`)."""
        if not self.cross_fitted:
            split = population.split_of
            pool = np.flatnonzero((split == "train") | (split == "eval"))
            return [Fold(0, pool, np.flatnonzero(split == "test"))]
        fold = fold_of(population.user_ids, self.probe_folds)
        return [
            Fold(k, np.flatnonzero(fold != k), np.flatnonzero(fold == k))
            for k in range(self.probe_folds)
        ]

    def describe(self) -> str:
        """The protocol in two sentences, for the report."""
        if self.cross_fitted:
            who = (
                f"Cross-fitted: the users of the {', '.join(self.users)} split(s) are dealt "
                f"into {self.probe_folds} folds by a hash of their id, and every user is "
                "scored once per (label fraction, seed) by probes trained on labels of the "
                "other folds only."
            )
        else:
            who = (
                "Inductive: probes are trained on labels of train and eval users and "
                "scored on the test users."
            )
        return (
            f"{who} At label fraction f, f of the fold's labelled users (seeded, stratified "
            "by class where the label is a class) keep their labels; the probe's "
            f"regularisation is chosen by {self.inner_folds}-fold cross-validation inside "
            "them (out-of-fold log-likelihood; the simplest candidate within the "
            "standard-error slack of the best wins, starting from the prior predictor) and "
            "refitted on all of them."
        )


def sample_fold_labels(
    labels: np.ndarray, fold: Fold, fraction: float, seed: int, *, stratify: bool = True
) -> np.ndarray:
    """Population rows of ``fold.pool`` that keep their labels at ``fraction``.

    ``labels``: ``[N]`` per-user labels of the population, ``< 0`` = none
    (never taken). Only the pool's labels are read; the sample is seeded by
    ``(seed, fold.index)`` and nested across fractions for a fixed seed
    (`labels.sample_label_fraction`).
    """
    pool_labels = np.asarray(labels)[fold.pool]
    picked = sample_label_fraction(
        pool_labels, fraction, [int(seed), fold.index], stratify=stratify
    )
    return fold.pool[picked]
