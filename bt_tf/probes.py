"""Linear probes on frozen user embeddings: the downstream half of the paper's claim.

Protocol (DESIGN.md, "Downstream evaluation"), for one model's frozen
embeddings and each label fraction and seed:

1. `sample_label_fraction` draws a seeded (stratified) fraction of TRAIN users
   that keep their labels;
2. a linear probe is trained on them (`train_softmax_probe`,
   `train_pair_probe`), starting from the prior predictor (zero weights,
   log-prior bias); its L2 strength is chosen, and training early-stopped,
   on the SAME fraction of EVAL users (`sample_selection_users`: seeded,
   stratified by class where the label is a class, at least
   `MIN_SELECTION_USERS`): scarce labels are scarce for selection too. The
   simplest candidate within `DEFAULT_SE_RULE` standard errors of the best
   wins, so a probe on uninformative features stays at the majority class;
3. it is scored once on TEST users (`bt_tf.metrics`).

`evaluate_embeddings` runs this for every task and returns result rows
``{"model", "task", "metric", "fraction", "seed", "value", ...}`` that
`bt_tf.report.write_report` aggregates. Floors use the same rows:
`majority_floor`, `popularity_floor`, and `bag_of_items_features` (a feature
matrix fed through the same probes as any embedding; so is an untrained
encoder's output).

Why the probes are trained with TensorFlow (a hand-written Adam loop, not
sklearn): next-item prediction is a softmax over the whole item vocabulary
(thousands of classes) on up to ~100k users, which needs minibatches and runs
on a GPU when there is one; the same loop takes dense or sparse (bag-of-items)
inputs, early-stops on an arbitrary eval metric (HR/NDCG for next item), and
trains the whole L2 grid at once as one stacked weight tensor (Adam is
element-wise, so each grid member's trajectory is exactly the one it would
have alone).

What it costs, and the shortcuts that leave every result as it was (to float
rounding; ``train_softmax_probe(..., shortcuts=False)`` runs without them):
an epoch costs ``nnz(x_train) * columns * members``. Classes that are no
train label share one weight column (they start and stay identical), which
for next item turns 3.5k columns into ~50 at 1% of ML-1M's train users and
~1.6k at 100%; a member that has stopped leaves the stacked weights; sparse
features multiply as CSR matrices and feature columns without a train
nonzero are dropped. The bag-of-items next-item probe at ML-1M scale went
from ~340 s to ~40 s of CPU per (fraction 1.0, seed) with identical results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf  # bt_tf/__init__ ran first (One Keras): tf.keras is tf_keras

from bt_tf import metrics
from bt_tf.features import NUM_RESERVED, PAD_ID

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_L2_GRID",
    "DEFAULT_SE_RULE",
    "MIN_SELECTION_USERS",
    "Pairs",
    "Probe",
    "PairProbe",
    "sample_label_fraction",
    "sample_selection_users",
    "selection_rule",
    "log_prior",
    "log_likelihood_rows",
    "accuracy_rows",
    "favorite_genre",
    "first_future_item",
    "liked_item_pairs",
    "item_counts",
    "bag_of_items_features",
    "pair_features",
    "train_softmax_probe",
    "train_pair_probe",
    "evaluate_embeddings",
    "majority_floor",
    "popularity_floor",
]

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
# Strongest first: on an exact tie of the eval metric the earlier (stronger) wins.
DEFAULT_L2_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)

# Selection (L2 choice, early stopping) at fraction f sees f of the eval users'
# labels, but never fewer than this many users (`sample_selection_users`).
MIN_SELECTION_USERS = 10
_SELECTION_STREAM = 1  # seeds the eval sample apart from the train sample

# Selection slack in standard errors of the best candidate (`train_softmax_probe`).
DEFAULT_SE_RULE = 0.5

NEXT_ITEM = "next_item"
LIKED_ITEM = "liked_item"

# Float elements of one logits block (train minibatch or eval chunk): 256 MB.
_ACTIVATION_BUDGET = 1 << 26

# Select metric: (scores [m, C] for eval rows `rows`, rows [m]) -> per-row values [m].
SelectMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------
# Label sampling and label derivation
# --------------------------------------------------------------------------


def sample_label_fraction(
    labels: np.ndarray, fraction: float, seed: int, *, stratify: bool = True
) -> np.ndarray:
    """Seeded sample of the users whose labels a probe may train on.

    Args:
      labels: ``[n]`` int labels of the TRAIN users only (the caller passes
        train users, so test users cannot leak); ``< 0`` = unknown, never taken.
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


