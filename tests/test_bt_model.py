"""BarlowTwinsModel: learns on two views, reports the same metrics in train and test."""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.encoders import SequenceEncoder, build_projector
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID
from bt_tf.losses import barlow_twins_loss
from bt_tf.models import VIEW1, VIEW2, BarlowTwinsModel

VOCAB, LENGTH, BATCH = 30, 12, 32
METRIC_NAMES = ["loss", "on_diag", "off_diag", "c_diag_mean"]


def _views(num_users=64, seed=0):
    """Two crude views per user: each masks a different ~20% of the same history."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, size=num_users)
    items = rng.integers(NUM_RESERVED, VOCAB, size=(num_users, LENGTH))
    items[np.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD_ID
    views = []
    for _ in range(2):
        view = items.copy()
        view[(rng.random(items.shape) < 0.2) & (items != PAD_ID)] = MASK_ID
        views.append(view)
    return {VIEW1: views[0], VIEW2: views[1]}


def _model(lambd=0.05, seed=0):
    tf.keras.utils.set_random_seed(seed)
    encoder = SequenceEncoder(VOCAB, max_len=LENGTH, dim=16, num_blocks=1, num_heads=2, dropout=0.0)
    return BarlowTwinsModel(encoder, build_projector("32-16"), lambd=lambd)


def test_training_reduces_the_loss_and_metrics_match_between_fit_and_evaluate():
    data = _views()
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(BATCH)
    model = _model()
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    before = model.evaluate(dataset, verbose=0, return_dict=True)
    history = model.fit(dataset, epochs=15, verbose=0)
    after = model.evaluate(dataset, verbose=0, return_dict=True)

    assert list(history.history) == METRIC_NAMES
    assert list(before) == METRIC_NAMES and list(after) == METRIC_NAMES
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    # The two views of a user became more alike: the diagonal of c moved towards 1.
    assert after["c_diag_mean"] > before["c_diag_mean"] + 0.1
    # loss = on_diag + lambd * off_diag, per batch, hence also averaged over batches.
    assert after["loss"] == pytest.approx(after["on_diag"] + 0.05 * after["off_diag"], rel=1e-5)


def test_test_step_loss_is_the_loss_function_on_projected_views():
    data = _views(num_users=BATCH)
    model = _model()
    model.compile(optimizer="sgd")
    got = model.evaluate(tf.data.Dataset.from_tensors(data), verbose=0, return_dict=True)
    z1 = model.project(data[VIEW1], training=False)
    z2 = model.project(data[VIEW2], training=False)
    assert got["loss"] == pytest.approx(float(barlow_twins_loss(z1, z2, 0.05)), rel=1e-5)


def test_call_returns_the_encoder_user_embedding():
    data = _views(num_users=5)
    model = _model()
    out = model(data[VIEW1])
    assert out.shape == (5, 16)
    np.testing.assert_allclose(out.numpy(), model.encoder(data[VIEW1]).numpy(), atol=1e-6)
    assert model.predict(data[VIEW1], verbose=0).shape == (5, 16)
    assert model.project(data[VIEW1]).shape == (5, 16)


def test_same_seed_same_training():
    data = _views()
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(BATCH)
    runs = []
    for _ in range(2):
        model = _model(seed=3)
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
        runs.append(model.fit(dataset, epochs=2, verbose=0).history["loss"])
    assert runs[0] == runs[1]


def test_batches_without_two_views_are_rejected_with_a_clear_message():
    model = _model()
    model.compile(optimizer="sgd")
    items = _views(num_users=8)[VIEW1]
    with pytest.raises(ValueError, match="view1"):
        model.fit(tf.data.Dataset.from_tensors({"items": items}), verbose=0)
