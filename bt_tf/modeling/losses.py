"""The Barlow Twins loss (Zbontar et al., 2021), global-batch correct under tf.distribute.

In the paper's names (facebookresearch/barlowtwins, main.py):

    c = bn(z1).T @ bn(z2) / N              # cross-correlation, [D, D]
    on_diag  = Σ_i (1 - c_ii)²             # invariance
    off_diag = Σ_{i≠j} c_ij²               # redundancy reduction
    loss = on_diag + lambd * off_diag

How the global batch is formed: under a `tf.distribute` strategy each of the
R replicas holds its own shard of the global batch of N rows. Every statistic
here is a sum over rows, so each replica computes its shard's sums and one
all-reduce (SUM) over replicas yields the global sums; the mean, variance and
`c` are then the ones of the whole global batch, and every replica ends up with
the same loss, equal to the single-device loss on the same N rows. Outside a
replica context, or with one replica, the sums are simply local.

Gradients: the all-reduce is differentiable (its gradient is again an
all-reduce SUM), so replica r's tape gives R × (its shard's share of dL/dθ),
and `optimizer.apply_gradients` then SUMs over replicas, giving R × dL/dθ.
The caller (the replica's train step, `BarlowTwinsModel.train_step`) must
therefore divide this already-global loss by R before differentiating; it is
not done here so that this function returns the loss value itself.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.distribute import all_sum


class BarlowTwinsTerms(NamedTuple):
    """The pieces of the loss: `loss = on_diag + lambd * off_diag`."""

    on_diag: tf.Tensor  # scalar Σ_i (1 - c_ii)²
    off_diag: tf.Tensor  # scalar Σ_{i≠j} c_ij² (not multiplied by lambd)
    c: tf.Tensor  # [D, D] cross-correlation over the global batch


def off_diagonal(x: tf.Tensor) -> tf.Tensor:
    """The off-diagonal elements of a square `[n, n]` matrix, as `[n - 1, n]`."""
    n = tf.shape(x)[0]
    return tf.reshape(tf.reshape(x, [-1])[:-1], [n - 1, n + 1])[:, 1:]


def cross_correlation(z1: tf.Tensor, z2: tf.Tensor, *, eps: float = 1e-5) -> tf.Tensor:
    """`c = bn(z1).T @ bn(z2) / N` over the global batch.

    `bn` standardizes each dimension with the batch mean and biased variance,
    `(z - mean) / sqrt(var + eps)`, as an affine-free batch norm in training
    mode; each view has its own statistics.

    Args:
        z1, z2: float `[n, D]` projector outputs of the two views (this
            replica's n rows of the global batch of N rows).
        eps: added to the variance, as in batch norm.

    Returns:
        float32 `[D, D]`, identical on every replica.
    """
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    # Two rounds of all-reduce: first the count and per-dimension sums (global
    # means), then the centered second moments (global variances and the
    # unnormalized c). Two passes are more accurate than E[z²] - E[z]².
    n, sum1, sum2 = all_sum(
        [tf.cast(tf.shape(z1)[0], tf.float32), tf.reduce_sum(z1, 0), tf.reduce_sum(z2, 0)]
    )
    d1 = z1 - sum1 / n
    d2 = z2 - sum2 / n
    sq1, sq2, cross = all_sum(
        [tf.reduce_sum(d1 * d1, 0), tf.reduce_sum(d2 * d2, 0), tf.matmul(d1, d2, transpose_a=True)]
    )
    std1 = tf.sqrt(sq1 / n + eps)
    std2 = tf.sqrt(sq2 / n + eps)
    return cross / n / (std1[:, tf.newaxis] * std2[tf.newaxis, :])


def barlow_twins_terms(z1: tf.Tensor, z2: tf.Tensor, *, eps: float = 1e-5) -> BarlowTwinsTerms:
    """The on- and off-diagonal terms of the BT loss over the global batch (see module doc)."""
    c = cross_correlation(z1, z2, eps=eps)
    on_diag = tf.reduce_sum(tf.square(1.0 - tf.linalg.diag_part(c)))
    off_diag = tf.reduce_sum(tf.square(off_diagonal(c)))
    return BarlowTwinsTerms(on_diag, off_diag, c)


def barlow_twins_loss(
    z1: tf.Tensor, z2: tf.Tensor, lambd: float, *, eps: float = 1e-5
) -> tf.Tensor:
    """`Σ_i (1 - c_ii)² + lambd Σ_{i≠j} c_ij²` with `c` over the global batch.

    Args:
        z1, z2: float `[n, D]` projector outputs of the two views of the same users.
        lambd: weight of the redundancy-reduction (off-diagonal) term; the
            paper uses 5e-3 for D = 8192, roughly 1/D.
        eps: variance epsilon of the standardization.

    Returns:
        float32 scalar, the same on every replica (divide by the number of
        replicas before differentiating inside a replica step; module doc).
    """
    terms = barlow_twins_terms(z1, z2, eps=eps)
    return terms.on_diag + lambd * terms.off_diag
