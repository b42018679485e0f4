"""Paired bootstrap intervals over users, and the claim's verdict (numpy, scipy).

Every figure of the report is a function of per-user contributions (the
``scores`` table, `tasks.Units`): HR / NDCG / correct per user, (label,
prediction) per user for balanced accuracy, scored (user, item) pairs for the
liked-item AUC. An interval resamples USERS with replacement (a user's pairs
go with the user) and, inside each resample, averages every model's metric
over its label seeds and pretraining seeds; every model is evaluated on the
same resampled users, so model-vs-model ratios and differences are paired.
`scipy.stats.bootstrap` draws the resamples (percentile intervals) of one
vector-valued statistic per task: each model's metric per (metric, fraction),
the ratios and differences of the comparisons, and the claim's ratio.

`claim_verdict` turns the task ratios into the verdict of the paper's claim
(`CLAIM_THRESHOLD`: BT at least 1.08 x DE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.stats

__all__ = [
    "CLAIM_THRESHOLD",
    "CLAIM_FRACTIONS",
    "DEFAULT_RESAMPLES",
    "Cell",
    "Comparison",
    "metric_kind",
    "task_intervals",
    "task_verdict",
    "claim_verdict",
]

CLAIM_THRESHOLD = 1.08  # the paper: 8-20% better than the dual encoder
CLAIM_FRACTIONS = (0.01, 0.05, 0.1)
DEFAULT_RESAMPLES = 2000
_BATCH = 100  # resamples per call of the statistic (memory: batch x users)


def metric_kind(task: str, metric: str) -> str:
    """How a metric is computed from units: ``user_mean`` (hr, ndcg, accuracy of a
    class), ``pair_mean`` (liked-item accuracy), ``balanced`` or ``auc``."""
    if metric == "balanced_accuracy":
        return "balanced"
    if metric == "auc":
        return "auc"
    if metric == "accuracy" and task.startswith("liked"):
        return "pair_mean"
    return "user_mean"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One model's metric at one fraction: the replicates (label seed x pretraining
    seed) of its per-unit values over the task's units.

    ``values [R, m]``: per unit (hit, gain, correct, or for AUC the score);
    ``labels [m]`` (balanced accuracy, AUC); ``unit_user [m]``: the user
    index (0..n-1) of each unit; ``group [m]``: the AUC is the mean of the
    AUCs within each group (the folds: each fold's probe has its own scale).
    """

    kind: str
    values: np.ndarray
    unit_user: np.ndarray
    labels: np.ndarray | None = None
    group: np.ndarray | None = None
    # What every resample reuses (one-hot labels, score orders), made on first use.
    _prepared: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def prepared(self, name: str, make):
        if name not in self._prepared:
            self._prepared[name] = make()
        return self._prepared[name]


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` how often each user is in each resample of indices ``idx [B, n]``."""
    idx = np.atleast_2d(np.asarray(idx, dtype=np.int64))
    b = idx.shape[0]
    flat = (idx + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _statistic(cell: Cell, w: np.ndarray) -> np.ndarray:
    """``[B]`` the metric of ``cell`` on user weights ``w [B, n]``, averaged over replicates."""
    wu = w[:, cell.unit_user]  # [B, m] the weight of each unit
    if cell.kind in ("user_mean", "pair_mean"):
        total = wu.sum(axis=1)
        return (wu @ cell.values.mean(axis=0)) / np.where(total > 0, total, np.nan)
    if cell.kind == "balanced":
        return _balanced(cell, wu)
    return _auc(cell, wu)


def _balanced(cell: Cell, wu: np.ndarray) -> np.ndarray:
    def make():
        classes, y = np.unique(cell.labels, return_inverse=True)
        onehot = np.zeros((y.size, classes.size))
        onehot[np.arange(y.size), y.reshape(-1)] = 1.0
        hits = (cell.values[:, :, None] * onehot[None]).transpose(1, 0, 2).reshape(y.size, -1)
        return onehot, hits

    onehot, hits = cell.prepared("balanced", make)
    den = wu @ onehot  # [B, C]
    r, c = cell.values.shape[0], onehot.shape[1]
    num = (wu @ hits).reshape(-1, r, c)  # [B, R, C]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = num / den[:, None, :]
    recall[np.broadcast_to(den[:, None, :] == 0, recall.shape)] = np.nan
    return np.nanmean(np.nanmean(recall, axis=2), axis=1)


def _auc(cell: Cell, wu: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (ties count 1/2) per row of ``wu``: the mean over groups of
    each group's AUC, averaged over replicates."""

    def make():
        group = np.zeros(cell.labels.size, np.int64) if cell.group is None else cell.group
        out = []
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            pos = cell.labels[rows].astype(bool)
            # Per replicate: a [units, distinct scores] indicator in ascending score order.
            orders = []
            for scores in cell.values[:, rows]:
                uniq, inverse = np.unique(scores, return_inverse=True)
                orders.append(scipy.sparse.csc_matrix(
                    (np.ones(rows.size), (np.arange(rows.size), inverse.reshape(-1))),
                    shape=(rows.size, uniq.size),
                ))  # fmt: skip
            out.append((rows, pos, orders))
        return out

    per_group = [_group_auc(wu[:, rows], pos, orders)
                 for rows, pos, orders in cell.prepared("auc", make)]  # fmt: skip
    return np.nanmean(np.stack(per_group), axis=0)


def _group_auc(wu: np.ndarray, pos: np.ndarray, orders) -> np.ndarray:
    wpos, wneg = wu * pos, wu * ~pos
    tot = wpos.sum(axis=1) * wneg.sum(axis=1)
    out = np.zeros(wu.shape[0])
    for g in orders:
        p = np.asarray(wpos @ g)  # [B, G] positive weight per score group
        q = np.asarray(wneg @ g)
        below = np.cumsum(q, axis=1) - q  # negative weight strictly below each group
        out += (p * (below + 0.5 * q)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / len(orders) / np.where(tot > 0, tot, np.nan)


def _bootstrap_users(statistic, n_users: int, n_resamples: int, seed: int, confidence: float):
    """(point, low, high) of the vector ``statistic(user indices)``: the percentile
    bootstrap over users (`scipy.stats.bootstrap`, resamples in batches of `_BATCH`)."""
    point = statistic(np.arange(n_users))
    res = scipy.stats.bootstrap(
        (np.arange(n_users),),
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        batch=_BATCH,
        random_state=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return point, lo, hi


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``model`` against ``reference`` on one (metric, fraction): ratio and difference."""

    metric: str
    fraction: float
    model: str
    reference: str
    ratio: float
    ratio_ci: tuple[float, float]
    difference: float
    difference_ci: tuple[float, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def task_intervals(
    cells: Mapping[tuple[str, float, str], Cell],
    n_users: int,
    comparisons: Sequence[tuple[str, str]],
    *,
    claim: tuple[str, str, str, Sequence[float]] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Point estimates and paired percentile intervals of one task.

    Args:
        cells: (metric, fraction, model) -> `Cell`, all over the same users.
        n_users: users of the task (the resampled units).
        comparisons: (model, reference) pairs, compared on every (metric,
            fraction) where both have a cell.
        claim: (metric, model, reference, fractions): also the mean over those
            fractions of model / reference.
        n_resamples, seed, confidence: of `scipy.stats.bootstrap`.

    Returns:
        ``{"cells": {(metric, fraction, model): (value, (lo, hi))},
        "comparisons": [Comparison], "claim": (ratio, (lo, hi)) or None}``.
    """
    keys = list(cells)
    pairs = [
        (key, (key[0], key[1], ref))
        for key in keys
        for model, ref in comparisons
        if key[2] == model and (key[0], key[1], ref) in cells
    ]
    index = {key: i for i, key in enumerate(keys)}
    claim_keys = []
    if claim is not None:
        metric, model, ref, fractions = claim
        claim_keys = [
            (index[(metric, f, model)], index[(metric, f, ref)])
            for f in fractions
            if (metric, f, model) in index and (metric, f, ref) in index
        ]
    a = np.array([index[p[0]] for p in pairs], dtype=np.int64)
    b = np.array([index[p[1]] for p in pairs], dtype=np.int64)

    def statistic(idx, axis=-1):
        w = _weights(idx, n_users)
        stats = np.stack([_statistic(cells[k], w) for k in keys], axis=0)  # [K, B]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = stats[a] / stats[b]
            parts = [stats, ratio, stats[a] - stats[b]]
            if claim_keys:
                ca, cb = (np.array(v) for v in zip(*claim_keys))
                parts.append(np.mean(stats[ca] / stats[cb], axis=0, keepdims=True))
        out = np.concatenate(parts, axis=0)
        return out[:, 0] if np.ndim(idx) == 1 else out

    point, lo, hi = _bootstrap_users(statistic, n_users, n_resamples, seed, confidence)
    k, p = len(keys), len(pairs)

    def ci(i):
        return _finite(lo[i]), _finite(hi[i])

    out = {"cells": {key: (_finite(point[i]), ci(i)) for i, key in enumerate(keys)}}
    out["comparisons"] = [
        Comparison(
            metric=ka[0], fraction=ka[1], model=ka[2], reference=kb[2],
            ratio=_finite(point[k + j]), ratio_ci=ci(k + j),
            difference=_finite(point[k + p + j]), difference_ci=ci(k + p + j),
        )
        for j, (ka, kb) in enumerate(pairs)
    ]  # fmt: skip
    out["claim"] = (_finite(point[-1]), ci(-1)) if claim_keys else None
    return out


def mean_ratios(
    groups: Sequence[Sequence[tuple[Cell, Cell]]],
    n_users: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[tuple[float, tuple[float, float]]]:
    """Model / reference ratios averaged within groups and over groups, one bootstrap.

    ``groups[g]``: (model cell, reference cell) pairs (e.g. one task's fractions),
    every cell's ``unit_user`` indexing the same ``n_users`` users, so one
    resample of users weights every group at once (paired across tasks too).

    Returns ``[(value, (lo, hi))]``: each group's mean ratio, then the mean over
    the groups.
    """
    if not groups or not all(groups):
        raise ValueError("mean_ratios needs at least one (model, reference) pair per group")

    def statistic(idx, axis=-1):
        w = _weights(idx, n_users)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group = [
                np.mean([_statistic(a, w) / _statistic(b, w) for a, b in pairs], axis=0)
                for pairs in groups
            ]
        out = np.stack([*per_group, np.mean(per_group, axis=0)], axis=0)  # [G + 1, B]
        return out[:, 0] if np.ndim(idx) == 1 else out

    point, lo, hi = _bootstrap_users(statistic, n_users, n_resamples, seed, confidence)
    return [(_finite(point[i]), (_finite(lo[i]), _finite(hi[i]))) for i in range(len(point))]


def _finite(v) -> float:
    v = float(v)
    return v if np.isfinite(v) else float("nan")


def task_verdict(ratio: float, ci: tuple[float, float], threshold: float = CLAIM_THRESHOLD) -> str:
    """``reproduced`` (ratio >= threshold and the interval's low end > 1), ``refuted``
    (its high end < threshold) or ``inconclusive``."""
    lo, hi = ci
    if np.isfinite(ratio) and ratio >= threshold and np.isfinite(lo) and lo > 1.0:
        return "reproduced"
    if np.isfinite(hi) and hi < threshold:
        return "refuted"
    return "inconclusive"


def claim_verdict(task_verdicts: Sequence[str], *, needed: int = 2) -> str:
    """``reproduced`` / ``refuted`` when at least ``needed`` tasks are, else ``inconclusive``."""
    for verdict in ("reproduced", "refuted"):
        if sum(v == verdict for v in task_verdicts) >= needed:
            return verdict
    return "inconclusive"
