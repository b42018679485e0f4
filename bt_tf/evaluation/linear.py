"""Converged, L2-regularized probes and their selection by cross-validation (numpy, scipy).

Two probe families, fitted to convergence by L-BFGS (`scipy.optimize.minimize`),
with the L2 convention of scikit-learn (``C`` fixed, penalty ``||W||^2 / (2 C)``
against the SUM of the per-row losses, so more labels mean relatively less
shrinkage):

- `SoftmaxFamily`: multinomial logistic regression ``softmax(x W + b)`` on
  user (or pair) features; the intercept ``b`` is not penalized but carries
  ``smoothing`` pseudo-observations per class (add-1/2), so that a class absent
  from a small training fold keeps a finite probability. With ``W = 0`` it is
  the prior (majority-class) predictor.
- `BilinearFamily`: next item over the whole catalog, ``score(u, i) = a s0(u, i)
  + u' dW e_i + b log pop_i`` with the contender's own item vectors ``e_i``
  (``s0 = u . e_i``) or, for bag-of-items, the item-kNN score ``s0``; ``a`` and
  ``b`` are free, ``dW`` (``d x e``) is penalized. Its parameter count does
  not grow with the catalog, so it can learn from a few dozen labelled users.
  With ``a = 0, dW = 0`` it is the popularity ranking.

`select_and_fit` picks one candidate (the prior predictor, then ``C`` values
from the strongest penalty to the weakest) by K-fold cross-validation INSIDE
the labelled rows it is given: the per-row out-of-fold log-likelihood of each
candidate, and the simplest candidate within ``se_rule`` standard errors of
the best. Nothing else reaches it, so at label fraction f it sees f of the
labels and nothing more.

Why hand-written and not `sklearn.linear_model.LogisticRegressionCV`: the
softmax family needs the add-1/2 intercept prior (a class missing from an
inner fold must not get probability 0), the selection walks a path with warm
starts and the standard-error rule starting from the prior predictor, and the
bilinear family is not a model scikit-learn has. `tests/test_linear.py` checks
the softmax fit against scikit-learn's `LogisticRegression` at equal ``C``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse

from bt_tf.features import NUM_RESERVED

__all__ = [
    "PRIOR",
    "DEFAULT_C_GRID",
    "DEFAULT_INNER_FOLDS",
    "SoftmaxFamily",
    "BilinearFamily",
    "PairBlock",
    "ItemSample",
    "item_sample",
    "Selection",
    "inner_folds",
    "select_and_fit",
    "candidate_name",
]

PRIOR = -1.0  # the candidate "prior predictor" (no feature weight)
# C values from the strongest penalty to the weakest (features standardized).
DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_INNER_FOLDS = 3
_SUBSAMPLE_STREAM = 0x5E1  # `selection_subsample`'s stream of a selection's seed
# Scores per row block of the next-item evaluations (float32: 4 MB, cache-sized).
_BLOCK = 1 << 20
_LBFGS = dict(maxiter=300, gtol=1e-6, ftol=1e-9)
# float32 scores: a loss known to ~1e-7 cannot meet a 1e-9 relative decrease.
_BILINEAR_TOLERANCE = dict(gtol=1e-4, ftol=1e-6)


def logsumexp(z: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``log(sum(exp(z)))`` along ``axis``, stable (``scipy.special.logsumexp`` takes
    ~1 ms for a 300 x 5 array, 100x this, and the fits call it thousands of times)."""
    m = np.max(z, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m
    return out.reshape(()) if axis is None else np.squeeze(out, axis=axis)


def candidate_name(c: float) -> str:
    """``"prior"``, ``"C=0"`` (bilinear: scale terms only) or ``"C=<value>"``."""
    return "prior" if c == PRIOR else f"C={c:g}"


def _minimize(fun, x0: np.ndarray, **tolerance) -> np.ndarray:
    # Run it with one BLAS thread (the evaluation's probe workers do:
    # `probing.probe_job`): L-BFGS-B's own small vector operations through a
    # multi-threaded OpenBLAS took 25x longer on 2 busy cores (0.17 s instead of
    # 7 ms for an 85-parameter quadratic). Not set here: `threadpool_limits` costs
    # 2-20 ms per call (it finds the loaded libraries anew), more than most fits.
    options = dict(_LBFGS, **tolerance)
    return scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options).x


# --------------------------------------------------------------------------
# Multinomial logistic regression


@dataclasses.dataclass(frozen=True)
class OneHotBlock:
    """Features ``[x, onehot(ids)]`` kept in two parts: ``x [m, F]`` (dense or sparse)
    and the column ``ids [m]`` of a one-hot block of ``width`` columns (the liked-item
    per-item bias). Products with it are a dense (or sparse) product plus a gather
    or a `np.add.at`, far cheaper than the same matrix stored as CSR."""

    x: Any
    ids: np.ndarray
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.x.shape[1] + self.width

    def __getitem__(self, rows) -> OneHotBlock:
        return OneHotBlock(self.x[rows], self.ids[rows], self.width)