def sample_selection_users(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    *,
    stratify: bool = True,
    min_users: int = MIN_SELECTION_USERS,
) -> np.ndarray:
    """Seeded sample of the EVAL users whose labels select a probe at label fraction ``fraction``.

    Scarce labels are scarce everywhere: a probe trained on ``fraction`` of the
    train users' labels picks its L2 strength and stopping epoch on the same
    fraction of the eval users' labels, never on all of them.

    Args:
      labels: ``[n]`` int labels of the EVAL users; ``< 0`` = unknown, never taken.
        For tasks without a per-user class (next item, liked item) pass ``0``
        for users with a label and ``stratify=False``.
      fraction: in ``(0, 1]``.
      seed: same seed -> same sample (a stream of its own, independent of the
        train sample's). For a fixed seed the samples are NESTED across fractions.
      stratify: class proportions kept: within each class the users are in a
        seeded random order, member ``i`` of a class of ``n_c`` gets the key
        ``(i + u_c) / n_c`` (``u_c`` a seeded uniform offset per class) and the
        ``k`` smallest keys are taken, so class ``c`` gets ``k * n_c / n``
        users within +-1. Unlike `sample_label_fraction` there is no
        at-least-one-per-class rule, which would exceed the budget when
        there are many classes. Forming the strata reads every eval user's
        class (as stratified train sampling does); only the sampled users'
        labels and features reach the probe.
      min_users: ``k = min(n, max(min_users, floor(fraction * n + 0.5)))`` of
        the ``n`` labelled users, so that a selection is possible at all at
        1% (e.g. ML-100K has ~94 eval users: 1% would be one user). This floor
        is the only place selection may see more than ``fraction`` of the
        eval labels.

    Returns:
      Sorted int64 indices into ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if min_users < 1:
        raise ValueError(f"min_users must be >= 1, got {min_users}.")
    labelled = np.flatnonzero(labels >= 0)
    n = labelled.size
    k = min(n, max(int(min_users), int(np.floor(fraction * n + 0.5))))
    if k == n:
        return labelled.astype(np.int64)
    rng = np.random.default_rng([int(seed), _SELECTION_STREAM])
    if not stratify:
        return np.sort(rng.permutation(labelled)[:k]).astype(np.int64)
    keys = np.empty(n)
    y = labels[labelled]
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        keys[rng.permutation(pos)] = (np.arange(pos.size) + rng.random()) / pos.size
    order = np.lexsort((rng.permutation(n), keys))  # key, then a seeded tie-break
    return np.sort(labelled[order[:k]]).astype(np.int64)


def selection_rule(min_users: int = MIN_SELECTION_USERS, se_rule: float = DEFAULT_SE_RULE) -> str:
    """The selection protocol in one sentence (the report states it)."""
    return (
        "Scarce labels everywhere: at label fraction f each probe's L2 strength and "
        "stopping epoch are selected on the same fraction f of eval users (seeded, "
        "stratified by class where the label is a class, at least "
        f"{int(min_users)} users), never on all eval labels, and the simplest candidate "
        f"within {se_rule:g} standard errors of the best wins, starting from the prior "
        "(majority-class) predictor."
    )


def _as_ragged(values: Any, row_lengths: np.ndarray | None = None):
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
    flat, user, n = _as_ragged(genre_ids, row_lengths)
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
    items, user, _ = _as_ragged(future_item_ids)
    if isinstance(future_ratings, np.ndarray) and future_ratings.ndim == 2:
        ratings = future_ratings[np.asarray(future_item_ids) != PAD_ID]
    else:
        ratings, _, _ = _as_ragged(future_ratings)
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
    flat, _, _ = _as_ragged(item_ids)
    flat = flat.astype(np.int64)
    flat = flat[(flat >= NUM_RESERVED) & (flat < num_items)]
    return np.bincount(flat, minlength=num_items).astype(np.float64)


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


def bag_of_items_features(
    history_item_ids: Any,
    vocab_size: int,
    *,
    projection_dim: int | None = None,
    seed: int = 0,
) -> sp.csr_matrix | np.ndarray:
    """Bag-of-items user features for the logistic-regression floor.

    Each row is the user's history item counts, L2-normalized (reserved ids
    dropped). Returns a ``scipy.sparse.csr_matrix [n, vocab_size]`` (the probes
    accept sparse input), or with ``projection_dim`` a dense ``[n,
    projection_dim]`` float32 Gaussian random projection (entries
    ``N(0, 1/projection_dim)``, seeded; Johnson-Lindenstrauss, inner products
    approximately preserved). Use the projection when the catalog is large:
    a next-item softmax probe on the sparse bag has ``vocab_size**2`` weights
    (20k items -> 400M), on the projection ``projection_dim * vocab_size``.
    """
    flat, user, n = _as_ragged(history_item_ids)
    flat = flat.astype(np.int64)
    keep = (flat >= NUM_RESERVED) & (flat < vocab_size)
    if np.any(flat >= vocab_size):
        raise ValueError(
            f"history holds item id {flat.max()} >= vocab_size {vocab_size}; pass the "
            "item vocabulary size including the reserved ids."
        )
    x = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (user[keep], flat[keep])),
        shape=(n, vocab_size),
    )
    x.sum_duplicates()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).reshape(-1))
    x = sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ x
    x = x.tocsr().astype(np.float32)
    if projection_dim is None:
        return x
    rng = np.random.default_rng(seed)
    proj = rng.normal(0.0, 1.0 / np.sqrt(projection_dim), size=(vocab_size, projection_dim))
    return np.asarray(x @ proj.astype(np.float32), dtype=np.float32)


def pair_features(
    user_emb: np.ndarray | sp.spmatrix,
    pairs: Pairs,
    item_emb: np.ndarray | None = None,
    *,
    num_items: int | None = None,
) -> np.ndarray | sp.csr_matrix:
    """Features of (user, item) pairs for the liked-item probe.

    Dense user ``[n, d]`` and item ``[V, e]`` embeddings give ``[u, v, u*v]``
    (``u*v`` only when ``d == e``), shape ``[m, 2d+e]`` or ``[m, d+e]``.
    Without ``item_emb`` (floors: bag-of-items has no item vectors) the item
    is one-hot over ``num_items`` (a per-item bias), and with sparse user
    features the result is sparse ``[u, v]``.
    """
    u = user_emb[pairs.user_index]
    if item_emb is None:
        if num_items is None:
            raise ValueError("pair_features needs item_emb or num_items (for one-hot items).")
        m = len(pairs)
        v = sp.csr_matrix(
            (np.ones(m, dtype=np.float32), (np.arange(m), pairs.item_ids)),
            shape=(m, num_items),
        )
        return sp.hstack([sp.csr_matrix(u, dtype=np.float32), v], format="csr")
    v = np.asarray(item_emb, dtype=np.float32)[pairs.item_ids]
    if sp.issparse(u):
        return sp.hstack([u, sp.csr_matrix(v)], format="csr").astype(np.float32)
    u = np.asarray(u, dtype=np.float32)
    parts = [u, v] + ([u * v] if u.shape[1] == v.shape[1] else [])
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Probe:
    """A trained linear classifier ``scores = x @ weights + bias``.

    Input standardization (dense inputs) is folded into ``weights``/``bias``,
    so raw features go in. ``selection`` holds one entry per L2 value
    (strongest first): ``{"l2", "eval_metric", "eval_se", "best_epoch",
    "epochs_run"}``, its early-stopped best (epoch 0 = the prior predictor).
    The chosen probe is the simplest candidate within ``se_rule`` standard
    errors of the best (`train_softmax_probe`): ``best_epoch == 0`` means the
    prior predictor (``W = 0``, log-prior bias) won.
    """

    weights: np.ndarray  # [F, C] float32
    bias: np.ndarray  # [C] float32
    l2: float
    best_epoch: int
    eval_metric: float
    selection: list
    prior_eval_metric: float = float("nan")  # eval metric of the prior predictor
    best_eval_metric: float = float("nan")  # the best candidate's eval metric
    threshold: float = float("nan")  # best - se_rule * its standard error

    @property
    def num_classes(self) -> int:
        return int(self.bias.shape[0])

    def predict_scores(self, x: np.ndarray | sp.spmatrix, chunk_size: int = 4096) -> np.ndarray:
        """``[n, C]`` float32 logits for features ``x [n, F]`` (dense or sparse)."""
        n = x.shape[0]
        out = np.empty((n, self.num_classes), dtype=np.float32)
        for s in range(0, n, chunk_size):
            out[s : s + chunk_size] = self.score_fn(x)(s, min(n, s + chunk_size))
        return out

    def score_fn(self, x: np.ndarray | sp.spmatrix) -> Callable[[int, int], np.ndarray]:
        """``(start, stop) -> logits of rows start:stop``, for chunked ranking
        (`bt_tf.metrics` accepts it as ``scores``)."""

        def rows(start: int, stop: int) -> np.ndarray:
            z = x[start:stop] @ self.weights
            return np.asarray(z, dtype=np.float32) + self.bias

        return rows

    def predict(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """``[n]`` argmax class (ties -> smallest class index)."""
        return np.argmax(self.predict_scores(x), axis=1)


def log_prior(y: np.ndarray, num_classes: int, *, smoothing: float = 0.5) -> np.ndarray:
    """``[num_classes]`` float32 smoothed log class priors of labels ``y``:
    ``log((count_c + smoothing) / (n + smoothing * num_classes))``.

    The probes' initial bias: with ``W = 0`` the probe predicts the majority
    class of its training labels (for next item: ranks items by how often they
    are a training target), so an embedding that carries nothing leaves it
    there instead of at a uniform guess. ``smoothing`` (add-1/2, the
    Krichevsky-Trofimov estimate) keeps unseen classes finite.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64).reshape(-1), minlength=num_classes)
    counts = counts[:num_classes].astype(np.float64) + smoothing
    return np.log(counts / counts.sum()).astype(np.float32)


