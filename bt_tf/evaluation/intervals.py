"""Hierarchical paired bootstrap intervals, and the claim's verdict (numpy, scipy).

Every figure of the report is a function of per-user contributions (the
``scores`` table, `tasks.Units`): HR / NDCG / correct per user, (label,
prediction) per user for balanced accuracy, scored (user, item) pairs for the
liked-item AUC, each once per replicate (label seed x pretraining seed).

One resample draws, independently of one another (`Design`):

- the USERS, with replacement (a user's pairs go with the user); every model
  and every fraction (and, in `mean_ratios`, every task) is evaluated on the
  same resampled users, so model-vs-model ratios and differences are paired;
- the LABEL SEEDS, with replacement, once for all models: label seed s draws
  the same labelled users for every model and pretraining seed (and nested
  samples across fractions), so label seeds are crossed with models, not
  nested in them, and sharing the draw keeps the pairing that is really there;
- for EACH MODEL independently, its PRETRAINING SEEDS with replacement (BT's
  seed 0 and DE's seed 0 are unrelated trainings).

A cell's metric in a resample is the mean over its replicates weighted by how
often the resample drew their (pretraining seed, label seed), each replicate's
metric computed on the resampled users. Averaging the seeds inside a resample
without drawing them (the method before issue 23) leaves the spread between
seeds out of the interval; drawing them puts it in. With few seeds the
bootstrap still understates that part (a bootstrap of S values has variance
(S - 1) / S of theirs, and a percentile interval of 3 values cannot be
wider than their range), so the report also prints the per-seed ratios.

`scipy.stats.bootstrap` draws every level: its samples are the user indices,
the label-seed indices and each model's pretraining-seed indices, resampled
independently (``paired=False``), and the statistic maps the drawn indices to
user weights and replicate weights (percentile intervals). A level with one
member (one pretraining seed) is not resampled: it cannot vary, and the
interval then says nothing about it (the claim block says so: ``seeds``).

`claim_verdict` turns the task ratios into the verdict of the paper's claim
(`CLAIM_THRESHOLD`: BT at least 1.08 x DE).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.stats

__all__ = [
    "CLAIM_THRESHOLD",
    "CLAIM_FRACTIONS",
    "CLAIM_TASKS_NEEDED",
    "DEFAULT_RESAMPLES",
    "Cell",
    "Comparison",
    "Design",
    "metric_kind",
    "point_value",
    "task_intervals",
    "mean_ratios",
    "task_verdict",
    "claim_verdict",
]

CLAIM_THRESHOLD = 1.08  # the paper: 8-20% better than the dual encoder
CLAIM_FRACTIONS = (0.01, 0.05, 0.1)
CLAIM_TASKS_NEEDED = 2  # of the claim's three tasks, reproduced (refuted) for the verdict
DEFAULT_RESAMPLES = 2000
_BATCH = 100  # resamples per call of the statistic (memory: batch x users x replicates)


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
    ``model``: whose pretraining seeds the replicates come from (each model's
    are resampled apart); ``pretrain_seed [R]`` / ``label_seed [R]``: each
    replicate's seeds (None: one pretraining seed; the replicates of a pretraining seed
    are its label seeds 0, 1, ...).
    """

    kind: str
    values: np.ndarray
    unit_user: np.ndarray
    labels: np.ndarray | None = None
    group: np.ndarray | None = None
    model: str = ""
    pretrain_seed: np.ndarray | None = None
    label_seed: np.ndarray | None = None
    # What every resample reuses (one-hot labels, score orders), made on first use.
    _prepared: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def prepared(self, name: str, make):
        if name not in self._prepared:
            self._prepared[name] = make()
        return self._prepared[name]

    @property
    def replicates(self) -> int:
        return int(self.values.shape[0])

    def seeds(self, level: str) -> np.ndarray:
        """``[R]`` each replicate's ``"pretrain"`` or ``"label"`` seed."""
        given = self.pretrain_seed if level == "pretrain" else self.label_seed
        if given is not None:
            return np.asarray(given, dtype=np.int64).reshape(-1)
        if level == "pretrain":
            return np.zeros(self.replicates, np.int64)
        # Label seeds not given: the replicates of each pretraining seed are its 0, 1, ...
        pretrain = self.seeds("pretrain")
        return np.array([np.sum(pretrain[:r] == s) for r, s in enumerate(pretrain)], np.int64)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """``[B, n]`` how often each of ``0..n-1`` is in each resample of indices ``idx [B, k]``."""
    idx = np.atleast_2d(np.asarray(idx, dtype=np.int64))
    b = idx.shape[0]
    flat = (idx + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Design:
    """What one bootstrap resamples (the module docstring): ``n_users`` users, the
    ``label_seeds`` (shared by every model) and each model's ``pretrain_seeds``;
    ``resample_seeds=False`` draws the users only (seeds averaged inside each
    resample: the interval over users alone)."""

    n_users: int
    label_seeds: tuple[int, ...]
    pretrain_seeds: Mapping[str, tuple[int, ...]]
    resample_seeds: bool = True

    @staticmethod
    def of(cells: Sequence[Cell], n_users: int, resample_seeds: bool = True) -> Design:
        label = sorted({int(s) for c in cells for s in c.seeds("label")})
        pretrain: dict[str, set] = {}
        for c in cells:
            pretrain.setdefault(c.model, set()).update(int(s) for s in c.seeds("pretrain"))
        return Design(int(n_users), tuple(label),
                      {m: tuple(sorted(s)) for m, s in sorted(pretrain.items())},
                      resample_seeds)  # fmt: skip

    def _levels(self) -> list[tuple[str | None, int]]:
        """(level, size) of every resampled level after the users (two or more members):
        None for the label seeds, else the model whose pretraining seeds they are."""
        if not self.resample_seeds:
            return []
        out = [(None, len(self.label_seeds))] if len(self.label_seeds) > 1 else []
        return out + [(m, len(s)) for m, s in self.pretrain_seeds.items() if len(s) > 1]

    def data(self) -> tuple[np.ndarray, ...]:
        """`scipy.stats.bootstrap`'s samples: the index of every member of every level."""
        return (np.arange(self.n_users),) + tuple(np.arange(k) for _, k in self._levels())

    def draws(self, samples: Sequence[np.ndarray]) -> _Draws:
        """The drawn indices of `data` (``[B, k]`` each, or ``[k]`` for the point estimate)."""
        drawn = {name: np.atleast_2d(s) for (name, _), s in zip(self._levels(), samples[1:])}
        label = drawn.pop(None, None)
        return _Draws(_weights(samples[0], self.n_users), label, drawn)

    def describe(self) -> dict:
        """What the intervals resampled, for results.json."""
        return {
            "users": self.n_users,
            "label_seeds": len(self.label_seeds) if self.resample_seeds else 1,
            "pretrain_seeds": {m: len(s) if self.resample_seeds else 1
                               for m, s in self.pretrain_seeds.items()},  # fmt: skip
            "resampled": ["users", "label seeds (shared by every model)",
                          "pretraining seeds (per model)"]
            if self.resample_seeds else ["users"],
        }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Draws:
    """One batch of resamples: user weights ``w [B, n]`` and the drawn indices ``[B, k]``
    of the label seeds (None: not resampled) and of each model's pretraining seeds."""

    w: np.ndarray
    label: np.ndarray | None
    pretrain: Mapping[str, np.ndarray]

    def replicate_weights(self, cell: Cell) -> np.ndarray:
        """``[B, R]``: how often the resample drew each replicate's (pretraining seed,
        label seed). A cell with fewer members than its level (e.g. one label seed at
        fraction 1.0) maps draw j to its member ``j mod size``."""
        b = self.w.shape[0]
        out = np.ones((b, cell.replicates))
        for level, drawn in (("label", self.label), ("pretrain", self.pretrain.get(cell.model))):
            if drawn is None:
                continue
            members, pos = np.unique(cell.seeds(level), return_inverse=True)
            counts = _weights(drawn % members.size, members.size)  # [B, members]
            out *= counts[:, pos.reshape(-1)]
        return out


def _statistic(cell: Cell, w: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
    """``[B]`` the metric of ``cell`` on user weights ``w [B, n]``: the mean over its
    replicates weighted by ``v [B, R]`` (default: equal weights) of each replicate's
    metric."""
    per = _per_replicate(cell, w[:, cell.unit_user])
    if v is None:
        v = np.ones_like(per)
    ok = np.isfinite(per)
    den = (v * ok).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(ok, per, 0.0) * v).sum(axis=1) / np.where(den > 0, den, np.nan)


def _per_replicate(cell: Cell, wu: np.ndarray) -> np.ndarray:
    """``[B, R]`` the metric of each replicate on unit weights ``wu [B, m]``."""
    if cell.kind in ("user_mean", "pair_mean"):
        total = wu.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (wu @ cell.values.T) / np.where(total > 0, total, np.nan)
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
    return _nanmean(recall, axis=2)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """`np.nanmean` without the all-NaN warning (NaN there)."""
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, x, 0.0).sum(axis=axis) / np.where(n > 0, n, np.nan)