@dataclasses.dataclass(frozen=True)
class PairBlock:
    """(user, item) pair features ``[u_user, v_item, x, onehot(item)]`` kept factored.

    ``users [N, d]`` (dense or sparse) and ``items [V, e]`` are per user and per item,
    indexed by each pair's ``user_index`` and ``item_ids``; ``x [m, p]`` holds the
    per-pair columns (e.g. ``u * v``); ``width`` one-hot columns of the item follow.
    Products go through the N users' and V items' rows instead of m pairs' copies of
    them, so a fit reads ``m x p`` per-pair floats per step instead of ``m x (d + e +
    p)`` (the liked-item probe's features: a third).
    """

    users: Any
    items: np.ndarray
    x: np.ndarray
    user_index: np.ndarray
    item_ids: np.ndarray
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        d, e, p = self.parts()
        return self.x.shape[0], d + e + p + self.width

    def __getitem__(self, rows) -> PairBlock:
        return dataclasses.replace(
            self, x=self.x[rows], user_index=self.user_index[rows], item_ids=self.item_ids[rows]
        )

    @property
    def ids(self) -> np.ndarray:
        """The one-hot block's item of each pair (as `OneHotBlock.ids`)."""
        return self.item_ids

    def parts(self) -> tuple[int, int, int]:
        return self.users.shape[1], self.items.shape[1], self.x.shape[1]


def _group_sums(index: np.ndarray, g: np.ndarray, size: int) -> np.ndarray:
    """``[size, k]`` sums of the rows of ``g [m, k]`` by ``index [m]`` (a bincount per
    column: the sums of ``np.add.at``, 10x faster)."""
    out = np.zeros((size, g.shape[1]))
    for j in range(g.shape[1] if size else 0):
        out[:, j] = np.bincount(index, weights=g[:, j], minlength=size)
    return out


