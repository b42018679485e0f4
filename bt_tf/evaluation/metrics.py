"""Downstream metrics on plain numpy arrays: full-catalog ranking and classification.

Ranking (next-item prediction) is over the FULL item catalog, no sampled
negatives. One relevant item per user (the first future item), so with the
1-based rank ``r`` of that item:

    HR@k   = 1[r <= k]
    NDCG@k = 1[r <= k] / log2(r + 1)      (the ideal DCG is 1)

Conventions (identical for every model and floor, so comparisons are fair):

* Reserved ids 0/1/2 (pad/mask/OOV, `bt_tf.features`) are never ranked.
* ``exclude`` is a padded ``[n, L]`` int array of item ids removed from the
  user's ranking (e.g. the history); 0 is padding. If the target itself is
  listed in ``exclude`` it is removed too and the user counts as a miss.
* A target that is a reserved id (e.g. an OOV future item, unknown to the
  train vocabulary) cannot be recommended and counts as a miss (rank = inf).
* Ties are PESSIMISTIC and deterministic: the target is ranked after every
  other rankable item with the same score, ``r = 1 + #{score > s_t} +
  #{score == s_t, other items}``. A constant scorer therefore gets the worst
  possible rank, never a lucky one.

``scores`` may be an array ``[n, num_items]`` or, when the full matrix would
not fit in memory (100k users x 30k items), a callable ``scores(start, stop)``
returning rows ``start:stop``; either way rows are processed in chunks of
``chunk_size`` so memory stays ``O(chunk_size * num_items)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bt_tf.features import NUM_RESERVED

ScoreSource = np.ndarray | Callable[[int, int], np.ndarray]

__all__ = [
    "target_ranks",
    "hits_at_k",
    "ndcg_gains_at_k",
    "hit_rate_at_k",
    "ndcg_at_k",
    "ranking_metrics",
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "majority_class",
]


def _score_rows(scores: ScoreSource, start: int, stop: int) -> np.ndarray:
    rows = scores(start, stop) if callable(scores) else scores[start:stop]
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] != stop - start:
        raise ValueError(
            f"scores rows {start}:{stop} have shape {rows.shape}; expected "
            f"[{stop - start}, num_items]. Pass a 2-D array [n, num_items] or a "
            "callable (start, stop) -> array of that shape."
        )
    return rows


def target_ranks(
    scores: ScoreSource,
    targets: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    chunk_size: int = 256,
) -> np.ndarray:
    """1-based full-catalog rank of each user's target item (pessimistic ties).

    Args:
      scores: ``[n, num_items]`` scores (higher = better; column j = item id j),
        or a callable ``(start, stop) -> [stop - start, num_items]``.
      targets: ``[n]`` int item ids (one relevant item per user).
      exclude: optional padded ``[n, L]`` int item ids to remove from each
        user's ranking (0 = padding), or a scipy sparse ``[n, num_items]`` matrix
        whose nonzero entries are the items to remove.
      chunk_size: rows processed at once (a copy of chunk_size * num_items,
        float32 scores as float32, others as float64: 256 x 30k items = 61 MB).

    Returns:
      ``[n]`` float64 ranks in ``1..num_rankable``; ``inf`` where the target
      cannot be ranked (reserved id, excluded, or out of range).
    """
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    n = targets.shape[0]
    sparse_exclude = exclude is not None and hasattr(exclude, "tocsr")
    if sparse_exclude:
        exclude = exclude.tocsr()
        if exclude.shape[0] != n:
            raise ValueError(f"exclude has {exclude.shape[0]} rows, targets {n}.")
    elif exclude is not None:
        exclude = np.asarray(exclude).astype(np.int64)
        if exclude.ndim != 2 or exclude.shape[0] != n:
            raise ValueError(
                f"exclude must be a padded [n, L] int array with n={n} rows (0 = "
                f"padding); got shape {exclude.shape}."
            )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    ranks = np.full(n, np.inf)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        rows_in = _score_rows(scores, start, stop)
        # a copy; float32 scores stay float32 (the comparisons are the same, at half the
        # memory traffic), anything else becomes float64
        dtype = np.float32 if rows_in.dtype == np.float32 else np.float64
        s = np.array(rows_in, dtype=dtype)
        if np.isnan(s).any():
            raise ValueError(f"scores rows {start}:{stop} contain NaN.")
        num_items = s.shape[1]
        s[:, :NUM_RESERVED] = -np.inf  # reserved ids are never ranked
        rows = np.arange(stop - start)
        if sparse_exclude:
            r, c = exclude[start:stop].nonzero()
            inside = c < num_items
            s[r[inside], c[inside]] = -np.inf
        elif exclude is not None:
            ex = exclude[start:stop]
            r, c = np.nonzero((ex > 0) & (ex < num_items))
            s[r, ex[r, c]] = -np.inf
        t = targets[start:stop]
        valid = (t >= NUM_RESERVED) & (t < num_items)
        t_score = np.full(stop - start, -np.inf, dtype=s.dtype)
        t_score[valid] = s[rows[valid], t[valid]]
        valid &= t_score != -np.inf  # excluded (or scored -inf by the caller)
        greater = (s > t_score[:, None]).sum(axis=1)
        equal_others = (s == t_score[:, None]).sum(axis=1) - 1
        chunk_ranks = 1.0 + greater + equal_others
        ranks[start:stop] = np.where(valid, chunk_ranks, np.inf)
    return ranks


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k from 1-based ranks: ``1.0`` if rank <= k else ``0.0``."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_gains_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: ``1/log2(rank+1)`` if rank <= k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    out = np.zeros_like(ranks)
    out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return out


def _mean_at_k(gains: Callable[[np.ndarray, int], np.ndarray], name: str, doc: str):
    """A metric ``(scores, targets, k=10, exclude=None, *, chunk_size=256) -> float``:
    the mean over users of ``gains(ranks, k)``, NaN without users."""

    def metric(
        scores: ScoreSource,
        targets: np.ndarray,
        k: int = 10,
        exclude: np.ndarray | None = None,
        *,
        chunk_size: int = 256,
    ) -> float:
        ranks = target_ranks(scores, targets, exclude=exclude, chunk_size=chunk_size)
        return float(gains(ranks, k).mean()) if ranks.size else float("nan")

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = doc
    return metric


hit_rate_at_k = _mean_at_k(
    hits_at_k,
    "hit_rate_at_k",
    "Mean HR@k over users, full catalog (see module docstring for conventions).",
)
ndcg_at_k = _mean_at_k(
    ndcg_gains_at_k,
    "ndcg_at_k",
    "Mean NDCG@k over users, one relevant item each, full catalog.",
)


def ranking_metrics(
    scores: ScoreSource,
    targets: np.ndarray,
    *,
    ks: Sequence[int] = (10,),
    exclude: np.ndarray | None = None,
    chunk_size: int = 256,
) -> Mapping[str, float]:
    """``{"hr@k": ..., "ndcg@k": ...}`` for every k, ranking each user once."""
    ranks = target_ranks(scores, targets, exclude=exclude, chunk_size=chunk_size)
    out = {}
    for k in ks:
        out[f"hr@{k}"] = float(hits_at_k(ranks, k).mean())
        out[f"ndcg@{k}"] = float(ndcg_gains_at_k(ranks, k).mean())
    return out


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of ``y_pred == y_true`` (both ``[n]`` int)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape}, y_pred {y_pred.shape}.")
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    A majority-class predictor scores ``1 / #classes present``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape}, y_pred {y_pred.shape}.")
    if not y_true.size:
        return float("nan")
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (ties count 1/2, sklearn); ``nan`` if one class only."""
    from sklearn.metrics import roc_auc_score  # lazy: scikit-learn only for the AUC

    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape}, scores {scores.shape}.")
    if np.unique(y_true).size < 2:
        return float("nan")
    return float(roc_auc_score(y_true, scores))


def majority_class(labels: np.ndarray) -> int:
    """Most frequent label among ``labels >= 0``; ties -> the smallest label.

    Raises ValueError if there is no non-negative label.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    labels = labels[labels >= 0]
    if not labels.size:
        raise ValueError("majority_class needs at least one label >= 0 (-1 = unknown).")
    values, counts = np.unique(labels, return_counts=True)  # values sorted ascending
    return int(values[np.argmax(counts)])  # argmax takes the first (smallest) tie
