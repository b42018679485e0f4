"""The Barlow Twins pre-training model (shape of keras-io's SimCLR example).

`BarlowTwinsModel` wraps a `SequenceEncoder` and a projector. `fit` consumes
batches `{"view1": int [B, L], "view2": int [B, L]}` (two augmented views of
the same B users, from `bt_tf.data.dataset`); `call`/`predict` return the encoder's
user embedding `[B, dim]`, which is what downstream probes and export use.
"""

from __future__ import annotations

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf.distribute import num_replicas
from bt_tf.features import VIEW1, VIEW2
from bt_tf.modeling.losses import barlow_twins_terms


def _views(data):
    """Unpacks a batch: a dict with VIEW1/VIEW2, or `(dict,)` as Keras may pass it."""
    if isinstance(data, (tuple, list)):
        data = data[0]
    if not isinstance(data, dict) or VIEW1 not in data or VIEW2 not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"BarlowTwinsModel expects batches {{{VIEW1!r}: int [B, L], {VIEW2!r}: "
            f"int [B, L]}} (two augmented views), got {got}. Build the dataset with "
            "bt_tf.data.dataset's pre-training pipeline."
        )
    return data[VIEW1], data[VIEW2]


class BarlowTwinsModel(tf.keras.Model):
    """Encoder + projector trained with the Barlow Twins loss.

    Args:
        encoder: maps int items `[B, L]` to `[B, dim]` (a `SequenceEncoder`).
        projector: maps `[B, dim]` to `[B, D]` (`build_projector(...)`).
        lambd: weight of the off-diagonal (redundancy-reduction) term.
        eps: variance epsilon of the loss's standardization.

    Metrics (train and test): "loss", "on_diag" = Σ(1 − c_ii)²,
    "off_diag" = Σ_{i≠j} c_ij² (before lambd), "c_diag_mean" = mean c_ii
    (→ 1 as the views become invariant), all over the global batch.

    Under `tf.distribute`, build and compile the model inside
    `strategy.scope()`; the loss and projector batch norm use global-batch
    statistics, so R replicas give the same update as one device on the
    same global batch.
    """

    def __init__(self, encoder, projector, lambd: float = 5e-3, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projector = projector
        self.lambd = lambd
        self.eps = eps
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.on_diag_tracker = tf.keras.metrics.Mean(name="on_diag")
        self.off_diag_tracker = tf.keras.metrics.Mean(name="off_diag")
        self.c_diag_tracker = tf.keras.metrics.Mean(name="c_diag_mean")

    @property
    def metrics(self):
        return [self.loss_tracker, self.on_diag_tracker, self.off_diag_tracker, self.c_diag_tracker]

    def call(self, items, training=False):
        """User embedding `[B, dim]` of int items `[B, L]`."""
        return self.encoder(items, training=training)

    def project(self, items, training=False):
        """Projector output `[B, D]` of int items `[B, L]` (what the loss sees)."""
        return self.projector(self.encoder(items, training=training), training=training)

    def _loss_and_terms(self, data, training):
        view1, view2 = _views(data)
        z1 = self.project(view1, training=training)
        z2 = self.project(view2, training=training)
        terms = barlow_twins_terms(z1, z2, eps=self.eps)
        return terms.on_diag + self.lambd * terms.off_diag, terms

    def _update_metrics(self, loss, terms):
        self.loss_tracker.update_state(loss)
        self.on_diag_tracker.update_state(terms.on_diag)
        self.off_diag_tracker.update_state(terms.off_diag)
        self.c_diag_tracker.update_state(tf.reduce_mean(tf.linalg.diag_part(terms.c)))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, terms = self._loss_and_terms(data, training=True)
            # `loss` is already the GLOBAL-batch loss on every replica (the BT
            # statistics and the projector's batch norm are all-reduced).
            # Backprop through those all-reduces gives each replica R × its
            # shard's share of the gradient and apply_gradients SUMs over the
            # R replicas, so the loss is divided by R here: the applied
            # gradient is then exactly dL/dθ, as on one device.
            scaled_loss = loss / num_replicas()
        self.optimizer.minimize(scaled_loss, self.trainable_variables, tape=tape)
        return self._update_metrics(loss, terms)

    def test_step(self, data):
        loss, terms = self._loss_and_terms(data, training=False)
        return self._update_metrics(loss, terms)
