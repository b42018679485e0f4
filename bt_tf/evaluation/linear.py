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
import threadpoolctl

from bt_tf.features import NUM_RESERVED

__all__ = [
    "PRIOR",
    "DEFAULT_C_GRID",
    "DEFAULT_INNER_FOLDS",
    "SoftmaxFamily",
    "BilinearFamily",
    "Selection",
    "inner_folds",
    "select_and_fit",
    "candidate_name",
]

PRIOR = -1.0  # the candidate "prior predictor" (no feature weight)
# C values from the strongest penalty to the weakest (features standardized).
DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_INNER_FOLDS = 3
_MASKED = np.float32(-1e30)  # logit of an item that can never be the answer
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
    # One BLAS thread: L-BFGS-B's own small vector operations through a
    # multi-threaded OpenBLAS took 25x longer on 2 busy cores (0.17 s instead of
    # 7 ms for an 85-parameter quadratic); the probes' own matrix products are
    # small enough that one thread loses little.
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        options = dict(_LBFGS, **tolerance)
        res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    return res.x


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


def _dot(x, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for dense, sparse or `OneHotBlock` features."""
    if isinstance(x, OneHotBlock):
        f = x.x.shape[1]
        out = _dot(x.x, w[:f])
        return out + w[f:][x.ids] if x.width else out
    return np.asarray(x @ w)


def _tdot(x, g: np.ndarray) -> np.ndarray:
    """``x.T @ g`` for dense, sparse or `OneHotBlock` features."""
    if isinstance(x, OneHotBlock):
        out = np.zeros((x.width, g.shape[1]))
        if x.width:
            np.add.at(out, x.ids, g)
        return np.concatenate([_tdot(x.x, g), out], axis=0)
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
        elif not isinstance(x, OneHotBlock):
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

        def fun(theta):
            w, b = theta[: f * k].reshape(f, k), theta[f * k :]
            z = _dot(x, w) + b
            lse = logsumexp(z, axis=1)
            lb = logsumexp(b)
            loss = (lse.sum() - (z * onehot).sum()) + s * (k * lb - b.sum())
            loss += 0.5 / c * (w * w).sum()
            g = np.exp(z - lse[:, None]) - onehot
            gw = _tdot(x, g) + w / c
            gb = g.sum(axis=0) + s * (k * np.exp(b - lb) - 1.0)
            return loss / n, np.concatenate([gw.ravel(), gb]) / n

        if init is not None and np.array_equal(init.classes, classes):
            x0 = np.concatenate([init.w.ravel(), init.b])
        else:
            x0 = np.concatenate([np.zeros(f * k), prior_b])
        theta = _minimize(fun, x0)
        return SoftmaxFit(theta[: f * k].reshape(f, k), theta[f * k :], classes)

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


class BilinearFamily:
    """Next-item probe: a softmax over the whole catalog of ``a s0 + u' dW e + b log pop``.

    Args:
        users: ``[N, d]`` dense user vectors (scaled), or None.
        items: ``[V, e]`` the contender's item vectors, or None.
        targets: ``[N]`` next-item ids (only the rows a fit is given are read).
        log_popularity: ``[V]`` log of the smoothed item counts of the
            label-free histories (the prior ranking).
        exclude: ``[N, L]`` item ids that can never be a row's answer (its
            history; 0 = padding), masked in training and in scoring.
        base: ``rows -> [m, V]`` base scores ``s0`` (bag-of-items: item-kNN);
            default: ``s0 = u . e`` when users and items have one width.

    Parameters: ``theta = [a, b, dW.ravel()]``. ``c == PRIOR`` fits ``b``
    alone (the popularity ranking, sharpened); ``c == 0`` fits ``a`` and
    ``b``; ``c > 0`` also ``dW``, penalized by ``||dW||^2 / (2 c)`` (needs
    users and items). With ``s0 = u . e`` the scores are ``(a u + u dW) E' +
    b log pop``: one ``[m, e] x [e, V]`` product per evaluation.
    """

    def __init__(
        self,
        users: np.ndarray | None,
        items: np.ndarray | None,
        targets: np.ndarray,
        log_popularity: np.ndarray,
        exclude: np.ndarray | None = None,
        base=None,
    ):
        self.users = None if users is None else np.asarray(users, dtype=np.float32)
        self.items = None if items is None else np.asarray(items, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.log_pop = np.asarray(log_popularity, dtype=np.float32).reshape(-1)
        self.exclude = exclude
        self.base = base
        self.dot = base is None and self.can_dw and self.users.shape[1] == self.items.shape[1]

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
        """``[m, V]`` float32 scores of ``rows`` (unmasked)."""
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

    def fit(self, rows: np.ndarray, c: float, init: np.ndarray | None = None) -> np.ndarray:
        """``theta`` maximizing the penalized log-likelihood of ``rows``' targets."""
        free = self._free(c)
        theta0 = self.initial() if init is None else np.array(init, dtype=np.float64)
        theta0[~free] = self.initial()[~free]
        n = rows.size
        at = (np.arange(n), self.targets[rows])
        base = self.base(rows) if (free[0] and self.base is not None) else None
        mr, mc = self._masked(rows)
        users = self.users[rows] if self.users is not None else None
        d, e = self._dw_shape()

        def fun(sub):
            theta = theta0.copy()
            theta[free] = sub
            z = self.logits(theta, rows, base)
            z[:, :NUM_RESERVED] = _MASKED
            z[mr, mc] = _MASKED
            z -= z.max(axis=1, keepdims=True)
            picked = z[at].astype(np.float64)
            p = np.exp(z, out=z)
            s = p.sum(axis=1, dtype=np.float64)
            loss = float(np.log(s).sum() - picked.sum())
            p /= s[:, None].astype(np.float32)
            p[at] -= 1.0  # d loss / d logits
            grad = np.zeros_like(theta)
            grad[1] = float(p.sum(axis=0, dtype=np.float64) @ self.log_pop)
            if base is not None:
                grad[0] = float(np.vdot(p, base))
            if free[0] and self.dot or free[2:].any():
                h = p @ self.items  # [n, e]
                if free[0] and self.dot:
                    grad[0] = float(np.vdot(users, h))
                if free[2:].any():
                    dw = theta[2:].reshape(d, e)
                    grad[2:] = (users.T @ h).ravel() + dw.ravel() / c
                    loss += 0.5 / c * float((dw * dw).sum())
            return loss / n, grad[free] / n

        theta = theta0.copy()
        theta[free] = _minimize(fun, theta0[free], **_BILINEAR_TOLERANCE)
        return theta

    def log_lik(self, theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[m]`` log-probability of each row's target."""
        z = self.logits(theta, rows).astype(np.float64)
        z[:, :NUM_RESERVED] = -np.inf
        mr, mc = self._masked(rows)
        z[mr, mc] = -np.inf
        return z[np.arange(rows.size), self.targets[rows]] - logsumexp(z, axis=1)

    def score_fn(self, theta: np.ndarray, rows: np.ndarray):
        """``(start, stop) -> [stop - start, V]`` scores of ``rows[start:stop]``, for
        `metrics.target_ranks` (which excludes the history and reserved ids itself)."""

        def scores(start: int, stop: int) -> np.ndarray:
            return self.logits(theta, rows[start:stop])

        return scores


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

    Returns:
        ``(fit, Selection)``: the chosen candidate refitted on every row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    candidates = list(candidates)
    if not candidates or candidates[0] != PRIOR:
        raise ValueError("candidates must start with PRIOR (the prior predictor).")
    fold = inner_folds(rows.size, folds, seed, strata=strata, groups=groups)
    k = int(fold.max(initial=-1)) + 1
    softmax = isinstance(family, SoftmaxFamily)
    all_classes = family.classes(rows) if softmax else None
    if k < 2:
        return _fit(family, rows, PRIOR, all_classes), Selection(PRIOR, (), 0)
    oof = np.full((len(candidates), rows.size), np.nan)
    fits = [None] * k  # per inner fold, the last candidate's fit (warm starts)
    first = {}  # candidate -> its fit on inner fold 0 (the refit's start)
    for ci, c in enumerate(candidates):
        for j in range(k):
            tr, te = rows[fold != j], rows[fold == j]
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
    return fit, Selection(candidates[chosen], cv, k)


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