def _dot(x, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for dense, sparse, `OneHotBlock` or `PairBlock` features."""
    if isinstance(x, PairBlock):
        d, e, p = x.parts()
        out = _dot(x.x, w[d + e : d + e + p])
        if d:
            out = out + np.asarray(x.users @ w[:d])[x.user_index]
        if e:
            out = out + (x.items @ w[d : d + e])[x.item_ids]
        return out + w[d + e + p :][x.item_ids] if x.width else out
    if isinstance(x, OneHotBlock):
        f = x.x.shape[1]
        out = _dot(x.x, w[:f])
        return out + w[f:][x.ids] if x.width else out
    return np.asarray(x @ w)


def _tdot(x, g: np.ndarray) -> np.ndarray:
    """``x.T @ g`` for dense, sparse, `OneHotBlock` or `PairBlock` features."""
    if isinstance(x, PairBlock):
        d, e, _ = x.parts()
        by_item = _group_sums(x.item_ids, g, x.items.shape[0]) if (e or x.width) else None
        parts = []
        if d:
            by_user = _group_sums(x.user_index, g, x.users.shape[0])
            parts.append(np.asarray(x.users.T @ by_user))
        if e:
            parts.append(x.items.T @ by_item)
        parts.append(_tdot(x.x, g))
        if x.width:
            parts.append(by_item[: x.width])
        return np.concatenate(parts, axis=0)
    if isinstance(x, OneHotBlock):
        return np.concatenate([_tdot(x.x, g), _group_sums(x.ids, g, x.width)], axis=0)
    return np.asarray(x.T @ g)


class SoftmaxFamily:
    """Multinomial logistic regression on rows of ``x``.

    Args:
        x: ``[n, F]`` features (dense float, or scipy sparse), already scaled.
        y: ``[n]`` int labels in ``[0, num_classes)``.
        num_classes: label range. Only the classes present among the rows a
            fit is given count: the intercept prior spreads its pseudo-counts
            over those (`fit`'s ``classes``), others get probability 0.
        smoothing: pseudo-observations per class on the intercept (add-1/2).

    Parameters are ``(W [F, K'], b [K'])`` over ``K'`` classes; a fit returns
    them with the class ids (`SoftmaxFit`).
    """

    def __init__(self, x, y: np.ndarray, num_classes: int, *, smoothing: float = 0.5):
        if scipy.sparse.issparse(x):
            x = x.tocsr()
        elif not isinstance(x, (OneHotBlock, PairBlock)):
            x = np.asarray(x, dtype=np.float64)
        self.x = x
        self.y = np.asarray(y, dtype=np.int64).reshape(-1)
        self.num_classes = int(num_classes)
        self.smoothing = float(smoothing)
        if self.x.shape[0] != self.y.size:
            raise ValueError(f"x has {self.x.shape[0]} rows, y {self.y.size}.")

    def classes(self, rows: np.ndarray) -> np.ndarray:
        """The classes a fit on ``rows`` predicts among (those of its labels)."""
        return np.unique(self.y[rows])

    def fit(self, rows: np.ndarray, c: float, classes: np.ndarray, init=None) -> SoftmaxFit:
        """The penalized maximum-likelihood fit on ``rows`` over ``classes`` (``PRIOR``: W = 0)."""
        k = classes.size
        col = np.searchsorted(classes, self.y[rows])
        counts = np.bincount(col, minlength=k).astype(np.float64) + self.smoothing
        prior_b = np.log(counts / counts.sum())
        f = self.x.shape[1]
        if c == PRIOR or f == 0:
            return SoftmaxFit(np.zeros((f, k)), prior_b, classes)
        x = self.x[rows]
        n = rows.size
        onehot = np.zeros((n, k))
        onehot[np.arange(n), col] = 1.0
        s = self.smoothing
        # L-BFGS runs on v = w / scale (per feature): the same optimum, each weight's
        # curvature about that of a standardized feature's
        scale = _preconditioner(x, c)[:, None]

        def fun(theta):
            w, b = theta[: f * k].reshape(f, k) * scale, theta[f * k :]
            z = _dot(x, w) + b
            lse = logsumexp(z, axis=1)
            lb = logsumexp(b)
            loss = (lse.sum() - (z * onehot).sum()) + s * (k * lb - b.sum())
            loss += 0.5 / c * (w * w).sum()
            g = np.exp(z - lse[:, None]) - onehot
            gw = (_tdot(x, g) + w / c) * scale
            gb = g.sum(axis=0) + s * (k * np.exp(b - lb) - 1.0)
            return loss / n, np.concatenate([gw.ravel(), gb]) / n

        if init is not None and np.array_equal(init.classes, classes):
            x0 = np.concatenate([(init.w / scale).ravel(), init.b])
        else:
            x0 = np.concatenate([np.zeros(f * k), prior_b])
        theta = _minimize(fun, x0)
        return SoftmaxFit(theta[: f * k].reshape(f, k) * scale, theta[f * k :], classes)

    def log_lik(self, fit: SoftmaxFit, rows: np.ndarray) -> np.ndarray:
        """``[m]`` log-probability of each row's label (-inf when its class is not in the fit)."""
        z = fit.logits(self.x[rows])
        lse = logsumexp(z, axis=1)
        y = self.y[rows]
        col = np.minimum(np.searchsorted(fit.classes, y), fit.classes.size - 1)
        known = fit.classes[col] == y
        out = np.full(rows.size, -np.inf)
        out[known] = z[np.flatnonzero(known), col[known]] - lse[known]
        return out


def _column_squares(x) -> np.ndarray:
    """``[F]`` sum of squares of each feature column of ``x`` (dense, sparse, `OneHotBlock`,
    `PairBlock`)."""
    if isinstance(x, PairBlock):
        d, e, _ = x.parts()
        per_item = np.bincount(x.item_ids, minlength=x.items.shape[0]).astype(np.float64)
        parts = []
        if d:
            per_user = np.bincount(x.user_index, minlength=x.users.shape[0]).astype(np.float64)
            squares = x.users.multiply(x.users) if scipy.sparse.issparse(x.users) else x.users**2
            parts.append(np.asarray(squares.T @ per_user, dtype=np.float64).reshape(-1))
        if e:
            parts.append((x.items**2).T @ per_item)
        parts.append(_column_squares(x.x))
        if x.width:
            parts.append(per_item[: x.width])
        return np.concatenate(parts)
    if isinstance(x, OneHotBlock):
        return np.concatenate([_column_squares(x.x), np.bincount(x.ids, minlength=x.width)])
    if scipy.sparse.issparse(x):
        return np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).reshape(-1)
    return np.einsum("ij,ij->j", x, x)


def _preconditioner(x, c: float) -> np.ndarray:
    """``[F]`` scales that make a softmax fit's weights about equally curved: a weight's
    curvature is about ``sum_r x_rj^2 p(1 - p) + 1/C``, so a rare one-hot item or a
    small sparse feature is far flatter than a standardized feature, which slows
    L-BFGS down (on ML-100K's liked-item pairs, 126 function evaluations per fit).
    Fitting ``v = w / scale`` instead changes nothing but the path to the optimum."""
    n = x.shape[0]
    h = _column_squares(x) / 4.0 + 1.0 / c
    return np.sqrt((n / 4.0 + 1.0 / c) / h)


@dataclasses.dataclass(frozen=True)
class SoftmaxFit:
    """A fitted `SoftmaxFamily` member: weights ``w [F, K']``, intercept ``b [K']``
    over ``classes``."""

    w: np.ndarray
    b: np.ndarray
    classes: np.ndarray

    @property
    def is_prior(self) -> bool:
        return not np.any(self.w)

    def logits(self, x) -> np.ndarray:
        """``[m, K']`` logits of feature rows ``x``."""
        return _dot(x, self.w) + self.b

    def predict(self, x) -> np.ndarray:
        """``[m]`` class ids (argmax; ties -> the smaller class id)."""
        return self.classes[np.argmax(self.logits(x), axis=1)]


# --------------------------------------------------------------------------
# Next item: bilinear scores over the catalog


@dataclasses.dataclass(frozen=True)
class ItemSample:
    """The items a next-item fit's softmax runs over (`item_sample`).

    ``ids [S]`` item ids, ``log_q [S]`` the log of each one's inclusion
    probability (0: always included). `BilinearFamily` estimates the softmax's
    normalizer ``Z_r = sum_i exp(s_ri)`` (over the items that can be row r's
    answer) by ``exp(s_rt) + sum_{j in ids, j != t} exp(s_rj - log_q_j)``: the
    target's own term exactly, the others by Horvitz-Thompson (unbiased for
    their sum; the "logQ correction" of sampled softmax). ``exact``: every
    item is in ``ids``, so that is the full softmax.
    """

    ids: np.ndarray
    log_q: np.ndarray
    exact: bool

    @property
    def size(self) -> int:
        return int(self.ids.size)


def item_sample(log_popularity: np.ndarray, size: int, seed) -> ItemSample:
    """``size`` catalog items (reserved ids never) drawn with probability proportional to
    their popularity ``exp(log_popularity)``, without replacement, seeded.

    Systematic probability-proportional-to-size sampling (Madow 1949): item j is
    included with probability exactly ``pi_j = min(1, k p_j)`` (``k`` such that the
    ``pi`` sum to ``size``), so the items with ``k p_j >= 1`` (the head of the
    catalog, where a popularity-led softmax puts most of its mass) are always in
    and the tail is represented by a weighted sample. ``size <= 0`` or at least half
    the catalog (where a sample would save less than half the work): every item
    (`ItemSample.exact`).
    """
    real = np.arange(NUM_RESERVED, np.asarray(log_popularity).size)
    if size <= 0 or 2 * size >= real.size:
        return ItemSample(real, np.zeros(real.size, np.float32), True)
    lp = np.asarray(log_popularity, dtype=np.float64)[real]
    pi = _inclusion_probabilities(np.exp(lp - lp.max()), int(size))
    rng = np.random.default_rng(seed)
    order = rng.permutation(real.size)
    cum = np.cumsum(pi[order])
    cum *= size / cum[-1]  # exactly `size` unit steps despite rounding
    points = rng.random() + np.arange(size)
    picked = np.unique(order[np.minimum(np.searchsorted(cum, points, side="right"), real.size - 1)])
    return ItemSample(real[picked], np.log(pi[picked]).astype(np.float32), False)


def _inclusion_probabilities(weights: np.ndarray, size: int) -> np.ndarray:
    """``min(1, k w)`` summing to ``size``: the ``h`` largest weights capped at 1, ``k``
    spreading the rest over the others (the smallest ``h`` that leaves every
    uncapped ``k w < 1``)."""
    order = np.argsort(-weights, kind="stable")
    w = weights[order]
    tail = np.cumsum(w[::-1])[::-1]  # tail[h] = sum of w[h:]
    h = np.arange(min(size, w.size))
    k = (size - h) / tail[h]
    capped = int(np.flatnonzero(k * w[h] < 1.0)[0])
    pi = np.empty_like(weights)
    pi[order] = np.minimum(1.0, k[capped] * w)
    pi[order[:capped]] = 1.0
    return pi


class BilinearFamily:
    """Next-item probe: a softmax over the catalog of ``a s0 + u' dW e + b log pop``.

    Args:
        users: ``[N, d]`` dense user vectors (scaled), or None.
        items: ``[V, e]`` the contender's item vectors, or None.
        targets: ``[N]`` next-item ids (only the rows a fit is given are read).
        log_popularity: ``[V]`` log of the smoothed item counts of the
            label-free histories (the prior ranking).
        exclude: ``[N, L]`` item ids that can never be a row's answer (its
            history; 0 = padding), masked in training and in scoring. A row
            whose target is among them cannot be learnt from: `fit` must not
            be given it (its `log_lik` is -inf).
        base: base scores ``s0`` of the catalog (bag-of-items: item-kNN), an
            object with ``base(rows, cols=None) -> [m, |cols|]`` (None: every
            item) and ``base.at(rows, items) -> [m]``; default ``s0 = u . e``
            when users and items have one width.
        sample: the items the fits' softmax runs over (`item_sample`; default
            every item: the exact softmax). Only `fit` and `log_lik` (the
            selection) use it; `logits` and `score_fn` (the metric) always
            score the full catalog.

    Parameters: ``theta = [a, b, dW.ravel()]``. ``c == PRIOR`` fits ``b``
    alone (the popularity ranking, sharpened); ``c == 0`` fits ``a`` and
    ``b``; ``c > 0`` also ``dW``, penalized by ``||dW||^2 / (2 c)`` (needs
    users and items). With ``s0 = u . e`` the scores are ``(a u + u dW) E' +
    b log pop``: per evaluation, one ``[m, e] x [e, S]`` product forward and one
    back, in float32, over row blocks of about `_BLOCK` scores.
    """

    def __init__(
        self,
        users: np.ndarray | None,
        items: np.ndarray | None,
        targets: np.ndarray,
        log_popularity: np.ndarray,
        exclude: np.ndarray | None = None,
        base=None,
        sample: ItemSample | None = None,
    ):
        self.users = None if users is None else np.asarray(users, dtype=np.float32)
        self.items = None if items is None else np.asarray(items, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.log_pop = np.asarray(log_popularity, dtype=np.float32).reshape(-1)
        self.exclude = exclude
        self.base = base
        self.dot = base is None and self.can_dw and self.users.shape[1] == self.items.shape[1]
        self.sample = sample if sample is not None else item_sample(self.log_pop, 0, 0)
        self._states: dict[bool, _SampleState] = {}

    @property
    def num_items(self) -> int:
        return int(self.log_pop.size)

    @property
    def can_dw(self) -> bool:
        return self.users is not None and self.items is not None

    @property
    def has_scale(self) -> bool:
        """Whether there is a base score ``s0`` (so the candidate ``c = 0`` exists)."""
        return self.dot or self.base is not None

    def candidates(self, c_grid: Sequence[float]) -> list[float]:
        """`PRIOR`, then ``0`` (scale terms) when there is a base score, then ``c_grid``
        when there is a ``dW`` to fit."""
        return [PRIOR] + ([0.0] if self.has_scale else []) + (list(c_grid) if self.can_dw else [])

    def _masked(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) positions of ``rows`` that can never be the answer (history)."""
        if self.exclude is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ex = np.asarray(self.exclude[rows])
        r, j = np.nonzero((ex >= NUM_RESERVED) & (ex < self.num_items))
        return r, ex[r, j]

    def _free(self, c: float) -> np.ndarray:
        """Which entries of theta a candidate fits."""
        free = np.zeros(self.initial().size, dtype=bool)
        free[1] = True  # b
        free[0] = c != PRIOR and self.has_scale
        if c > 0:
            if not self.can_dw:
                raise ValueError("C > 0 needs users and items (a dW to fit)")
            free[2:] = True
        return free

    def _dw_shape(self) -> tuple[int, int]:
        if not self.can_dw:
            return 0, 0
        return self.users.shape[1], self.items.shape[1]

    def initial(self) -> np.ndarray:
        d, e = self._dw_shape()
        theta = np.zeros(2 + d * e)
        theta[1] = 1.0
        return theta

    def _query(self, theta: np.ndarray, users: np.ndarray) -> np.ndarray | None:
        """``a u + u dW`` (``[m, e]``), or None when neither term is there."""
        d, e = self._dw_shape()
        q = None
        if d and np.any(theta[2:]):
            q = users @ theta[2:].reshape(d, e).astype(np.float32)
        if self.dot and theta[0] != 0.0:
            q = np.float32(theta[0]) * users if q is None else q + np.float32(theta[0]) * users
        return q

    def logits(self, theta: np.ndarray, rows: np.ndarray, base=None) -> np.ndarray:
        """``[m, V]`` float32 scores of ``rows`` over the full catalog (unmasked)."""
        users = self.users[rows] if self.users is not None else None
        q = None if users is None else self._query(theta, users)
        if q is None:
            z = np.zeros((rows.size, self.num_items), dtype=np.float32)
        else:
            z = q @ self.items.T
        z += np.float32(theta[1]) * self.log_pop
        if self.base is not None and theta[0] != 0.0:
            z += np.float32(theta[0]) * (self.base(rows) if base is None else base)
        return z

    def _state(self, exact: bool) -> _SampleState:
        """The fits' sample (``exact`` False) or the whole catalog, with its item ->
        column map and its cache of row sets."""
        if exact and self.sample.exact:
            exact = False
        if exact not in self._states:
            sample = item_sample(self.log_pop, 0, 0) if exact else self.sample
            col = np.full(self.num_items, -1, np.int64)
            col[sample.ids] = np.arange(sample.size)
            self._states[exact] = _SampleState(sample, col, {})
        return self._states[exact]

    def _rows(self, rows: np.ndarray, state: _SampleState | None = None) -> _SampledRows:
        """What every evaluation on ``rows`` reuses (kept for the last few row sets: a
        selection fits every candidate on the same inner folds)."""
        state = state or self._state(False)
        cache = state.rows_cache
        key = (rows.size, hash(rows.tobytes()))
        hit = cache.get(key)
        if hit is not None and np.array_equal(hit.rows, rows):
            return hit
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        t = self.targets[rows]
        r, item = self._masked(rows)
        col = state.col[item]
        keep = col >= 0
        r, col = r[keep], col[keep]
        excluded = np.zeros(rows.size, bool)
        excluded[r[item[keep] == t[r]]] = True
        # the target's own column: its term is added exactly, never as a sample
        own = state.col[t]
        r = np.concatenate([r, np.flatnonzero(own >= 0)])
        col = np.concatenate([col, own[own >= 0]])
        order = np.argsort(r, kind="stable")
        out = _SampledRows(
            rows=rows.copy(),
            users=None if self.users is None else self.users[rows],
            target_items=None if self.items is None else self.items[t],
            target_log_pop=self.log_pop[t],
            target_base=None if self.base is None else self.base.at(rows, t),
            mask_rows=r[order],
            mask_cols=col[order],
            excluded=excluded,
        )
        cache[key] = out
        return out

    @staticmethod
    def _blocks(n: int, width: int):
        step = max(1, _BLOCK // max(1, width))
        return [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def _sampled(
        self,
        theta: np.ndarray,
        rows: np.ndarray,
        want: tuple[bool, bool, bool],
        exact: bool = False,
    ):
        """Per row the log-likelihood over the fits' sample (``exact``: over the whole
        catalog), and the gradients asked for in ``want`` (scale ``a``, popularity
        ``b``, the query ``H = dL/dq`` for ``dW``/``a``).

        Returns ``(log_lik [m] float64, grad_a, grad_b, H [m, e] | None)``.
        """
        want_a, want_b, want_h = want
        state = self._state(exact)
        data = self._rows(rows, state)
        m = rows.size
        sample = state.sample
        a, b = np.float32(theta[0]), np.float32(theta[1])
        q = None if data.users is None else self._query(theta, data.users)
        items_s = None if self.items is None else self.items[sample.ids]
        lp_s = self.log_pop[sample.ids]
        offset = b * lp_s - sample.log_q  # [S]
        use_base = self.base is not None and (theta[0] != 0.0 or want_a)
        ll = np.empty(m)
        h = np.zeros((m, items_s.shape[1]), np.float32) if want_h else None
        grad_a = grad_b = 0.0
        blocks = self._blocks(m, sample.size)
        bounds = np.searchsorted(data.mask_rows, [lo for lo, _ in blocks] + [m])
        for (lo, hi), mlo, mhi in zip(blocks, bounds[:-1], bounds[1:]):
            st = b * data.target_log_pop[lo:hi]
            if q is None:
                z = np.broadcast_to(offset, (hi - lo, sample.size)).copy()
            else:
                z = q[lo:hi] @ items_s.T
                z += offset
                st = st + np.einsum("ij,ij->i", q[lo:hi], data.target_items[lo:hi])
            if use_base:
                base_s = self.base(rows[lo:hi], sample.ids)
                z += a * base_s
                st = st + a * data.target_base[lo:hi]
            z[data.mask_rows[mlo:mhi] - lo, data.mask_cols[mlo:mhi]] = -np.inf
            top = np.maximum(z.max(axis=1), st)
            z -= top[:, None]
            p = np.exp(z, out=z)
            p_t = np.exp(st - top)
            total = p.sum(axis=1) + p_t
            ll[lo:hi] = (st - top).astype(np.float64) - np.log(total.astype(np.float64))
            if not (want_a or want_b or want_h):
                continue
            # d loss / d s_j = p_j / total (sampled j), p_t / total - 1 (the target);
            # the 1 / total is applied to the [m, e] and [m] products, not to p
            inv = 1.0 / total
            w = p_t * inv - 1.0
            if want_b:
                grad_b += float((p @ lp_s) @ inv) + float(w @ data.target_log_pop[lo:hi])
            if want_a and use_base:
                mass = np.einsum("ij,ij->i", p, base_s)
                grad_a += float(mass @ inv) + float(w @ data.target_base[lo:hi])
            if want_h:
                h[lo:hi] = (p @ items_s) * inv[:, None] + w[:, None] * data.target_items[lo:hi]
        if want_a and self.dot:
            grad_a += float(np.vdot(data.users, h))
        ll[data.excluded] = -np.inf
        return ll, grad_a, grad_b, h

    def fit(self, rows: np.ndarray, c: float, init: np.ndarray | None = None) -> np.ndarray:
        """``theta`` maximizing the penalized log-likelihood of ``rows``' targets (over
        the family's `sample`)."""
        free = self._free(c)
        theta0 = self.initial() if init is None else np.array(init, dtype=np.float64)
        theta0[~free] = self.initial()[~free]
        n = rows.size
        d, e = self._dw_shape()
        want_h = bool(free[2:].any() or (free[0] and self.dot))

        def fun(sub):
            theta = theta0.copy()
            theta[free] = sub
            ll, grad_a, grad_b, h = self._sampled(theta, rows, (bool(free[0]), True, want_h))
            loss = -float(ll.sum())
            grad = np.zeros_like(theta)
            grad[0], grad[1] = grad_a, grad_b
            if free[2:].any():
                dw = theta[2:].reshape(d, e)
                grad[2:] = (self._rows(rows).users.T @ h).ravel() + dw.ravel() / c
                loss += 0.5 / c * float((dw * dw).sum())
            return loss / n, grad[free] / n

        theta = theta0.copy()
        theta[free] = _minimize(fun, theta0[free], **_BILINEAR_TOLERANCE)
        return theta

    def log_lik(self, theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[m]`` log-probability of each row's target over the WHOLE catalog (-inf
        where the target is excluded): the selection's out-of-fold score is exact, so
        that the sample cannot favour a weaker penalty (a sampled softmax
        underestimates the normalizer where a user's extra mass falls outside it)."""
        return self._sampled(theta, rows, (False, False, False), exact=True)[0]

    def score_fn(self, theta: np.ndarray, rows: np.ndarray):
        """``(start, stop) -> [stop - start, V]`` scores of ``rows[start:stop]``, for
        `metrics.target_ranks` (which excludes the history and reserved ids itself)."""

        def scores(start: int, stop: int) -> np.ndarray:
            return self.logits(theta, rows[start:stop])

        return scores


@dataclasses.dataclass(frozen=True, eq=False)
class _SampleState:
    """The items an evaluation runs its softmax over, each one's column, and the
    row sets already prepared for them (`BilinearFamily._rows`)."""

    sample: ItemSample
    col: np.ndarray
    rows_cache: dict


@dataclasses.dataclass(frozen=True, eq=False)
class _SampledRows:
    """One row set's inputs to `BilinearFamily._sampled`: its users and target-side
    terms, and the (row, sample column) positions masked out (the row's excluded
    items and its target's own column), sorted by row."""

    rows: np.ndarray
    users: np.ndarray | None
    target_items: np.ndarray | None
    target_log_pop: np.ndarray
    target_base: np.ndarray | None
    mask_rows: np.ndarray
    mask_cols: np.ndarray
    excluded: np.ndarray  # rows whose target is excluded (cannot be their answer)


# --------------------------------------------------------------------------
# Selection by cross-validation inside the labelled rows


def inner_folds(
    n: int,
    k: int,
    seed,
    *,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """``[n]`` fold ids in ``0..k'-1`` (``k' = min(k, groups)``), seeded.

    Rows of one group (e.g. one user's liked-item pairs) share a fold. Groups
    are dealt round-robin in a seeded order, sorted by stratum first (the
    label of a group's first row), so every fold gets about its share of each
    class.
    """
    groups = np.arange(n) if groups is None else np.asarray(groups).reshape(-1)
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    k = max(1, min(int(k), uniq.size))
    rng = np.random.default_rng(seed)
    order = rng.permutation(uniq.size)
    if strata is not None:
        order = order[np.argsort(np.asarray(strata)[first][order], kind="stable")]
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    fold_of_group[order] = np.arange(uniq.size) % k
    return fold_of_group[inverse.reshape(-1)]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of `select_and_fit`.

    ``c`` is the chosen candidate (`PRIOR` = the prior predictor); ``cv`` has
    per candidate (simplest first) ``{"candidate", "mean", "se"}`` of the
    out-of-fold log-likelihood per row; ``folds`` the inner folds used (0:
    too few labelled rows to cross-validate, the prior was taken).
    """

    c: float
    cv: tuple
    folds: int
    rows: int = 0  # the rows the cross-validation ran on (fewer than given: a subsample)

    @property
    def prior_selected(self) -> bool:
        return self.c == PRIOR


def select_and_fit(
    family,
    rows: np.ndarray,
    candidates: Sequence[float],
    *,
    folds: int = DEFAULT_INNER_FOLDS,
    se_rule: float = 0.0,
    seed=0,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    prune: float = 2.0,
    selection_rows: int = 0,
):
    """Chooses a candidate by cross-validation inside ``rows``, then fits it on all of them.

    Args:
        family: `SoftmaxFamily` or `BilinearFamily`.
        rows: the labelled rows (indices into the family's data).
        candidates: ``PRIOR`` first, then from the simplest (strongest
            penalty) to the most complex; each inner fold fits them in this
            order, each warm-started from the previous.
        folds, seed, strata, groups: the inner folds (`inner_folds`).
        se_rule: the simplest candidate whose mean out-of-fold log-likelihood
            is at least ``best - se_rule * SE(best)`` wins (SE of the best
            candidate's per-row values), so a candidate beats the prior only
            by more than noise.
        prune: the path stops at the first candidate that is worse than the
            one before it and than the best by ``prune`` standard errors (the
            candidates after it are never fitted; their ``cv`` entries are
            None).
        selection_rows: above this many rows (0: never), the cross-validation
            runs on a seeded subsample of about this many rows (whole groups;
            `selection_subsample`) and only the chosen candidate's refit sees
            every row. An approximation: the C the subsample's cross-validation
            picks stands for the one all rows' would. The penalty is against the
            summed loss, so ``C`` is a prior strength that does not depend on the
            number of rows: the refit on ``n`` rows uses the chosen ``C`` as is,
            as the full cross-validation's refit (on 3/2 of its inner fits'
            rows) always did.

    Returns:
        ``(fit, Selection)``: the chosen candidate refitted on every row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    candidates = list(candidates)
    if not candidates or candidates[0] != PRIOR:
        raise ValueError("candidates must start with PRIOR (the prior predictor).")
    softmax = isinstance(family, SoftmaxFamily)
    all_classes = family.classes(rows) if softmax else None
    sel = np.arange(rows.size)
    if 0 < selection_rows < rows.size:
        sel = selection_subsample(rows.size, selection_rows, seed, groups=groups)
    sel_rows = rows[sel]
    fold = inner_folds(
        sel_rows.size, folds, seed,
        strata=None if strata is None else np.asarray(strata)[sel],
        groups=None if groups is None else np.asarray(groups)[sel],
    )  # fmt: skip
    k = int(fold.max(initial=-1)) + 1
    if k < 2:
        return _fit(family, rows, PRIOR, all_classes), Selection(PRIOR, (), 0)
    oof = np.full((len(candidates), sel_rows.size), np.nan)
    fits = [None] * k  # per inner fold, the last candidate's fit (warm starts)
    first = {}  # candidate -> its fit on inner fold 0 (the refit's start)
    for ci, c in enumerate(candidates):
        for j in range(k):
            tr, te = sel_rows[fold != j], sel_rows[fold == j]
            fits[j] = _fit(family, tr, c, all_classes, fits[j])
            # a label with probability 0 costs a lot, not infinitely
            oof[ci, fold == j] = np.maximum(family.log_lik(fits[j], te), -1e3)
        first[ci] = fits[0]
        if _past_the_best(oof[: ci + 1], prune):
            break
    done = ~np.isnan(oof[:, 0])
    means = np.where(done, np.nanmean(np.where(done[:, None], oof, 0.0), axis=1), -np.inf)
    ses = np.array([_se(v) if d else np.nan for v, d in zip(oof, done)])
    best = int(np.argmax(means))
    chosen = next(
        i for i in range(len(candidates)) if means[i] >= means[best] - se_rule * ses[best]
    )
    cv = tuple(
        {"candidate": candidate_name(c), "mean": float(means[i]) if done[i] else None,
         "se": float(ses[i]) if done[i] else None}
        for i, c in enumerate(candidates)
    )  # fmt: skip
    fit = _fit(family, rows, candidates[chosen], all_classes, first[chosen])
    return fit, Selection(candidates[chosen], cv, k, int(sel_rows.size))


def selection_subsample(n: int, size: int, seed, *, groups: np.ndarray | None = None):
    """Sorted positions in ``range(n)`` of a seeded subsample of at least ``size`` rows
    (all of them when ``n <= size``): whole groups (e.g. one user's pairs) in a seeded
    order until ``size`` rows are in. Its own stream of ``seed``, so it does not
    repeat the inner folds' permutation."""
    if n <= size:
        return np.arange(n)
    groups = np.arange(n) if groups is None else np.asarray(groups).reshape(-1)
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), _SUBSAMPLE_STREAM])
    order = rng.permutation(uniq.size)
    take = int(np.searchsorted(np.cumsum(counts[order]), size)) + 1
    keep = np.zeros(uniq.size, bool)
    keep[order[:take]] = True
    return np.flatnonzero(keep[inverse.reshape(-1)])


def _se(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def _past_the_best(oof: np.ndarray, prune: float) -> bool:
    """Whether the last candidate (each more complex than the one before) is worse
    than the one before it and than the best by ``prune`` standard errors of the
    best: further along the path the out-of-fold score only falls, so the costly
    weakly penalized fits are skipped."""
    means = oof.mean(axis=1)
    best = int(np.argmax(means))
    if best == means.size - 1 or means[-1] >= means[-2]:
        return False
    return bool(means[-1] < means[best] - prune * _se(oof[best]))


def _fit(family, rows, c, classes, init=None):
    if isinstance(family, SoftmaxFamily):
        return family.fit(rows, c, classes, init)
    return family.fit(rows, c, init)
