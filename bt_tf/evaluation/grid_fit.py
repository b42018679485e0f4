"""Trains a probe's whole L2 grid at once, as one stacked weight tensor (`fit_group`).

Adam is element-wise, so each grid member's trajectory is exactly the one it
would have alone; the members share only the minibatches. Classes that are no
train label share one weight column (`Columns`), a member that has stopped
leaves the stacked weights, and sparse features multiply as CSR matrices.
`probe.train_softmax_probe` calls it and selects among the members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse
import tensorflow as tf  # bt_tf/__init__ ran first (One Keras): tf.keras is tf_keras

__all__ = ["ACTIVATION_BUDGET", "SelectMetric", "Columns", "fit_group"]

# Float elements of one logits block (train minibatch or eval chunk): 256 MB.
ACTIVATION_BUDGET = 1 << 26

# Select metric: (scores [m, C] for eval rows `rows`, rows [m]) -> per-row values [m].
SelectMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Columns:
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
    def make(y: np.ndarray, num_classes: int, tie: bool, bias_init: np.ndarray) -> Columns:
        """Unseen classes with the same initial bias share a column (with a
        popularity prior, one column per distinct prior count)."""
        seen = np.unique(y)
        unseen = np.setdiff1d(np.arange(num_classes), seen)
        if not tie or unseen.size < 2:
            return Columns(np.arange(num_classes), np.ones(num_classes, np.float32))
        values, group = np.unique(np.asarray(bias_init)[unseen], return_inverse=True)
        if values.size == unseen.size:  # nothing to share
            return Columns(np.arange(num_classes), np.ones(num_classes, np.float32))
        of_class = np.empty(num_classes, dtype=np.int64)
        of_class[seen] = np.arange(seen.size)
        of_class[unseen] = seen.size + group.reshape(-1)
        mult = np.concatenate([np.ones(seen.size), np.bincount(group.reshape(-1))])
        return Columns(of_class, mult.astype(np.float32))


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

    def __init__(self, x_train, l2s, columns: Columns, bias_init: np.ndarray, learning_rate):
        self.x = x_train
        self.sparse = scipy.sparse.issparse(x_train)
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
        return _coo(scipy.sparse.csr_matrix(x)) if self.sparse else np.asarray(x, dtype=np.float32)

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
        ops = _sparse_ops if self.sparse else _dense_ops
        score, matmul, matmul_t, x_spec, one_spec = ops(w, b, f, g * c)

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


def _sparse_ops(w, b, num_features: int, width: int):
    """(score, matmul, matmul_t, step input spec, score input spec) on sparse
    batches: ``xb`` holds the COO parts of the batch and of its transpose
    (`_coo_pair`), turned into CSR matrices inside the graph."""

    def csr(indices, values, shape):
        return tf.raw_ops.SparseTensorToCSRSparseMatrix(
            indices=indices, values=values, dense_shape=shape
        )

    def matmul(xb, wv):
        z = tf.raw_ops.SparseMatrixMatMul(a=csr(*xb[:3]), b=wv)
        return tf.ensure_shape(z, [None, width])

    def score(xb):
        return tf.raw_ops.SparseMatrixMatMul(a=csr(*xb), b=w.read_value()) + b

    def matmul_t(xb, dz):
        out = tf.raw_ops.SparseMatrixMatMul(a=csr(*xb[3:]), b=dz)
        return tf.ensure_shape(out, [num_features, width])

    coo = (
        tf.TensorSpec([None, 2], tf.int64),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([2], tf.int64),
    )
    return score, matmul, matmul_t, coo + coo, coo


def _dense_ops(w, b, num_features: int, width: int):
    """(score, matmul, matmul_t, step input spec, score input spec) on dense batches."""

    def score(xb):
        return tf.matmul(xb, w) + b

    def matmul(xb, wv):
        return tf.matmul(xb, wv)

    def matmul_t(xb, dz):
        return tf.matmul(xb, dz, transpose_a=True)

    spec = tf.TensorSpec([None, num_features], tf.float32)
    return score, matmul, matmul_t, spec, spec


def _coo(x: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices ``[nnz, 2]``, values, shape) of a canonical CSR matrix, row-major."""
    coo = x.tocoo()
    return (
        np.stack([coo.row, coo.col], axis=1).astype(np.int64),
        coo.data.astype(np.float32),
        np.asarray(coo.shape, dtype=np.int64),
    )


def _coo_pair(x: scipy.sparse.csr_matrix) -> tuple:
    """COO parts of ``x`` and of ``x^T``, turned into CSR matrices in the step.

    ``SparseMatrixMatMul`` (``tf.linalg.sparse``) on CPU takes 3-4x less time
    than ``tf.sparse.sparse_dense_matmul`` (about scipy's speed, measured);
    with ``transpose_a`` it is 2x slower, hence the explicit transpose.
    """
    x = scipy.sparse.csr_matrix(x)
    x.sort_indices()
    return _coo(x) + _coo(x.T.tocsr())


def fit_group(
    x_train,
    y_train: np.ndarray,
    x_eval,
    eval_metric: SelectMetric,
    l2s: Sequence[float],
    columns: Columns,
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

    ``y_train`` are column ids (`Columns`); ``bias_init`` is per column.
    Returns (per member: best state, weights ``[F, C']``), the prior's eval
    values). ``drop_stopped``: a stopped member leaves the stacked tensors
    (Adam is element-wise, so the others' trajectories are unchanged).
    """
    g, c, num_classes = len(l2s), columns.num_cols, columns.of_class.size
    state = _Members(x_train, l2s, columns, bias_init, learning_rate)
    n_eval = x_eval.shape[0]
    chunk = max(1, min(eval_chunk_size, ACTIVATION_BUDGET // (g * max(c, num_classes))))
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
