"""One replica equals two: the BT loss and update do not depend on how the batch is split.

`tests/conftest.py` created two logical CPU devices, so
`MirroredStrategy(["/cpu:0", "/cpu:1"])` runs two replicas, each on half of
every global batch. With dropout 0, synchronized batch norm and the same
initial weights, `model.fit` on the same global batches must give the same
loss and the same weights as one device, up to float round-off.

Why the equality tests can fail (their teeth):
- a loss with per-replica batch statistics gives a visibly different value
  (`test_per_replica_statistics_would_change_the_loss`);
- without dividing the global loss by the number of replicas, the summed
  gradient is twice the single-device one
  (`test_summed_replica_gradients_of_the_global_loss_are_r_times_too_big`), and
  the weight updates compared below are large enough to show a factor 2;
- SGD is used on purpose: Adam normalizes gradients and would hide a wrong scale.
"""

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf.features import MASK_ID, NUM_RESERVED, PAD_ID, VIEW1, VIEW2
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.losses import barlow_twins_loss
from bt_tf.modeling.projector import build_projector

VOCAB, LENGTH, GLOBAL_BATCH, LAMBD, LR = 30, 10, 8, 0.05, 0.05
TOL = 1e-5


def _data(num_users=2 * GLOBAL_BATCH, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, LENGTH + 1, size=num_users)
    items = rng.integers(NUM_RESERVED, VOCAB, size=(num_users, LENGTH))
    items[np.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD_ID
    view2 = items.copy()
    view2[(rng.random(items.shape) < 0.3) & (items != PAD_ID)] = MASK_ID
    return {VIEW1: items, VIEW2: view2}


def _dataset(data):
    return tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)


def _new_model():
    encoder = SequenceEncoder(VOCAB, max_len=LENGTH, dim=8, num_blocks=1, num_heads=2, dropout=0.0)
    return BarlowTwinsModel(encoder, build_projector("16-8", synchronized_bn=True), lambd=LAMBD)


def _model_under(strategy, initial_weights, data):
    """A model whose variables live under `strategy`, with the given initial weights."""
    with strategy.scope():
        model = _new_model()
        model.project(data[VIEW1][:2], training=False)  # creates all variables
        model.set_weights(initial_weights)
        model.compile(optimizer=tf.keras.optimizers.SGD(LR))
    return model


def _network_weights(model):
    """Encoder and projector variables (incl. BN moving stats), not the metric totals.

    Metric totals legitimately differ: every replica adds the (same) global loss
    to a SUM-synchronized Mean, so total and count both double; result() does not.
    """
    return [v.numpy() for v in model.encoder.weights + model.projector.weights]


@pytest.fixture(scope="module")
def setup():
    tf.keras.utils.set_random_seed(0)
    data = _data()
    reference = _new_model()
    reference.project(data[VIEW1][:2], training=False)
    return data, reference.get_weights()


def test_fit_on_two_replicas_equals_fit_on_one_device(setup, two_replicas):
    data, initial = setup
    dataset = _dataset(data)  # created outside any strategy scope, as the trainer may
    runs = {}
    for name, strategy in [
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("two", two_replicas),
    ]:
        model = _model_under(strategy, initial, data)
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # 2 optimizer steps
        runs[name] = (history.history, _network_weights(model))

    (hist_one, weights_one), (hist_two, weights_two) = runs["one"], runs["two"]
    for metric in ["loss", "on_diag", "off_diag", "c_diag_mean"]:
        assert hist_two[metric][0] == pytest.approx(hist_one[metric][0], rel=TOL, abs=TOL), metric
    start = _network_weights(_model_under(tf.distribute.get_strategy(), initial, data))
    moved = max(np.abs(w - w0).max() for w, w0 in zip(weights_one, start))
    assert moved > 0.1  # a factor-2 error in the update would be far above TOL
    for w_one, w_two in zip(weights_one, weights_two):  # includes BN moving statistics
        np.testing.assert_allclose(w_two, w_one, rtol=TOL, atol=TOL)