def _auc(cell: Cell, wu: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (ties count 1/2) per row of ``wu`` and replicate: the mean over
    groups of each group's AUC, ``[B, R]``."""

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
    return _nanmean(np.stack(per_group), axis=0)


def _group_auc(wu: np.ndarray, pos: np.ndarray, orders) -> np.ndarray:
    """``[B, R]`` the group's AUC per resample and replicate (one order per replicate)."""
    wpos, wneg = wu * pos, wu * ~pos
    tot = wpos.sum(axis=1) * wneg.sum(axis=1)
    out = np.zeros((wu.shape[0], len(orders)))
    for r, g in enumerate(orders):
        p = np.asarray(wpos @ g)  # [B, G] positive weight per score group
        q = np.asarray(wneg @ g)
        below = np.cumsum(q, axis=1) - q  # negative weight strictly below each group
        out[:, r] = (p * (below + 0.5 * q)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / np.where(tot > 0, tot, np.nan)[:, None]


def point_value(cell: Cell, pretrain_seed: int | None = None) -> float:
    """The cell's metric on all its users: the mean over its replicates, or over those
    of one ``pretrain_seed`` (NaN if it has none)."""
    w = np.ones((1, int(cell.unit_user.max(initial=-1)) + 1))
    v = np.ones((1, cell.replicates))
    if pretrain_seed is not None:
        v = (cell.seeds("pretrain") == int(pretrain_seed)).astype(np.float64)[None]
    return _finite(_statistic(cell, w, v)[0])


def _bootstrap(statistic, design: Design, n_resamples: int, seed: int, confidence: float):
    """(point, low, high) of the vector ``statistic(draws)``: the percentile bootstrap of
    every level of ``design`` (`scipy.stats.bootstrap`, unpaired samples resampled
    independently, in batches of `_BATCH`)."""
    data = design.data()

    def vectorized(*samples, axis=-1):
        return statistic(design.draws(samples))

    point = statistic(design.draws(data))[:, 0]
    with warnings.catch_warnings():
        # A statistic undefined in some resample (0 / 0: no hit for either model among
        # the drawn users) has no interval: NaN, which the report shows as n/a. scipy
        # warns about it in words meant for BCa.
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(
            data,
            vectorized,
            n_resamples=n_resamples,
            vectorized=True,
            paired=False,
            method="percentile",
            confidence_level=confidence,
            batch=_BATCH,
            random_state=np.random.default_rng(seed),
        )
    lo, hi = res.confidence_interval
    return point, np.atleast_1d(lo), np.atleast_1d(hi)


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
    resample_seeds: bool = True,
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
        resample_seeds: also draw the label and pretraining seeds (`Design`);
            False: users only.

    Returns:
        ``{"cells": {(metric, fraction, model): (value, (lo, hi))},
        "comparisons": [Comparison], "claim": (ratio, (lo, hi)) or None,
        "design": Design.describe()}``.
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
    design = Design.of(list(cells.values()), n_users, resample_seeds)

    def statistic(draws: _Draws):
        stats = np.stack([_statistic(cells[k], draws.w, draws.replicate_weights(cells[k]))
                          for k in keys], axis=0)  # fmt: skip  # [K, B]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = stats[a] / stats[b]
            parts = [stats, ratio, stats[a] - stats[b]]
            if claim_keys:
                ca, cb = (np.array(v) for v in zip(*claim_keys))
                parts.append(np.mean(stats[ca] / stats[cb], axis=0, keepdims=True))
        return np.concatenate(parts, axis=0)

    point, lo, hi = _bootstrap(statistic, design, n_resamples, seed, confidence)
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
    out["design"] = design.describe()
    return out


def mean_ratios(
    groups: Sequence[Sequence[tuple[Cell, Cell]]],
    n_users: int,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
) -> list[tuple[float, tuple[float, float]]]:
    """Model / reference ratios averaged within groups and over groups, one bootstrap.

    ``groups[g]``: (model cell, reference cell) pairs (e.g. one task's fractions),
    every cell's ``unit_user`` indexing the same ``n_users`` users, so one
    resample of users (and of each level of seeds, `Design`) weights every group
    at once (paired across tasks too).

    Returns ``[(value, (lo, hi))]``: each group's mean ratio, then the mean over
    the groups.
    """
    if not groups or not all(groups):
        raise ValueError("mean_ratios needs at least one (model, reference) pair per group")
    design = Design.of([c for pairs in groups for pair in pairs for c in pair], n_users,
                       resample_seeds)  # fmt: skip

    def value(cell: Cell, draws: _Draws) -> np.ndarray:
        return _statistic(cell, draws.w, draws.replicate_weights(cell))

    def statistic(draws: _Draws):
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group = [
                np.mean([value(a, draws) / value(b, draws) for a, b in pairs], axis=0)
                for pairs in groups
            ]
        return np.stack([*per_group, np.mean(per_group, axis=0)], axis=0)  # [G + 1, B]

    point, lo, hi = _bootstrap(statistic, design, n_resamples, seed, confidence)
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


def claim_verdict(
    task_verdicts: Sequence[str], *, needed: int = CLAIM_TASKS_NEEDED, missing: int = 0
) -> str:
    """``reproduced`` / ``refuted`` when at least ``needed`` tasks are, else
    ``inconclusive``; always ``inconclusive`` with a ``missing`` task (2 of 3 never
    becomes 2 of 2)."""
    if missing:
        return "inconclusive"
    for verdict in ("reproduced", "refuted"):
        if sum(v == verdict for v in task_verdicts) >= needed:
            return verdict
    return "inconclusive"
