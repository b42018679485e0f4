"""BarlowTwinsModel: learns on two views, reports the same metrics in train and test."""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID, VIEW1, VIEW2
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.losses import barlow_twins_loss, barlow_twins_terms
from bt_tf.modeling.precision import optimizer_for_policy, set_precision
from bt_tf.modeling.projector import build_projector

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


@pytest.fixture
def precision():
    """Sets a Keras dtype policy for one test and restores float32 afterwards."""
    yield set_precision
    set_precision(None)


def _steps(weights, num_steps):
    """(model, evaluate loss at ``weights``, per-step losses of SGD on one batch)."""
    data = _views(num_users=BATCH)
    model = _model()
    model.project(data[VIEW1][:2])  # creates the variables
    model.set_weights(weights)
    model.compile(optimizer=optimizer_for_policy(tf.keras.optimizers.SGD(0.01)))
    batch = tf.data.Dataset.from_tensors(data)
    loss = model.evaluate(batch, verbose=0, return_dict=True)["loss"]
    # One step per epoch: each logged loss is that step's loss (metrics reset per epoch).
    history = model.fit(batch.repeat(), steps_per_epoch=1, epochs=num_steps, verbose=0)
    return model, loss, np.array(history.history["loss"])


# bfloat16 (~7 s, no loss scaling) is slow; float16 (loss scaling on top) runs by default.
@pytest.mark.parametrize(
    "policy", [pytest.param("mixed_bfloat16", marks=pytest.mark.slow), "mixed_float16"]
)
def test_mixed_precision_steps_are_finite_and_close_to_float32(precision, policy):
    """16-bit compute, float32 weights, float32 BT statistics.

    Tolerances: at the same weights the loss is within 1% of float32; over 3
    bfloat16 SGD steps (8-bit mantissa) every step's loss within 5%. float16
    gets a dynamic loss scale, whose first steps may be skipped (overflow),
    so its trajectory is only required to be finite and to learn.
    """
    precision("float32")
    reference = _model()
    reference.project(_views(num_users=2)[VIEW1])
    weights = reference.get_weights()
    _, eval32, steps32 = _steps(weights, 6)
    precision(policy)
    model, eval16, steps16 = _steps(weights, 6)

    compute = policy.split("_")[1]
    assert model.encoder.compute_dtype == compute and model.projector.compute_dtype == compute
    assert model.encoder.variable_dtype == "float32"  # master weights stay float32
    is_scaled = isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert is_scaled == (policy == "mixed_float16")
    views = _views(num_users=BATCH)
    z1, z2 = model.project(views[VIEW1]), model.project(views[VIEW2])
    assert z1.dtype == compute
    assert barlow_twins_terms(z1, z2).c.dtype == tf.float32  # the loss casts up

    assert eval16 == pytest.approx(eval32, rel=0.01)
    assert np.isfinite(steps16).all(), steps16
    assert steps16[-1] < 0.8 * steps16[0]  # it learns
    if policy == "mixed_bfloat16":
        np.testing.assert_allclose(steps16[:3], steps32[:3], rtol=0.05)
    else:
        assert 1.0 <= float(model.optimizer.loss_scale) <= 2.0**15