def accuracy_rows(y_eval: np.ndarray) -> SelectMetric:
    """Select metric: 1 where the argmax is the eval label, else 0."""

    def per_row(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (np.argmax(scores, axis=1) == y_eval[rows]).astype(np.float64)

    return per_row


def log_likelihood_rows(y_eval: np.ndarray) -> SelectMetric:
    """Select metric (the default): per-row log softmax probability of the eval label.

    A proper scoring rule: on a few eval users it is far less noisy than
    accuracy (which moves in steps of ``1/n``) and it penalizes a confident
    fit to noise, so with the standard-error rule a probe on features that
    carry nothing stays at the prior predictor.
    """

    def per_row(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        z = np.asarray(scores, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return z[np.arange(z.shape[0]), y_eval[rows]] - lse

    return per_row


@dataclasses.dataclass(frozen=True)
class _Columns:
    """How the probe's weight columns map to classes.

    Classes that are no train label and start with the same bias (the smoothed
    log prior of a count of 0, or, with a popularity prior, of the same
    popularity count) start with the same weights (0) and get the same gradient
    at every step, so they stay identical throughout training. They share
    one column (``multiplicity`` = their number): its logit enters the softmax
    ``multiplicity`` times (``+ log multiplicity``), its gradient is that of one
    class, and it is copied back to every such class at the end. Exact, and
    for next item at 1% of ML-1M's users 48 columns instead of 3.7k.
    """

    of_class: np.ndarray  # [C] int: column of each class
    multiplicity: np.ndarray  # [C'] float32: classes per column

    @property
    def num_cols(self) -> int:
        return int(self.multiplicity.shape[0])

    @property
    def tied(self) -> bool:
        return bool(np.any(self.multiplicity > 1))

    @staticmethod
    def make(y: np.ndarray, num_classes: int, tie: bool, bias_init: np.ndarray) -> _Columns:
        """Unseen classes with the same initial bias share a column (with a
        popularity prior, one column per distinct prior count)."""
        seen = np.unique(y)
        unseen = np.setdiff1d(np.arange(num_classes), seen)
        if not tie or unseen.size < 2:
            return _Columns(np.arange(num_classes), np.ones(num_classes, np.float32))
        values, group = np.unique(np.asarray(bias_init)[unseen], return_inverse=True)
        if values.size == unseen.size:  # nothing to share
            return _Columns(np.arange(num_classes), np.ones(num_classes, np.float32))
        of_class = np.empty(num_classes, dtype=np.int64)
        of_class[seen] = np.arange(seen.size)
        of_class[unseen] = seen.size + group.reshape(-1)
        mult = np.concatenate([np.ones(seen.size), np.bincount(group.reshape(-1))])
        return _Columns(of_class, mult.astype(np.float32))


_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7  # tf.keras.optimizers.Adam's defaults


class _Members:
    """The still-training members of one grid group: stacked weights ``[F, g*C']``
    and bias ``[g*C']`` with their Adam moments, and one training step.

    The step is Adam (Keras' update rule: ``m += (g - m)(1 - b1)``, ``v += (g^2 -
    v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``) on
    the gradient of ``mean CE + l2 * ||W||^2``, each member's own: the members
    share only the minibatches. Sparse features multiply as CSR matrices
    (``tf.linalg.sparse``, 3-4x less CPU than ``tf.sparse.sparse_dense_matmul``).
    """

    def __init__(self, x_train, l2s, columns: _Columns, bias_init: np.ndarray, learning_rate):
        self.x = x_train
        self.sparse = sp.issparse(x_train)
        self.columns = columns
        self.learning_rate = float(learning_rate)
        self.members = list(range(len(l2s)))  # grid positions of the columns' members
        self.l2 = np.asarray(l2s, dtype=np.float32)
        self.t = 0
        f, c, g = x_train.shape[1], columns.num_cols, len(l2s)
        zeros = np.zeros((f, g * c), np.float32)
        b = np.tile(bias_init.astype(np.float32), g)
        self._build([zeros, zeros, zeros, b, np.zeros_like(b), np.zeros_like(b)])

    def _build(self, arrays) -> None:
        self.vars = [tf.Variable(a, name="probe") for a in arrays]
        self._step, self._scores = self._make_fns()

    def keep(self, members: Sequence[int]) -> None:
        """Drops every member but ``members`` (grid positions), state untouched."""
        pos = [self.members.index(m) for m in members]
        c = self.columns.num_cols
        cols = (np.asarray(pos)[:, None] * c + np.arange(c)).reshape(-1)
        arrays = [tf.gather(v, cols, axis=v.shape.rank - 1) for v in self.vars]
        self.members = list(members)
        self.l2 = self.l2[pos]
        self._build(arrays)

    def member(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(weights ``[F, C']``, bias ``[C']``) of grid member ``j``."""
        c, p = self.columns.num_cols, self.members.index(j)
        cols = slice(p * c, (p + 1) * c)
        return self.vars[0][:, cols].numpy(), self.vars[3][cols].numpy()

    def feed(self, x):
        """Rows of features as the step and `scores` take them."""
        return _coo(sp.csr_matrix(x)) if self.sparse else np.asarray(x, dtype=np.float32)

    def scores(self, xb) -> np.ndarray:
        """``[m, g, C']`` logits of the current members for ``feed(rows)``."""
        z = self._scores(xb).numpy()
        return z.reshape(z.shape[0], len(self.members), self.columns.num_cols)

    def _make_fns(self):
        g, c = len(self.members), self.columns.num_cols
        f = self.x.shape[1]
        w, mw, vw, b, mb, vb = self.vars
        l2_cols = tf.constant(np.repeat(self.l2, c))  # [g*c]
        tied = self.columns.tied
        offset = tf.constant(np.log(self.columns.multiplicity))
        inv_mult = tf.constant(1.0 / self.columns.multiplicity)
        lr = tf.constant(self.learning_rate, tf.float32)
        if self.sparse:  # xb: COO parts of the batch and of its transpose (`_coo_pair`)

            def csr(indices, values, shape):
                return tf.raw_ops.SparseTensorToCSRSparseMatrix(
                    indices=indices, values=values, dense_shape=shape
                )

            def matmul(xb, wv):
                z = tf.raw_ops.SparseMatrixMatMul(a=csr(*xb[:3]), b=wv)
                return tf.ensure_shape(z, [None, g * c])

            def score(xb):
                return tf.raw_ops.SparseMatrixMatMul(a=csr(*xb), b=w.read_value()) + b

            def matmul_t(xb, dz):
                out = tf.raw_ops.SparseMatrixMatMul(a=csr(*xb[3:]), b=dz)
                return tf.ensure_shape(out, [f, g * c])

            coo = (
                tf.TensorSpec([None, 2], tf.int64),
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([2], tf.int64),
            )
            x_spec, one_spec = coo + coo, coo
        else:

            def score(xb):
                return tf.matmul(xb, w) + b

            def matmul(xb, wv):
                return tf.matmul(xb, wv)

            def matmul_t(xb, dz):
                return tf.matmul(xb, dz, transpose_a=True)

            x_spec = one_spec = tf.TensorSpec([None, f], tf.float32)

        @tf.function(
            input_signature=[x_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)]
        )
        def step(xb, yb, t):
            z = tf.reshape(matmul(xb, w.read_value()) + b, [-1, g, c])
            if tied:
                z = z + offset
            n = tf.cast(tf.shape(yb)[0], tf.float32)
            # d mean(CE) / d logits; a shared column's gradient is one class's.
            dz = (tf.nn.softmax(z) - tf.one_hot(yb, c)[:, tf.newaxis, :]) / n
            if tied:
                dz = dz * inv_mult
            dz = tf.reshape(dz, [-1, g * c])
            grad_w = matmul_t(xb, dz) + 2.0 * l2_cols * w
            grad_b = tf.reduce_sum(dz, axis=0)
            b1_power, b2_power = tf.pow(_BETA_1, t), tf.pow(_BETA_2, t)
            for var, m, v, grad in ((w, mw, vw, grad_w), (b, mb, vb, grad_b)):
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle,
                    m=m.handle,
                    v=v.handle,
                    beta1_power=b1_power,
                    beta2_power=b2_power,
                    lr=lr,
                    beta1=tf.constant(_BETA_1),
                    beta2=tf.constant(_BETA_2),
                    epsilon=tf.constant(_EPSILON),
                    grad=grad,
                )

        return step, tf.function(score, input_signature=[one_spec])

    def epoch(self, y: np.ndarray, order: np.ndarray, batch_size: int) -> None:
        for s in range(0, order.size, batch_size):
            idx = order[s : s + batch_size]
            xb = _coo_pair(self.x[idx]) if self.sparse else self.x[idx]
            self.t += 1
            self._step(xb, y[idx], np.float32(self.t))


def _coo(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices ``[nnz, 2]``, values, shape) of a canonical CSR matrix, row-major."""
    coo = x.tocoo()
    return (
        np.stack([coo.row, coo.col], axis=1).astype(np.int64),
        coo.data.astype(np.float32),
        np.asarray(coo.shape, dtype=np.int64),
    )


def _coo_pair(x: sp.csr_matrix) -> tuple:
    """COO parts of ``x`` and of ``x^T``, turned into CSR matrices in the step.

    ``SparseMatrixMatMul`` (``tf.linalg.sparse``) on CPU takes 3-4x less time
    than ``tf.sparse.sparse_dense_matmul`` (about scipy's speed, measured);
    with ``transpose_a`` it is 2x slower, hence the explicit transpose.
    """
    x = sp.csr_matrix(x)
    x.sort_indices()
    return _coo(x) + _coo(x.T.tocsr())


def _fit_group(
    x_train,
    y_train: np.ndarray,
    x_eval,
    eval_metric: SelectMetric,
    l2s: Sequence[float],
    columns: _Columns,
    *,
    max_epochs: int,
    patience: int,
    min_epochs: int,
    seed: int,
    batch_size: int,
    eval_chunk_size: int,
    learning_rate: float,
    bias_init: np.ndarray,
    drop_stopped: bool,
) -> tuple[list[dict], dict]:
    """Trains ``len(l2s)`` probes at once, early-stopping each on the eval metric.

    ``y_train`` are column ids (`_Columns`); ``bias_init`` is per column.
    Returns (per member: best state, weights ``[F, C']``), the prior's eval
    values). ``drop_stopped``: a stopped member leaves the stacked tensors
    (Adam is element-wise, so the others' trajectories are unchanged).
    """
    g, c, num_classes = len(l2s), columns.num_cols, columns.of_class.size
    state = _Members(x_train, l2s, columns, bias_init, learning_rate)
    n_eval = x_eval.shape[0]
    chunk = max(1, min(eval_chunk_size, _ACTIVATION_BUDGET // (g * max(c, num_classes))))
    chunks = [
        (rows, state.feed(x_eval[rows]))
        for rows in (np.arange(s, min(n_eval, s + chunk)) for s in range(0, n_eval, chunk))
    ]

    def evaluate(members: Sequence[int]) -> dict[int, np.ndarray]:
        """Per-row eval values of the current members (all classes scored)."""
        values = {j: np.zeros(n_eval) for j in members}
        for rows, xb in chunks:
            z = state.scores(xb)
            for j in members:
                zj = z[:, state.members.index(j), :]
                values[j][rows] = eval_metric(zj[:, columns.of_class] if columns.tied else zj, rows)
        return values

    rng = np.random.default_rng(seed)
    y32 = y_train.astype(np.int32)
    # Epoch 0 (W = 0, log-prior bias: the prior / majority-class predictor) is
    # every member's first candidate; a later epoch replaces it only by STRICTLY
    # beating it on eval.
    values0 = evaluate([0])[0]
    best = [
        {"eval_metric": float(values0.mean()), "values": values0, "best_epoch": 0,
         "epochs_run": 0, "w": None, "b": bias_init.astype(np.float32).copy()}
        for _ in range(g)
    ]  # fmt: skip
    stale = np.zeros(g, dtype=np.int64)
    stopped = np.zeros(g, dtype=bool)
    for epoch in range(1, max_epochs + 1):
        state.epoch(y32, rng.permutation(y32.size), batch_size)
        alive = [j for j in range(g) if not stopped[j]]
        values = evaluate(alive)
        for j in alive:
            best[j]["epochs_run"] = epoch
            score = float(values[j].mean())
            if score > best[j]["eval_metric"]:
                w, b = state.member(j)
                best[j].update(eval_metric=score, values=values[j], best_epoch=epoch, w=w, b=b)
                stale[j] = 0
            else:
                stale[j] += 1
            stopped[j] = stale[j] >= patience and epoch >= min_epochs
        if stopped.all():
            break
        if drop_stopped and stopped[state.members].any():
            state.keep([j for j in state.members if not stopped[j]])
    return best, {"eval_metric": float(values0.mean()), "values": values0}


def train_softmax_probe(
    x_train: np.ndarray | sp.spmatrix,
    y_train: np.ndarray,
    x_eval: np.ndarray | sp.spmatrix,
    y_eval: np.ndarray,
    num_classes: int,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_epochs: int = 200,
    patience: int = 5,
    min_epochs: int = 10,
    seed: int = 0,
    batch_size: int = 1024,
    learning_rate: float = 0.05,
    select_metric: SelectMetric | None = None,
    max_params: int = 1 << 25,
    eval_chunk_size: int = 2048,
    prior_smoothing: float = 0.5,
    prior_counts: np.ndarray | None = None,
    se_rule: float = DEFAULT_SE_RULE,
    standardize: bool | None = None,
    shortcuts: bool = True,
) -> Probe:
    """Multinomial logistic regression on frozen features, selected on eval.

    There is deliberately no test argument: the L2 strength and the stopping
    epoch can only depend on ``(x_eval, y_eval)``.

    Weights start at 0 and the bias at the smoothed log class priors of
    ``y_train`` (`log_prior`), so before any step the probe is the prior
    (majority-class) predictor. Selection, a standard-error rule after the
    one-standard-error rule of Hastie, Tibshirani & Friedman (ESL 7.10): the
    candidates, from simplest to most complex, are the prior predictor and
    each L2 member's early-stopped best (strongest L2 first); the probe is the
    first candidate whose mean eval metric is at least ``best - se_rule *
    SE(best)``, SE the standard error of the best candidate's per-row eval
    values. On a handful of eval users a weakly regularized member often
    beats the prior by luck; the rule keeps it from being chosen unless it
    wins by more than noise, so an embedding that carries nothing scores
    about the majority class.

    Args:
      x_train: ``[n, F]`` features (dense, or scipy sparse e.g. bag-of-items).
        Dense features are standardized with train mean/std.
      y_train: ``[n]`` int labels in ``[0, num_classes)``.
      x_eval, y_eval: eval users, same layout; used for early stopping and L2
        selection only.
      num_classes: e.g. number of genres, or the item vocabulary size for
        next-item prediction (reserved ids are then simply never targets).
      l2_grid: penalties ``l2 * ||W||^2`` (summed over all weights) added to
        the mean cross-entropy; any order (sorted strongest first). The
        default reaches 10: its optimum has ``|W| ~ |grad CE| / 20``, about
        zero, so the strongest member is barely more than the prior.
      max_epochs, patience, min_epochs: stop a member after ``patience``
        epochs without a strict eval improvement, but not before
        ``min_epochs`` (tiny label fractions have one step per epoch); its
        best-epoch weights are kept. Next item on ML-1M scale (4.8k users,
        3.7k classes) stops after ~10-20 epochs at the default learning rate.
      seed: minibatch order (weights start at zero, so nothing else is random).
      batch_size: minibatch size; ``n <= batch_size`` is full-batch Adam.
      learning_rate: Adam step size.
      select_metric: ``(scores [m, C], eval_rows [m]) -> per-row values [m]``
        averaged over eval users, higher = better; default the log-likelihood
        of the eval labels (`log_likelihood_rows`; `accuracy_rows` is the
        other built-in; `evaluate_embeddings` passes NDCG@k for next item).
      max_params: grid members trained together while ``F * C * members``
        stays under this (and the logits ``batch * C * members`` under 2**26
        floats); larger grids run in several groups.
      eval_chunk_size: at most this many eval rows scored at once (fewer when
        ``rows * C * members`` would exceed 2**26 floats).
      prior_counts: ``[num_classes]`` label-free counts the initial bias is the
        smoothed log prior of instead of ``y_train``'s (next item: item
        popularity in train histories, so that at 1% labels the probe starts
        from the popularity ranking rather than from the 7 sampled targets).
      prior_smoothing: add-``smoothing`` counts of the initial log-prior bias
        (> 0, so classes absent from the sample keep a finite bias).
      se_rule: standard errors of slack in the selection rule; 0 = plain
        argmax of the eval metric (ties -> the simpler candidate). Default
        0.5 (measured on 64-d synthetic features, 8 classes, 100 eval users,
        selection on the log-likelihood): ESL's 1 SE cost 2-4 accuracy
        points at 100% labels on informative features, while with 0 SE a
        probe on pure noise selected on 10 eval users scored up to 0.10
        (mean 0.02 over 6 seeds) below the majority class; 0.5 SE kept noise
        within 0.002 of the majority class and matched 0 SE at 100% labels.
      standardize: standardize the features with train mean/std (default:
        dense yes, sparse no: centering would make sparse features dense).
        The weights returned act on raw features either way.
      shortcuts: skip work that cannot change the result (default True):
        classes that are no train label share one weight column
        (`_Columns`), a member that stopped leaves the stacked weights, and
        sparse feature columns without a nonzero among the train rows are
        dropped (their weights get no gradient and stay 0). False runs the
        plain computation, for checking; results agree to float rounding.

    Cost: an epoch is ``O(nnz(x_train) * C' * members)`` with ``C'`` the
    number of distinct train labels (+ 1 shared column). Next item at ML-1M
    scale (4.8k train users, 1.6k distinct first future items, 3.5k items,
    default grid), measured in CPU seconds per (fraction 1.0, seed): ~40 on
    bags of ~60 items, ~5 on 64-d embeddings; ~1-5 at fractions <= 0.25.
    """
    y_train = np.asarray(y_train).astype(np.int64).reshape(-1)
    y_eval = np.asarray(y_eval).astype(np.int64).reshape(-1)
    for name, x, y in (("train", x_train, y_train), ("eval", x_eval, y_eval)):
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x_{name} {x.shape} must be 2-D with one row per label ({y.shape[0]})."
            )
        if not y.size:
            raise ValueError(f"y_{name} is empty; the probe needs {name} users with labels.")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(
                f"y_{name} must be in [0, {num_classes}); got [{y.min()}, {y.max()}]. "
                "Drop unknown (-1) labels before training."
            )
    if x_train.shape[1] != x_eval.shape[1]:
        raise ValueError(f"feature dims differ: train {x_train.shape}, eval {x_eval.shape}.")
    if not l2_grid:
        raise ValueError("l2_grid must hold at least one value.")
    if not prior_smoothing > 0:
        raise ValueError(f"prior_smoothing must be > 0, got {prior_smoothing}.")
    if not se_rule >= 0:
        raise ValueError(f"se_rule must be >= 0, got {se_rule}.")

    num_features = x_train.shape[1]
    sparse = sp.issparse(x_train)
    if standardize is None:
        standardize = not sparse
    if sparse and standardize:
        raise ValueError("standardize=True needs dense features (centering densifies them).")
    active = None  # feature columns kept (None: all)
    if sparse:
        x_tr = sp.csr_matrix(x_train, dtype=np.float32)
        x_ev = sp.csr_matrix(x_eval, dtype=np.float32)
        if shortcuts:
            active = np.unique(x_tr.indices)
            x_tr, x_ev = x_tr[:, active], x_ev[:, active]
            x_tr.sort_indices()
    else:
        x_tr = np.asarray(x_train, dtype=np.float32)
        x_ev = np.asarray(x_eval, dtype=np.float32)
    mean = scale = None
    if standardize:
        mean = x_tr.mean(axis=0)
        scale = x_tr.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
        x_tr = (x_tr - mean) / scale
        x_ev = (x_ev - mean) / scale
    metric = select_metric or log_likelihood_rows(y_eval)
    if prior_counts is None:
        bias_init = log_prior(y_train, num_classes, smoothing=prior_smoothing)
    else:
        counts = np.asarray(prior_counts, dtype=np.float64).reshape(-1) + prior_smoothing
        if counts.size != num_classes:
            raise ValueError(f"prior_counts has {counts.size} entries, expected {num_classes}.")
        bias_init = np.log(counts / counts.sum()).astype(np.float32)
    columns = _Columns.make(y_train, num_classes, tie=shortcuts, bias_init=bias_init)
    col_bias = np.zeros(columns.num_cols, np.float32)
    col_bias[columns.of_class] = bias_init  # equal within a shared column
    c = columns.num_cols

    per_group = max(
        1,
        min(
            max_params // max(1, x_tr.shape[1] * c),
            _ACTIVATION_BUDGET // (min(batch_size, y_train.size) * c),
        ),
    )
    # Strongest first: the order of simplicity the selection rule walks.
    grid = sorted((float(v) for v in l2_grid), reverse=True)
    members = []
    for s in range(0, len(grid), per_group):
        group, prior = _fit_group(
            x_tr,
            columns.of_class[y_train],
            x_ev,
            metric,
            grid[s : s + per_group],
            columns,
            max_epochs=max_epochs,
            patience=patience,
            min_epochs=min_epochs,
            seed=seed,
            batch_size=batch_size,
            learning_rate=learning_rate,
            eval_chunk_size=eval_chunk_size,
            bias_init=col_bias,
            drop_stopped=shortcuts,
        )
        members += group
    # Candidates from simplest to most complex: the prior predictor (every
    # member's epoch 0; reported as the strongest L2 at epoch 0), then each
    # member's early-stopped best, strongest L2 first.
    candidates = [dict(members[0], **prior, best_epoch=0, w=None, b=col_bias)] + members
    means = np.array([m["eval_metric"] for m in candidates])
    top = int(np.argmax(means))
    se = _standard_error(candidates[top]["values"])
    threshold = means[top] - se_rule * se
    chosen = int(np.flatnonzero(means >= threshold)[0])
    pick = candidates[chosen]
    w = np.zeros((num_features, num_classes), dtype=np.float32)
    if pick["w"] is not None:  # else the prior predictor: W = 0
        rows = slice(None) if active is None else active
        w[rows] = pick["w"][:, columns.of_class]
    b = np.asarray(pick["b"], dtype=np.float32)[columns.of_class]
    if mean is not None:  # fold standardization: ((x - mean)/scale) @ w + b
        w = w / scale[:, None]
        b = b - mean @ w
    selection = [
        {k: m[k] for k in ("eval_metric", "best_epoch", "epochs_run")}
        | {"l2": l2, "eval_se": _standard_error(m["values"])}
        for l2, m in zip(grid, members)
    ]
    return Probe(
        weights=np.asarray(w, dtype=np.float32),
        bias=np.asarray(b, dtype=np.float32),
        l2=grid[max(0, chosen - 1)],
        best_epoch=int(pick["best_epoch"]),
        eval_metric=float(pick["eval_metric"]),
        selection=selection,
        prior_eval_metric=float(prior["eval_metric"]),
        best_eval_metric=float(means[top]),
        threshold=float(threshold),
    )


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-row eval values (sample std, ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(values.size))


@dataclasses.dataclass
class PairProbe:
    """Liked-item probe: binary logistic regression on `pair_features`."""

    probe: Probe
    item_emb: np.ndarray | None
    num_items: int | None

    def features(self, user_emb, pairs: Pairs):
        return pair_features(user_emb, pairs, self.item_emb, num_items=self.num_items)

    def predict_logits(self, user_emb, pairs: Pairs) -> np.ndarray:
        """``[m]`` logit of "liked" (class-1 minus class-0 softmax logit)."""
        z = self.probe.predict_scores(self.features(user_emb, pairs))
        return (z[:, 1] - z[:, 0]).astype(np.float64)

    def predict_proba(self, user_emb, pairs: Pairs) -> np.ndarray:
        """``[m]`` probability of "liked"."""
        return 1.0 / (1.0 + np.exp(-self.predict_logits(user_emb, pairs)))


def train_pair_probe(
    user_emb_train,
    pairs_train: Pairs,
    user_emb_eval,
    pairs_eval: Pairs,
    *,
    item_emb: np.ndarray | None = None,
    num_items: int | None = None,
    **probe_kwargs,
) -> PairProbe:
    """Liked-item probe on (user embedding, model's item embedding) pairs.

    ``user_emb_*`` are the split's user embeddings ``[n_split, d]``; pairs index
    into them. ``item_emb [V, e]`` is the model's item table (for BT: the
    encoder's input embeddings; for DE: the item tower); ``None`` = one-hot
    items over ``num_items``. ``probe_kwargs`` go to `train_softmax_probe`
    (eval accuracy selects L2 unless ``select_metric`` is given).
    """
    x_tr = pair_features(user_emb_train, pairs_train, item_emb, num_items=num_items)
    x_ev = pair_features(user_emb_eval, pairs_eval, item_emb, num_items=num_items)
    probe = train_softmax_probe(
        x_tr, pairs_train.labels, x_ev, pairs_eval.labels, 2, **probe_kwargs
    )
    return PairProbe(probe, item_emb, num_items)


# --------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------


def _as_pairs(value: Any) -> Pairs:
    if isinstance(value, Pairs):
        return value
    return Pairs(
        np.asarray(value["user_index"]).astype(np.int64),
        np.asarray(value["item_ids"]).astype(np.int64),
        np.asarray(value["labels"]).astype(np.int64),
    )


def _check_splits(task: str, per_split: Mapping[str, Any]) -> None:
    missing = [s for s in ("train", "eval", "test") if s not in per_split]
    if missing:
        raise ValueError(f"labels[{task!r}] lacks split(s) {missing}; need train, eval, test.")


def _next_item_masks(targets: np.ndarray, num_items: int):
    """(trainable, scored): users with a known target train/select; users with
    any future item are scored (OOV targets count as misses)."""
    trainable = (targets >= NUM_RESERVED) & (targets < num_items)
    scored = targets != PAD_ID
    return trainable, scored


def _row(model, task, metric, fraction, seed, value, **extra) -> dict:
    return {
        "model": model,
        "task": task,
        "metric": metric,
        "fraction": float(fraction),
        "seed": int(seed),
        "value": float(value),
    } | extra


def evaluate_embeddings(
    emb: Mapping[str, Any],
    labels: Mapping[str, Mapping[str, Any]],
    *,
    model: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    num_items: int | None = None,
    item_emb: np.ndarray | None = None,
    history: Mapping[str, np.ndarray] | None = None,
    exclude_history: bool = True,
    k: int = 10,
    min_selection_users: int = MIN_SELECTION_USERS,
    probe_kwargs: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Every downstream task for one model's frozen user embeddings.

    Args:
      emb: split ("train", "eval", "test") -> ``[n_split, d]`` user embeddings
        (dense, or sparse e.g. `bag_of_items_features`).
      labels: task -> split -> labels. Task kinds by name:
        ``"next_item"``: ``[n]`` first future item ids (`first_future_item`),
        metrics ``hr@k``, ``ndcg@k`` over the full catalog (needs
        ``num_items``). Users without a future item (0) are skipped; OOV
        targets are never trained on and count as misses on test;
        ``"liked_item"``: `Pairs` (or a dict with the same fields), metrics
        ``accuracy``, ``auc``; users are sampled, then all their pairs used;
        any other name (``"favorite_genre"``, ``"attr_gender"``, ...):
        ``[n]`` class ids, -1 = unknown (skipped), metrics ``accuracy``,
        ``balanced_accuracy``; stratified sampling.
      model: name stored in every row (e.g. "bt", "de", "untrained").
      fractions, seeds: label fractions of train users and sampling seeds
        (the seed also orders the probe's minibatches).
      num_items: item vocabulary size incl. reserved ids (next/liked item).
      item_emb: ``[num_items, e]`` the model's item embeddings for the liked
        probe; None -> one-hot items.
      history: split -> padded ``[n, L]`` history item ids, needed when
        ``exclude_history``.
      exclude_history: remove history items from the next-item ranking
        (default True: in MovieLens a user rates a movie once, so history items
        are never a correct next item; the same rule applies to every model
        and floor). Stored in each next-item row.
      k: cutoff for HR/NDCG.
      min_selection_users: selection (L2, early stopping) at fraction f uses
        the labels of f of the EVAL users, at least this many
        (`sample_selection_users`; stratified by class for class tasks,
        uniform over users with a label for next item and liked item).
      probe_kwargs: passed to `train_softmax_probe` (l2_grid, max_epochs, ...).

    Returns:
      Rows ``{"model", "task", "metric", "fraction", "seed", "value",
      "n_train", "n_eval", "n_eval_labelled", "n_test", "l2", "best_epoch"}``
      (+ ``"exclude_history"``, ``"k"`` for next item; liked item counts
      pairs in ``n_*`` and users in ``n_train_users``, ``n_eval_users``,
      ``n_eval_users_labelled``). ``n_eval`` labels selected the probe, out of
      ``n_eval_labelled``.
    """
    probe_kwargs = dict(probe_kwargs or {})
    for split in ("train", "eval", "test"):
        if split not in emb:
            raise ValueError(f"emb lacks split {split!r}; need train, eval, test.")
    rows: list[dict] = []
    for task, per_split in labels.items():
        _check_splits(task, per_split)
        for fraction in fractions:
            for seed in seeds:
                kwargs = dict(probe_kwargs, seed=seed)
                if task == NEXT_ITEM:
                    rows += _eval_next_item(
                        emb,
                        per_split,
                        model,
                        fraction,
                        seed,
                        num_items,
                        history,
                        exclude_history,
                        k,
                        min_selection_users,
                        kwargs,
                    )
                elif task == LIKED_ITEM:
                    rows += _eval_liked(
                        emb,
                        per_split,
                        model,
                        fraction,
                        seed,
                        num_items,
                        item_emb,
                        min_selection_users,
                        kwargs,
                    )
                else:
                    rows += _eval_classification(
                        emb, per_split, task, model, fraction, seed, min_selection_users, kwargs
                    )
    return rows


def _eval_classification(emb, per_split, task, model, fraction, seed, min_select, kwargs):
    y = {s: np.asarray(per_split[s]).astype(np.int64).reshape(-1) for s in per_split}
    for s in ("train", "eval", "test"):
        if y[s].shape[0] != emb[s].shape[0]:
            raise ValueError(
                f"labels[{task!r}][{s!r}] has {y[s].shape[0]} users, emb[{s!r}] {emb[s].shape[0]}."
            )
    num_classes = int(max(v.max(initial=-1) for v in y.values())) + 1
    tr = sample_label_fraction(y["train"], fraction, seed)
    ev = sample_selection_users(y["eval"], fraction, seed, min_users=min_select)
    te = np.flatnonzero(y["test"] >= 0)
    probe = train_softmax_probe(
        emb["train"][tr],
        y["train"][tr],
        emb["eval"][ev],
        y["eval"][ev],
        num_classes,
        **kwargs,
    )
    pred = probe.predict(emb["test"][te])
    extra = dict(
        n_train=int(tr.size),
        n_eval=int(ev.size),
        n_eval_labelled=int(np.sum(y["eval"] >= 0)),
        n_test=int(te.size),
        l2=probe.l2,
        best_epoch=probe.best_epoch,
    )
    return [
        _row(
            model, task, "accuracy", fraction, seed, metrics.accuracy(y["test"][te], pred), **extra
        ),
        _row(
            model,
            task,
            "balanced_accuracy",
            fraction,
            seed,
            metrics.balanced_accuracy(y["test"][te], pred),
            **extra,
        ),
    ]


def _eval_next_item(
    emb, per_split, model, fraction, seed, num_items, history, exclude, k, min_select, kwargs
):
    if num_items is None:
        raise ValueError("next_item needs num_items (item vocab size incl. reserved ids).")
    if exclude and (history is None or any(s not in history for s in ("eval", "test"))):
        raise ValueError(
            "exclude_history=True needs history={'eval': [n, L], 'test': [n, L]} padded "
            "item ids; pass them or set exclude_history=False."
        )
    t = {s: np.asarray(per_split[s]).astype(np.int64).reshape(-1) for s in per_split}
    trainable_tr, _ = _next_item_masks(t["train"], num_items)
    trainable_ev, _ = _next_item_masks(t["eval"], num_items)
    _, scored_te = _next_item_masks(t["test"], num_items)
    # Unknown = -1 so sample_label_fraction skips them; no stratification by item.
    tr = sample_label_fraction(
        np.where(trainable_tr, t["train"], -1), fraction, seed, stratify=False
    )
    ev = sample_selection_users(
        np.where(trainable_ev, 0, -1), fraction, seed, stratify=False, min_users=min_select
    )
    te = np.flatnonzero(scored_te)
    hist_ev = history["eval"][ev] if exclude else None
    y_ev = t["eval"][ev]

    def ndcg_rows(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        ex = hist_ev[rows] if hist_ev is not None else None
        return metrics.ndcg_gains_at_k(metrics.target_ranks(scores, y_ev[rows], exclude=ex), k)

    kwargs.setdefault("select_metric", ndcg_rows)
    if history is not None and "train" in history:
        # Start from the popularity floor's ranking (label-free train histories).
        kwargs.setdefault("prior_counts", item_counts(history["train"], num_items))
    probe = train_softmax_probe(
        emb["train"][tr], t["train"][tr], emb["eval"][ev], y_ev, num_items, **kwargs
    )
    ranks = metrics.target_ranks(
        probe.score_fn(emb["test"][te]),
        t["test"][te],
        exclude=history["test"][te] if exclude else None,
    )
    extra = dict(
        n_train=int(tr.size),
        n_eval=int(ev.size),
        n_eval_labelled=int(trainable_ev.sum()),
        n_test=int(te.size),
        l2=probe.l2,
        best_epoch=probe.best_epoch,
        exclude_history=bool(exclude),
        k=int(k),
    )
    return [
        _row(
            model, NEXT_ITEM, f"hr@{k}", fraction, seed, metrics.hits_at_k(ranks, k).mean(), **extra
        ),
        _row(
            model,
            NEXT_ITEM,
            f"ndcg@{k}",
            fraction,
            seed,
            metrics.ndcg_gains_at_k(ranks, k).mean(),
            **extra,
        ),
    ]


def _has_pair(pairs: Pairs, n_users: int) -> np.ndarray:
    """``[n_users]`` 0 for users with at least one pair, -1 for the others."""
    has_pair = np.zeros(n_users, dtype=bool)
    has_pair[pairs.user_index] = True
    return np.where(has_pair, 0, -1)


def _pair_user_sample(pairs: Pairs, n_users: int, fraction, seed) -> np.ndarray:
    """Pair indices of a seeded fraction of the TRAIN users with pairs."""
    users = sample_label_fraction(_has_pair(pairs, n_users), fraction, seed, stratify=False)
    return np.flatnonzero(np.isin(pairs.user_index, users))


def _eval_liked(emb, per_split, model, fraction, seed, num_items, item_emb, min_select, kwargs):
    p = {s: _as_pairs(per_split[s]) for s in ("train", "eval", "test")}
    tr = _pair_user_sample(p["train"], emb["train"].shape[0], fraction, seed)
    has_eval = _has_pair(p["eval"], emb["eval"].shape[0])
    ev_users = sample_selection_users(
        has_eval, fraction, seed, stratify=False, min_users=min_select
    )
    ev = np.flatnonzero(np.isin(p["eval"].user_index, ev_users))
    pp = train_pair_probe(
        emb["train"],
        p["train"].subset(tr),
        emb["eval"],
        p["eval"].subset(ev),
        item_emb=item_emb,
        num_items=num_items,
        **kwargs,
    )
    logits = pp.predict_logits(emb["test"], p["test"])
    y = p["test"].labels
    extra = dict(
        n_train=int(tr.size),
        n_eval=int(ev.size),
        n_eval_labelled=len(p["eval"]),
        n_train_users=int(np.unique(p["train"].user_index[tr]).size),
        n_eval_users=int(ev_users.size),
        n_eval_users_labelled=int(np.sum(has_eval >= 0)),
        n_test=len(p["test"]),
        l2=pp.probe.l2,
        best_epoch=pp.probe.best_epoch,
    )
    return [
        _row(
            model,
            LIKED_ITEM,
            "accuracy",
            fraction,
            seed,
            metrics.accuracy(y, (logits > 0).astype(np.int64)),
            **extra,
        ),
        _row(model, LIKED_ITEM, "auc", fraction, seed, metrics.roc_auc(y, logits), **extra),
    ]


def majority_floor(
    labels: Mapping[str, Mapping[str, Any]],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    model: str = "majority",
) -> list[dict]:
    """Predict the majority class of the sampled train labels for every test
    user (classification tasks and liked item; next item is skipped, see
    `popularity_floor`). Same label samples as `evaluate_embeddings`, so it
    varies with fraction and seed. Liked-item AUC of a constant is 0.5."""
    rows = []
    for task, per_split in labels.items():
        if task == NEXT_ITEM:
            continue
        _check_splits(task, per_split)
        for fraction in fractions:
            for seed in seeds:
                if task == LIKED_ITEM:
                    p_tr, p_te = _as_pairs(per_split["train"]), _as_pairs(per_split["test"])
                    n_users = int(p_tr.user_index.max(initial=-1)) + 1
                    tr = _pair_user_sample(p_tr, n_users, fraction, seed)
                    c = metrics.majority_class(p_tr.labels[tr])
                    y = p_te.labels
                    pred = np.full_like(y, c)
                    extra = dict(n_train=int(tr.size), n_test=len(p_te), majority=c)
                    rows += [
                        _row(
                            model,
                            task,
                            "accuracy",
                            fraction,
                            seed,
                            metrics.accuracy(y, pred),
                            **extra,
                        ),
                        _row(
                            model,
                            task,
                            "auc",
                            fraction,
                            seed,
                            metrics.roc_auc(y, np.zeros(y.shape)),
                            **extra,
                        ),
                    ]
                    continue
                y_tr = np.asarray(per_split["train"]).astype(np.int64).reshape(-1)
                y_te = np.asarray(per_split["test"]).astype(np.int64).reshape(-1)
                y_te = y_te[y_te >= 0]
                tr = sample_label_fraction(y_tr, fraction, seed)
                c = metrics.majority_class(y_tr[tr])
                pred = np.full_like(y_te, c)
                extra = dict(n_train=int(tr.size), n_test=int(y_te.size), majority=c)
                rows += [
                    _row(
                        model,
                        task,
                        "accuracy",
                        fraction,
                        seed,
                        metrics.accuracy(y_te, pred),
                        **extra,
                    ),
                    _row(
                        model,
                        task,
                        "balanced_accuracy",
                        fraction,
                        seed,
                        metrics.balanced_accuracy(y_te, pred),
                        **extra,
                    ),
                ]
    return rows


def popularity_floor(
    counts: np.ndarray,
    test_targets: np.ndarray,
    *,
    test_history: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 10,
    model: str = "popularity",
) -> list[dict]:
    """Next-item floor: the same ranking for every user, by ``counts``
    (`item_counts` of train users' histories: label-free, so the value is
    identical for every fraction and seed; rows are repeated so the report
    can draw it beside the probes). Equal counts are ordered by smaller item id
    (no ties reach the pessimistic tie rule). ``test_history`` set -> history
    excluded, as in `evaluate_embeddings`."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    num_items = counts.size
    order = np.lexsort((np.arange(num_items), -counts))  # count desc, id asc
    scores = np.empty(num_items)
    scores[order] = np.arange(num_items, 0, -1, dtype=np.float64)
    targets = np.asarray(test_targets).astype(np.int64).reshape(-1)
    _, scored = _next_item_masks(targets, num_items)
    te = np.flatnonzero(scored)

    def rows_fn(start: int, stop: int) -> np.ndarray:
        return np.broadcast_to(scores, (stop - start, num_items))

    ranks = metrics.target_ranks(
        rows_fn, targets[te], exclude=None if test_history is None else test_history[te]
    )
    hr = float(metrics.hits_at_k(ranks, k).mean())
    ndcg = float(metrics.ndcg_gains_at_k(ranks, k).mean())
    extra = dict(n_test=int(te.size), exclude_history=test_history is not None, k=int(k))
    rows = []
    for fraction in fractions:
        for seed in seeds:
            rows += [
                _row(model, NEXT_ITEM, f"hr@{k}", fraction, seed, hr, **extra),
                _row(model, NEXT_ITEM, f"ndcg@{k}", fraction, seed, ndcg, **extra),
            ]
    return rows
