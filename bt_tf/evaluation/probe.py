"""Linear probes on frozen features: `train_softmax_probe` and the liked-item `train_pair_probe`.

A probe is trained on a sampled fraction of train users' labels
(`bt_tf.evaluation.labels`), starting from the prior predictor (zero weights,
log-prior bias); its L2 strength is chosen, and training early-stopped, on the
SAME fraction of EVAL users. The simplest candidate within
`settings.DEFAULT_SE_RULE` standard errors of the best wins, so a probe on
uninformative features stays at the majority class. It is scored once on TEST
users by the task (`bt_tf.evaluation.tasks`).

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
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse

from bt_tf.evaluation.grid_fit import ACTIVATION_BUDGET, Columns, SelectMetric, fit_group
from bt_tf.evaluation.labels import Pairs
from bt_tf.evaluation.settings import DEFAULT_L2_GRID, DEFAULT_SE_RULE

__all__ = [
    "Probe",
    "PairProbe",
    "SelectMetric",
    "log_prior",
    "log_likelihood_rows",
    "accuracy_rows",
    "pair_features",
    "train_softmax_probe",
    "train_pair_probe",
]


def pair_features(
    user_emb: np.ndarray | scipy.sparse.spmatrix,
    pairs: Pairs,
    item_emb: np.ndarray | None = None,
    *,
    num_items: int | None = None,
) -> np.ndarray | scipy.sparse.csr_matrix:
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
        v = scipy.sparse.csr_matrix(
            (np.ones(m, dtype=np.float32), (np.arange(m), pairs.item_ids)),
            shape=(m, num_items),
        )
        return scipy.sparse.hstack([scipy.sparse.csr_matrix(u, dtype=np.float32), v], format="csr")
    v = np.asarray(item_emb, dtype=np.float32)[pairs.item_ids]
    if scipy.sparse.issparse(u):
        return scipy.sparse.hstack([u, scipy.sparse.csr_matrix(v)], format="csr").astype(np.float32)
    u = np.asarray(u, dtype=np.float32)
    parts = [u, v] + ([u * v] if u.shape[1] == v.shape[1] else [])
    return np.concatenate(parts, axis=1)


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

    def predict_scores(
        self, x: np.ndarray | scipy.sparse.spmatrix, chunk_size: int = 4096
    ) -> np.ndarray:
        """``[n, C]`` float32 logits for features ``x [n, F]`` (dense or sparse)."""
        n = x.shape[0]
        out = np.empty((n, self.num_classes), dtype=np.float32)
        for s in range(0, n, chunk_size):
            out[s : s + chunk_size] = self.score_fn(x)(s, min(n, s + chunk_size))
        return out

    def score_fn(self, x: np.ndarray | scipy.sparse.spmatrix) -> Callable[[int, int], np.ndarray]:
        """``(start, stop) -> logits of rows start:stop``, for chunked ranking
        (`bt_tf.metrics` accepts it as ``scores``)."""

        def rows(start: int, stop: int) -> np.ndarray:
            z = x[start:stop] @ self.weights
            return np.asarray(z, dtype=np.float32) + self.bias

        return rows

    def predict(self, x: np.ndarray | scipy.sparse.spmatrix) -> np.ndarray:
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


def train_softmax_probe(
    x_train: np.ndarray | scipy.sparse.spmatrix,
    y_train: np.ndarray,
    x_eval: np.ndarray | scipy.sparse.spmatrix,
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
        (`grid_fit.Columns`), a member that stopped leaves the stacked weights, and
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
    _check_inputs(x_train, y_train, x_eval, y_eval, num_classes)
    if not l2_grid:
        raise ValueError("l2_grid must hold at least one value.")
    if not prior_smoothing > 0:
        raise ValueError(f"prior_smoothing must be > 0, got {prior_smoothing}.")
    if not se_rule >= 0:
        raise ValueError(f"se_rule must be >= 0, got {se_rule}.")
    feats = _Features.make(x_train, x_eval, standardize=standardize, shortcuts=shortcuts)
    metric = select_metric or log_likelihood_rows(y_eval)
    bias_init = _initial_bias(y_train, num_classes, prior_counts, prior_smoothing)
    columns = Columns.make(y_train, num_classes, tie=shortcuts, bias_init=bias_init)
    col_bias = np.zeros(columns.num_cols, np.float32)
    col_bias[columns.of_class] = bias_init  # equal within a shared column
    c = columns.num_cols
    per_group = max(
        1,
        min(
            max_params // max(1, feats.x_train.shape[1] * c),
            ACTIVATION_BUDGET // (min(batch_size, y_train.size) * c),
        ),
    )
    # Strongest first: the order of simplicity the selection rule walks.
    grid = sorted((float(v) for v in l2_grid), reverse=True)
    members = []
    for s in range(0, len(grid), per_group):
        group, prior = fit_group(
            feats.x_train,
            columns.of_class[y_train],
            feats.x_eval,
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
    return _select(grid, members, prior, col_bias, columns, feats, se_rule)


def _check_inputs(x_train, y_train, x_eval, y_eval, num_classes: int) -> None:
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


def _initial_bias(y_train, num_classes: int, prior_counts, prior_smoothing: float) -> np.ndarray:
    """``[num_classes]`` smoothed log prior of ``y_train`` or of ``prior_counts``."""
    if prior_counts is None:
        return log_prior(y_train, num_classes, smoothing=prior_smoothing)
    counts = np.asarray(prior_counts, dtype=np.float64).reshape(-1) + prior_smoothing
    if counts.size != num_classes:
        raise ValueError(f"prior_counts has {counts.size} entries, expected {num_classes}.")
    return np.log(counts / counts.sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Features:
    """The probe's train / eval features as trained on, and how to map weights back.

    Sparse: CSR float32, with ``shortcuts`` only the ``active`` columns (a train
    nonzero). Dense: float32, standardized by ``mean``/``scale`` when asked.
    """

    x_train: np.ndarray | scipy.sparse.csr_matrix
    x_eval: np.ndarray | scipy.sparse.csr_matrix
    num_features: int
    active: np.ndarray | None = None  # feature columns kept (None: all)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @staticmethod
    def make(x_train, x_eval, *, standardize: bool | None, shortcuts: bool) -> _Features:
        sparse = scipy.sparse.issparse(x_train)
        if standardize is None:
            standardize = not sparse
        if sparse and standardize:
            raise ValueError("standardize=True needs dense features (centering densifies them).")
        active = None
        if sparse:
            x_tr = scipy.sparse.csr_matrix(x_train, dtype=np.float32)
            x_ev = scipy.sparse.csr_matrix(x_eval, dtype=np.float32)
            if shortcuts:
                active = np.unique(x_tr.indices)
                x_tr, x_ev = x_tr[:, active], x_ev[:, active]
                x_tr.sort_indices()
        else:
            x_tr = np.asarray(x_train, dtype=np.float32)
            x_ev = np.asarray(x_eval, dtype=np.float32)
        if not standardize:
            return _Features(x_tr, x_ev, x_train.shape[1], active)
        mean = x_tr.mean(axis=0)
        scale = x_tr.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
        x_tr = (x_tr - mean) / scale
        x_ev = (x_ev - mean) / scale
        return _Features(x_tr, x_ev, x_train.shape[1], active, mean, scale)

    def raw_weights(self, w: np.ndarray | None, b: np.ndarray, num_classes: int):
        """(weights ``[F, C]``, bias ``[C]``) acting on the raw features (``w``:
        per class, on the kept columns; None: the prior predictor, W = 0)."""
        weights = np.zeros((self.num_features, num_classes), dtype=np.float32)
        if w is not None:
            weights[slice(None) if self.active is None else self.active] = w
        if self.mean is not None:  # fold standardization: ((x - mean)/scale) @ w + b
            weights = weights / self.scale[:, None]
            b = b - self.mean @ weights
        return weights, b


def _select(grid, members, prior, col_bias, columns: Columns, feats: _Features, se_rule):
    """The probe: the simplest candidate within ``se_rule`` standard errors of the best.

    Candidates from simplest to most complex: the prior predictor (every
    member's epoch 0; reported as the strongest L2 at epoch 0), then each
    member's early-stopped best, strongest L2 first.
    """
    candidates = [dict(members[0], **prior, best_epoch=0, w=None, b=col_bias)] + members
    means = np.array([m["eval_metric"] for m in candidates])
    top = int(np.argmax(means))
    se = _standard_error(candidates[top]["values"])
    threshold = means[top] - se_rule * se
    chosen = int(np.flatnonzero(means >= threshold)[0])
    pick = candidates[chosen]
    w = None if pick["w"] is None else pick["w"][:, columns.of_class]
    b = np.asarray(pick["b"], dtype=np.float32)[columns.of_class]
    w, b = feats.raw_weights(w, b, columns.of_class.size)
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