def test_evaluate_on_two_replicas_equals_one_device_and_not_per_replica(setup, two_replicas):
    data, initial = setup
    batch = {k: v[:GLOBAL_BATCH] for k, v in data.items()}
    dataset = tf.data.Dataset.from_tensors(batch)
    single = _model_under(tf.distribute.OneDeviceStrategy("/cpu:0"), initial, data)
    loss_one = single.evaluate(dataset, verbose=0, return_dict=True)["loss"]
    with two_replicas.scope():
        dataset_inside = tf.data.Dataset.from_tensors(batch)  # created inside the scope
    loss_two = _model_under(two_replicas, initial, data).evaluate(
        dataset_inside, verbose=0, return_dict=True
    )["loss"]
    assert loss_two == pytest.approx(loss_one, abs=TOL)

    # In inference mode each z row depends on its own user only, so a per-replica
    # loss would be the mean of the losses of the two halves: clearly different.
    z1 = single.project(batch[VIEW1], training=False)
    z2 = single.project(batch[VIEW2], training=False)
    half = GLOBAL_BATCH // 2
    per_replica = np.mean(
        [float(barlow_twins_loss(z1[s], z2[s], LAMBD)) for s in (slice(0, half), slice(half, None))]
    )
    assert float(barlow_twins_loss(z1, z2, LAMBD)) == pytest.approx(loss_one, abs=TOL)
    assert abs(per_replica - loss_one) > 1000 * TOL


def _naive_per_replica_loss(z1, z2, lambd, eps=1e-5):
    """The bug we guard against: statistics and c from this replica's rows only."""
    n = tf.cast(tf.shape(z1)[0], tf.float32)
    mean1, var1 = tf.nn.moments(z1, axes=[0])
    mean2, var2 = tf.nn.moments(z2, axes=[0])
    c = tf.matmul((z1 - mean1) / tf.sqrt(var1 + eps), (z2 - mean2) / tf.sqrt(var2 + eps), True) / n
    on_diag = tf.reduce_sum(tf.square(1.0 - tf.linalg.diag_part(c)))
    return on_diag + lambd * (
        tf.reduce_sum(tf.square(c)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(c)))
    )


def test_per_replica_statistics_would_change_the_loss(setup, two_replicas):
    data, initial = setup
    batch = {k: v[:GLOBAL_BATCH] for k, v in data.items()}
    model = _model_under(two_replicas, initial, data)
    single = _model_under(tf.distribute.OneDeviceStrategy("/cpu:0"), initial, data)
    expected = float(
        barlow_twins_loss(
            single.project(batch[VIEW1], training=True),
            single.project(batch[VIEW2], training=True),
            LAMBD,
        )
    )
    distributed = two_replicas.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))

    @tf.function
    def losses(inputs):
        def step(views):
            z1 = model.project(views[VIEW1], training=True)
            z2 = model.project(views[VIEW2], training=True)
            return barlow_twins_loss(z1, z2, LAMBD), _naive_per_replica_loss(z1, z2, LAMBD)

        ours, naive = two_replicas.run(step, args=(inputs,))
        mean = tf.distribute.ReduceOp.MEAN
        return two_replicas.reduce(mean, ours, None), two_replicas.reduce(mean, naive, None)

    ours, naive = losses(next(iter(distributed)))
    assert float(ours) == pytest.approx(expected, abs=TOL)
    assert abs(float(naive) - expected) > 1000 * TOL


def test_summed_replica_gradients_of_the_global_loss_are_r_times_too_big(setup, two_replicas):
    """Why `train_step` divides the global loss by the number of replicas."""
    data, initial = setup
    batch = {k: v[:GLOBAL_BATCH] for k, v in data.items()}

    def grads_of_global_loss(model, views):
        with tf.GradientTape() as tape:
            z1 = model.project(views[VIEW1], training=True)
            z2 = model.project(views[VIEW2], training=True)
            loss = barlow_twins_loss(z1, z2, LAMBD)
        grads = tape.gradient(loss, model.trainable_variables)
        return [tf.convert_to_tensor(g) for g in grads]

    single = _model_under(tf.distribute.OneDeviceStrategy("/cpu:0"), initial, data)
    expected = grads_of_global_loss(single, batch)

    model = _model_under(two_replicas, initial, data)
    distributed = two_replicas.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))

    @tf.function
    def summed_grads(inputs):
        per_replica = two_replicas.run(
            lambda views: grads_of_global_loss(model, views), args=(inputs,)
        )
        return [two_replicas.reduce(tf.distribute.ReduceOp.SUM, g, None) for g in per_replica]

    got = summed_grads(next(iter(distributed)))
    assert max(float(tf.reduce_max(tf.abs(g))) for g in expected) > 1e-2
    # Float32 sums in another order differ by up to ~1.2e-4 on the largest entries (seen
    # under load); a wrong factor would be off by 50-100%.
    for g_two, g_one in zip(got, expected):
        np.testing.assert_allclose(g_two.numpy(), 2.0 * g_one.numpy(), rtol=1e-3, atol=1e-4)
