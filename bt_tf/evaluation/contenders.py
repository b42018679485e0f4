"""What a probe is given: one contender's user features and item vectors, in population order.

A `Contender` is a learned model's frozen embeddings (BT, DE, BT+DE, one per
pretraining seed), a floor built from the histories (`bag_of_items`, `svd`),
an untrained encoder, or `prior` (no features at all: the probes' prior
predictor, reported as the ``majority`` / ``popularity`` floor). Every
contender gets the same probe families with the same item-side inputs
(`tasks`):

- classification: its user features, standardized with the mean and
  standard deviation of ALL evaluated users (label-free);
- liked item: per (user, item) pair ``[u, v, u * v]`` (its user and item
  vectors, each standardized) plus a one-hot of the item, the same per-item
  bias for every contender (bag-of-items: its bag and the one-hot);
- next item (`linear.BilinearFamily`): ``a u.e_i + u' dW e_i + b log pop_i``
  with its own item vectors ``e_i`` (the BT encoder's input table, the DE
  item tower, SVD item factors); bag-of-items gets the natural equivalent,
  the item-kNN score of its history.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse

from bt_tf.evaluation.labels import Pairs, as_ragged
from bt_tf.evaluation.linear import BilinearFamily, ItemSample, OneHotBlock, PairBlock
from bt_tf.features import NUM_RESERVED

__all__ = [
    "PRIOR_CONTENDER",
    "BIAS_CONTENDER",
    "Contender",
    "KnnScore",
    "interaction_matrix",
    "truncated_svd",
    "bag_of_items",
    "svd",
    "prior",
    "item_bias",
    "item_knn",
]

PRIOR_CONTENDER = "prior"  # rows name it after the task's prior predictor (majority, popularity)
BIAS_CONTENDER = "bias"  # liked item's per-item bias alone (`item_bias`)


@dataclasses.dataclass(frozen=True, eq=False)
class Contender:
    """One set of frozen features to probe.

    Attributes:
        name: model name in the rows (``bt``, ``de``, ``bag_of_items``, ...).
        pretrain_seed: the training seed of a learned model (floors: 0).
        users: ``[N, d]`` dense or ``[N, F]`` sparse user features.
        items: ``[V, e]`` item vectors, or None (bag-of-items, prior).
        knn: ``[V, V]`` item-item similarities for the next-item base score of
            a sparse bag (`item_knn`: dense, or sparse with ``top_k`` per item),
            else None.
        fingerprint: identifies the features in the result cache.
        bag: ``[N, V]`` the histories' bags the item-kNN score reads, when
            ``users`` are a projection of them (large catalogs); None: ``users``.
        tasks: the tasks it is probed on (None: every task).
    """

    name: str
    pretrain_seed: int
    users: Any
    items: np.ndarray | None = None
    knn: Any = None
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bag: Any = None
    tasks: tuple[str, ...] | None = None
    _pair_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """Unique among the contenders of one evaluation (the cache's file name)."""
        return self.name if not self.pretrain_seed else f"{self.name}@seed{self.pretrain_seed}"

    @property
    def sparse(self) -> bool:
        return scipy.sparse.issparse(self.users)

    @functools.cached_property
    def softmax_users(self):
        """User features for the classification probes (dense: standardized)."""
        return self.users if self.sparse else _standardize(self.users)

    @functools.cached_property
    def _item_std(self) -> np.ndarray | None:
        if self.items is None:
            return None
        items = np.asarray(self.items, dtype=np.float64)
        real = items[NUM_RESERVED:]
        std = real.std(axis=0)
        return (items - real.mean(axis=0)) / np.where(std > 0, std, 1.0)

    def pair_features(self, pairs: Pairs, num_items: int) -> OneHotBlock | PairBlock:
        """``[m, F + V]`` liked-item features of population pairs (see the module
        docstring), computed once per pairs object."""
        key = (id(pairs), num_items)
        if key not in self._pair_cache:
            self._pair_cache.clear()
            self._pair_cache[key] = self._pair_features(pairs, num_items)
        return self._pair_cache[key]

    def _pair_features(self, pairs: Pairs, num_items: int) -> OneHotBlock | PairBlock:
        m = len(pairs)
        if self.users.shape[1] == 0:  # the prior: nothing, not even the item; bias: the item
            if self.name == BIAS_CONTENDER:
                return OneHotBlock(np.zeros((m, 0)), pairs.item_ids, num_items)
            return OneHotBlock(np.zeros((m, 0)), np.zeros(m, np.int64), 0)
        users, ui, ii = self.softmax_users, pairs.user_index, pairs.item_ids
        if self.sparse or self._item_std is None:
            none = np.zeros((num_items, 0))
            return PairBlock(users, none, np.zeros((m, 0)), ui, ii, num_items)
        items = self._item_std
        both = users.shape[1] == items.shape[1]
        product = users[ui] * items[ii] if both else np.zeros((m, 0))
        return PairBlock(users, items, product, ui, ii, num_items)

    def next_item_family(
        self,
        targets: np.ndarray,
        log_popularity: np.ndarray,
        exclude: np.ndarray | None,
        sample: ItemSample | None = None,
    ) -> BilinearFamily:
        """The bilinear next-item probe family over this contender's vectors, its fits
        over ``sample`` (default: the full catalog)."""
        if self.users.shape[1] == 0:
            return BilinearFamily(None, None, targets, log_popularity, exclude, sample=sample)
        if self.knn is not None:
            return BilinearFamily(
                None, None, targets, log_popularity, exclude,
                base=KnnScore(self.users if self.bag is None else self.bag, self.knn),
                sample=sample,
            )  # fmt: skip
        if self.items is None:
            raise ValueError(f"{self.name}: dense user features need item vectors")
        items = np.asarray(self.items, dtype=np.float32)
        return BilinearFamily(
            _rms_scaled(self.users), items / _rms(items[NUM_RESERVED:]), targets,
            log_popularity, exclude, sample=sample,
        )  # fmt: skip


class KnnScore:
    """The bag-of-items floor's next-item base score: ``s0(u, i) = bag_u . knn[:, i]``
    (the item-kNN score of the history), for `linear.BilinearFamily`.

    ``users`` ``[N, V]`` sparse bags; ``knn`` ``[V, V]`` item-item similarities,
    dense or sparse (`item_knn`).
    """

    def __init__(self, users, knn):
        self.users = scipy.sparse.csr_matrix(users)
        self.knn = knn
        self._rows = None  # ``knn`` by rows (`_knn_rows`)
        self._columns: tuple[bytes, Any] | None = None  # the last sample's columns

    def _knn_columns(self, cols: np.ndarray):
        """``knn[:, cols]``, kept by rows (CSR) for the products: scipy converts the
        right operand of a sparse product to the left one's format on every call, and
        the exact softmax's columns are the whole catalog (10M entries at 50k items),
        read in blocks of ~20 users."""
        key = cols.tobytes()
        if self._columns is None or self._columns[0] != key:
            part = self.knn[:, cols]
            self._columns = (
                key,
                scipy.sparse.csr_matrix(part) if scipy.sparse.issparse(part) else part,
            )
        return self._columns[1]

    def _knn_rows(self):
        """``knn`` for the full catalog's products (one per block of ranked users), made
        once: a CSC ``knn`` would be converted to rows anew by every product
        (`_knn_columns`)."""
        if self._rows is None:
            self._rows = (
                scipy.sparse.csr_matrix(self.knn) if scipy.sparse.issparse(self.knn) else self.knn
            )
        return self._rows

    def __call__(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """``[m, |cols|]`` float32 base scores of ``rows`` (``cols`` None: every item)."""
        knn = self._knn_rows() if cols is None else self._knn_columns(cols)
        out = self.users[rows] @ knn
        return np.asarray(out.todense() if scipy.sparse.issparse(out) else out, dtype=np.float32)

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``[m]`` float32 base score of each row's own item ``items[j]``."""
        bags = self.users[rows].tocoo()
        sim = self.knn[bags.col, np.asarray(items)[bags.row]]
        sim = np.asarray(sim.todense() if scipy.sparse.issparse(sim) else sim).reshape(-1)
        out = np.bincount(bags.row, weights=bags.data * sim, minlength=len(rows))
        return out.astype(np.float32)


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _rms(x: np.ndarray) -> float:
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 1.0
    return r if r > 0 else 1.0


def _rms_scaled(x: np.ndarray) -> np.ndarray:
    """``x / rms(x)``: one scalar, so dot products keep their meaning."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.float32(_rms(x))


# --------------------------------------------------------------------------
# Floors built from the histories


def interaction_matrix(
    history: np.ndarray, num_items: int, row_lengths: np.ndarray | None = None
) -> scipy.sparse.csr_matrix:
    """``[n, V]`` binary user x item matrix of padded histories, or of flat values with
    ``row_lengths`` (`labels.as_ragged`); reserved ids dropped."""
    flat, user, n = as_ragged(history, row_lengths)
    flat = flat.astype(np.int64)
    keep = (flat >= NUM_RESERVED) & (flat < num_items)
    x = scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (user[keep], flat[keep])),
        shape=(n, num_items),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _l2_rows(x: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).reshape(-1))
    return (scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x).tocsr().astype(np.float32)


def item_knn(fit_rows: scipy.sparse.csr_matrix, *, top_k: int | None = None, block: int = 4096):
    """``[V, V]`` cosine similarity of the items' user columns in ``fit_rows`` (zero
    diagonal): dense, or with ``top_k`` a sparse CSC matrix keeping each column's
    ``top_k`` largest (a 50k-item catalog's dense similarities would take 10 GB).

    The ``top_k`` path never densifies: the co-occurrence product ``X' X`` of
    ``block`` columns at a time is as sparse as the histories make it (about
    ``sum_u len_u^2`` entries in all), and each column's largest are kept by one
    sort of its nonzeros. (It densified each block before, ``[V, block]`` float32
    at a time, then partitioned it: on 100k users x 50k items most of the floors'
    time, for similarities that are mostly zeros.)"""
    x = scipy.sparse.csc_matrix(fit_rows, dtype=np.float32)
    v = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).reshape(-1))
    inv = (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)
    xt = x.T.tocsr()
    if top_k is None or top_k >= v:
        sim = np.asarray((xt @ x).todense(), dtype=np.float32) * inv[:, None] * inv[None, :]
        np.fill_diagonal(sim, 0.0)
        return sim
    rows, cols, vals = [], [], []
    for lo in range(0, v, block):
        hi = min(v, lo + block)
        prod = scipy.sparse.csc_matrix(xt @ x[:, lo:hi])
        prod.sum_duplicates()
        col = np.repeat(np.arange(lo, hi), np.diff(prod.indptr))
        row = prod.indices.astype(np.int64)
        val = prod.data.astype(np.float32) * inv[row] * inv[col]
        keep = (row != col) & (val > 0)
        row, col, val = row[keep], col[keep], val[keep]
        order = np.lexsort((-val, col))  # by column, the largest first
        row, col, val = row[order], col[order], val[order]
        first = np.searchsorted(col, col, side="left")  # each column's first position
        top = np.arange(col.size) - first < top_k
        rows.append(row[top])
        cols.append(col[top])
        vals.append(val[top])
    return scipy.sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(v, v)
    )


def bag_of_items(
    history: np.ndarray,
    num_items: int,
    fit_rows: np.ndarray,
    *,
    projection_dim: int | None = None,
    knn_top_k: int | None = None,
    seed: int = 0,
) -> Contender:
    """L2-normalized history bags; next item scores by item-kNN fitted on ``fit_rows``'
    histories (the users the encoders were trained on). With ``projection_dim`` the
    user features are a seeded Gaussian random projection (large catalogs)."""
    bag = _l2_rows(interaction_matrix(history, num_items))
    knn = item_knn(bag[fit_rows], top_k=knn_top_k)
    users = bag
    if projection_dim is not None:
        rng = np.random.default_rng(seed)
        proj = rng.normal(0.0, 1.0 / np.sqrt(projection_dim), size=(num_items, projection_dim))
        users = scipy.sparse.csr_matrix(bag @ proj.astype(np.float32))
    fingerprint = {"floor": "bag_of_items", "projection_dim": projection_dim, "knn": knn_top_k}
    # next item reads the bag itself (its item-kNN score), not its projection
    return Contender("bag_of_items", 0, users, None, knn, fingerprint, bag=bag)


def svd(
    history: np.ndarray, num_items: int, fit_rows: np.ndarray, dim: int, *, seed: int = 0
) -> Contender:
    """A floor of the embeddings' own size: rank-``dim`` truncated SVD of the
    L2-normalized interaction matrix of ``fit_rows``; users are projected on its
    item factors (``x V``, every user alike), items are the factors ``V``."""
    bag = _l2_rows(interaction_matrix(history, num_items))
    model = truncated_svd(bag[fit_rows], dim, seed=seed)
    users = np.asarray(model.transform(bag), dtype=np.float32)
    items = np.asarray(model.components_.T, dtype=np.float32)
    k = model.n_components
    return Contender("svd", 0, users, items, None, {"floor": "svd", "dim": k, "seed": seed})


def truncated_svd(matrix, dim: int, *, seed: int = 0):
    """A `sklearn.decomposition.TruncatedSVD` of rank ``min(dim, min(shape) - 1)`` (at
    least 1) fitted on ``matrix`` ``[n, V]`` (randomized, 7 power iterations, seeded):
    the `svd` floor's, and the item factors ``components_.T`` ``[V, k]`` of
    ``--item_init=svd`` (`bt_tf.training.trainer`)."""
    from sklearn.decomposition import TruncatedSVD  # lazy: only these need it

    k = max(1, min(int(dim), min(matrix.shape) - 1))
    model = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    return model.fit(matrix)


def item_bias(n_users: int, tasks: tuple[str, ...] = ("liked_item",)) -> Contender:
    """No user features, only liked item's one-hot of the item: the per-item bias every
    contender's liked-item probe has, fitted (selected by cross-validation) like theirs:
    what the item alone is worth (the ``bias`` floor; probed on ``tasks`` only, as on
    the others it would be the prior)."""
    return Contender(BIAS_CONTENDER, 0, np.zeros((n_users, 0), np.float32), None, None,
                     {"floor": BIAS_CONTENDER}, tasks=tuple(tasks))  # fmt: skip


def prior(n_users: int) -> Contender:
    """No features: every probe stays its prior predictor (majority class, popularity)."""
    return Contender(PRIOR_CONTENDER, 0, np.zeros((n_users, 0), np.float32), None, None,
                     {"floor": PRIOR_CONTENDER})  # fmt: skip
