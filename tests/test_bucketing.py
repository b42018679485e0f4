"""Length-bucketed, in-memory batches of bt_tf.data.dataset: coverage, widths, determinism, models.

The artifacts have histories of 3..60 items (max_len 60), so buckets really
differ in width.
"""

import collections
import itertools

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras, before tensorflow)
from bt_tf import features as F
from bt_tf.data import augment as A
from bt_tf.data import dataset as I
from bt_tf.data.embeddings import embed_items, embed_split, history_widths
from bt_tf.features import VIEW1, VIEW2
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import build_projector
from bt_tf.training.config import TrainConfig
from bt_tf.training.flags import parse
from pipelines.preprocess import PreprocessConfig, preprocess
from pipelines.synthetic import SyntheticConfig

MAX_LEN = 60
BOUNDS = (10, 22, 40)
WIDTHS = (10, 22, 40, MAX_LEN)
POLICY = A.AugmentPolicy(mask=0.3, reorder=0.3)
STEPS = 4


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    config = PreprocessConfig(
        dataset="synthetic",
        output_dir=str(tmp_path_factory.mktemp("artifacts")),
        max_len=MAX_LEN,
        future_len=5,
        num_shards=3,
        synthetic=SyntheticConfig(
            num_users=300, num_items=200, min_len=8, mean_len=35, max_len_seq=90, seed=5
        ),
    )
    return preprocess(config)


@pytest.fixture(scope="module")
def fixed(artifact_dir):
    """user id -> (items [MAX_LEN], length, timestamps [MAX_LEN]) from the streamed pipeline."""
    out = {}
    ds = I.make_dataset(artifact_dir, "train", 64, shuffle=False)
    for b in ds:
        for row, user in enumerate(b[F.USER_ID].numpy()):
            out[user] = (
                b[F.ITEMS][row].numpy(),
                int(b[F.LENGTH][row]),
                b[F.HISTORY_TIMESTAMPS][row].numpy(),
            )
    return out


def _bucketed(artifact_dir, batch=32, **kw):
    kw.setdefault("bucket_boundaries", BOUNDS)
    return I.make_dataset(artifact_dir, "train", batch, **kw)


def _users(batches):
    return [u for b in batches for u in b[F.USER_ID].numpy()]


def test_fixture_lengths_spread_over_the_buckets(fixed):
    lengths = np.array([n for _, n, _ in fixed.values()])
    counts = np.bincount(np.searchsorted(WIDTHS, lengths), minlength=len(WIDTHS))
    assert (counts > 32).all(), counts  # every bucket fills batches


def test_one_pass_holds_every_user_exactly_once(artifact_dir, fixed):
    ds = _bucketed(artifact_dir, seed=3)
    first, second = list(ds), list(ds)
    for epoch in (first, second):
        users = _users(epoch)
        assert len(users) == len(set(users)) == len(fixed)
        assert all(len(b[F.USER_ID]) == 32 for b in epoch[:-1])  # only the last is partial
    assert _users(first) != _users(second)  # a new pass is reshuffled
    kept = _users(_bucketed(artifact_dir, seed=3, drop_remainder=True))
    assert len(kept) == len(fixed) // 32 * 32 == len(set(kept))


@pytest.mark.parametrize("batch", [32, 50])
def test_repeated_stream_defers_at_most_a_batch_per_epoch(artifact_dir, fixed, batch):
    """The first floor(e N / B) batches hold every user e times, except e N mod B
    users held e - 1 times, as shuffle -> repeat -> batch does."""
    n = len(fixed)
    ds = _bucketed(artifact_dir, batch, repeat=True, seed=1, outputs=[F.USER_ID, F.ITEMS])
    assert ds.element_spec[F.ITEMS].shape.as_list() == [batch, None]
    batches = list(ds.take(3 * n // batch + 2))
    assert all(b[F.ITEMS].shape[0] == batch for b in batches)
    for e in (1, 2, 3):
        counts = collections.Counter(_users(batches[: e * n // batch]))
        assert set(counts) <= set(fixed)
        held = collections.Counter(counts[u] for u in fixed)  # times held -> users
        expected = collections.Counter({e: n - e * n % batch, e - 1: e * n % batch})
        assert held == +expected, (e, held)


def test_batches_are_padded_to_their_bucket_only(artifact_dir, fixed):
    """Same rows as the fixed-width batches, cut at the bucket width; mostly one bucket each."""
    ds = _bucketed(artifact_dir, augment_policy=POLICY, seed=2)
    pure = 0
    for b in ds:
        width = b[F.ITEMS].shape[1]
        assert width in WIDTHS
        lengths = b[F.LENGTH].numpy()
        assert lengths.max() <= width
        buckets = np.searchsorted(WIDTHS, lengths)
        pure += len(set(buckets)) == 1
        assert WIDTHS[buckets.max()] == width  # as wide as its longest user's bucket
        for key in (F.VIEW1, F.VIEW2, F.HISTORY_TIMESTAMPS):
            assert b[key].shape[1] == width
        for row, user in enumerate(b[F.USER_ID].numpy()):
            items, length, stamps = fixed[user]
            assert lengths[row] == length
            np.testing.assert_array_equal(b[F.ITEMS][row].numpy(), items[:width])
            np.testing.assert_array_equal(b[F.HISTORY_TIMESTAMPS][row].numpy(), stamps[:width])
            assert (items[width:] == F.PAD_ID).all()  # nothing was cut off
            view = b[F.VIEW1][row].numpy()
            assert ((view != F.PAD_ID).sum()) == length  # mask/reorder keep the length
    assert pure >= 5  # full bucket batches; at most len(WIDTHS) - 1 mixed ones + 1 partial


def test_same_seed_same_stream_other_seed_other_stream(artifact_dir):
    def stream(seed):
        ds = _bucketed(
            artifact_dir,
            repeat=True,
            seed=seed,
            augment_policy=POLICY,
            outputs=[F.USER_ID, F.HISTORY_GENRE_IDS, F.VIEW1, F.VIEW2],
        )
        return [  # > 2 epochs
            {k: v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy() for k, v in b.items()}
            for b in ds.take(17)
        ]

    a, b, c = stream(4), stream(4), stream(5)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], list):
                assert x[key] == y[key], key
            else:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert [x[F.USER_ID].tolist() for x in a] != [x[F.USER_ID].tolist() for x in c]
    # Resume: skipping k batches of a fresh stream gives the uninterrupted stream's tail.
    ds = _bucketed(
        artifact_dir, repeat=True, seed=4, augment_policy=POLICY, outputs=[F.VIEW2]
    ).skip(11)
    for x, y in zip(a[11:], ds.take(len(a) - 11), strict=True):
        np.testing.assert_array_equal(x[F.VIEW2], y[F.VIEW2].numpy())


def test_cache_without_buckets_is_the_full_width_in_memory_pipeline(artifact_dir, fixed):
    ds = I.make_dataset(artifact_dir, "train", 32, cache=True, drop_remainder=True, seed=1)
    assert ds.element_spec[F.ITEMS].shape.as_list() == [32, MAX_LEN]
    users = _users(ds)
    assert len(users) == len(set(users)) == len(fixed) // 32 * 32
    b = next(iter(ds))
    for row, user in enumerate(b[F.USER_ID].numpy()):
        np.testing.assert_array_equal(b[F.ITEMS][row].numpy(), fixed[user][0])


def test_unshuffled_buckets_keep_file_order_inside_a_bucket(artifact_dir, fixed):
    order = list(fixed)  # file order (streamed, unshuffled)
    batches = list(_bucketed(artifact_dir, shuffle=False))
    pure = 0
    for b in batches:
        if len(set(np.searchsorted(WIDTHS, b[F.LENGTH].numpy()))) == 1:
            rank = [order.index(u) for u in b[F.USER_ID].numpy()]
            assert rank == sorted(rank)
            pure += 1
    assert pure >= 5
    assert _users(batches) == _users(_bucketed(artifact_dir, shuffle=False))  # every pass


@pytest.mark.parametrize("num_pipelines", [2, 4])  # 3 files: by file, by element
def test_input_pipelines_partition_the_users_with_buckets(artifact_dir, fixed, num_pipelines):
    shares = []
    for i in range(num_pipelines):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=num_pipelines,
            input_pipeline_id=i,
            num_replicas_in_sync=num_pipelines,
        )
        shares.append(_users(_bucketed(artifact_dir, 16, input_context=ctx, seed=2)))
    counts = collections.Counter(u for share in shares for u in share)
    assert set(counts) == set(fixed) and set(counts.values()) == {1}


def test_epoch_plan_hand_example():
    # Buckets of rows 0..9: widths 4, 8, 12.
    bucket_of_row = tf.constant([0, 0, 0, 1, 1, 1, 1, 1, 2, 2], tf.int32)
    widths = tf.constant([4, 8, 12], tf.int32)
    pool = tf.constant([9, 0, 3, 1, 4, 8, 5, 2, 6, 7], tf.int64)
    batches, batch_widths, carry = I.epoch_plan(pool, bucket_of_row, widths, 3)
    # bucket 0: [0, 1, 2]; bucket 1: [3, 4, 5] + leftover [6, 7]; bucket 2: leftover [9, 8]
    # leftovers in bucket order [6, 7, 9, 8]: one mixed batch [6, 7, 9] (width 12), carry [8].
    np.testing.assert_array_equal(batches.numpy(), [[0, 1, 2], [3, 4, 5], [6, 7, 9]])
    np.testing.assert_array_equal(batch_widths.numpy(), [4, 8, 12])
    np.testing.assert_array_equal(carry.numpy(), [8])
    empty, _, carry = I.epoch_plan(pool[:2], bucket_of_row, widths, 3)
    assert empty.shape == (0, 3) and sorted(carry.numpy()) == [0, 9]


def test_bucket_boundary_specs():
    assert I.parse_bucket_boundaries("25,50, 100") == (25, 50, 100)
    assert I.parse_bucket_boundaries([8, 16]) == (8, 16)
    assert I.parse_bucket_boundaries("auto") == "auto"
    for off in (None, "", "off", []):
        assert I.parse_bucket_boundaries(off) == ()
    for bad in ("50,25", "0,10", "a,b"):
        with pytest.raises(ValueError, match="bucket_boundaries"):
            I.parse_bucket_boundaries(bad)
    with pytest.raises(ValueError, match="--bucket_boundaries"):
        TrainConfig(bucket_boundaries="10,5")
    # Default: on for real datasets, off for synthetic.
    assert TrainConfig().buckets == ""
    assert parse(["--dataset=ml-1m"]).buckets == "auto"
    assert parse(["--dataset=ml-1m", "--bucket_boundaries="]).buckets == ""
    assert parse(["--bucket_boundaries=25,50"]).buckets == "25,50"


def test_config_speed_flags():
    config = parse(["--mixed_precision=mixed_bfloat16", "--cache_input"])
    assert config.mixed_precision == "mixed_bfloat16" and config.cache_input
    assert TrainConfig().mixed_precision is None and TrainConfig().cache_input is None
    with pytest.raises(ValueError, match="model=bt only"):
        parse(["--mixed_precision=mixed_float16", "--model=de"])
    with pytest.raises(ValueError, match="steps_per_execution"):
        TrainConfig(steps_per_execution=0)


def _epoch_cost(lengths, bounds, width):
    """Padded compute of `lengths` under `bounds` (each row at its bucket's width)."""
    widths = np.array(list(bounds) + [width])
    return I.padded_cost(widths[np.searchsorted(widths, np.minimum(lengths, width))]).sum()


def test_auto_boundaries_are_the_cheapest_allowed_split():
    rng = np.random.default_rng(0)
    width, batch, multiple = 64, 10, 8
    lengths = np.minimum(rng.geometric(1 / 25, size=300), 80)  # skewed, some past the cap
    got = I.auto_bucket_boundaries(lengths, width, batch, max_buckets=4, multiple=multiple)
    # Brute force: every set of at most 3 multiples of 8 below the cap whose
    # buckets but the widest hold at least 2 batches.
    best = None
    for r in range(4):
        for bounds in itertools.combinations(range(multiple, width, multiple), r):
            edges = (0,) + bounds
            counts = [np.sum((lengths > lo) & (lengths <= hi)) for lo, hi in zip(edges, bounds)]
            if all(c >= 2 * batch for c in counts):
                cost = _epoch_cost(lengths, bounds, width)
                best = cost if best is None else min(best, cost)
    assert np.isclose(_epoch_cost(lengths, got, width), best)
    assert _epoch_cost(lengths, got, width) < _epoch_cost(lengths, (), width)
    edges = (0,) + got
    assert all(np.sum((lengths > lo) & (lengths <= hi)) >= 2 * batch for lo, hi in zip(edges, got))


def test_auto_boundaries_edge_cases():
    lengths = np.concatenate([np.arange(1, 201), np.full(100, 250)])  # 300 users, cap 200
    assert I.auto_bucket_boundaries(lengths, 200, 160) == ()  # too few users for 2 buckets
    assert I.auto_bucket_boundaries(np.full(1000, 7), 200, 20) == (8,)  # all short: width 8
    # A handful of long users get the widest bucket, not a wider shared one.
    assert I.auto_bucket_boundaries(np.r_[np.full(1000, 7), np.full(3, 100)], 200, 20) == (8,)
    # Wide rows cost more (attention): boundaries are denser at the long end than quantiles.
    got = I.auto_bucket_boundaries(np.arange(1, 1001), 1000, 20, max_buckets=4)
    gaps = np.diff((0,) + got + (1000,))
    assert len(got) == 3 and gaps[-1] < gaps[0]


def _encoder(kind="transformer", pooling="mean"):
    tf.keras.utils.set_random_seed(0)
    return SequenceEncoder(
        200, max_len=MAX_LEN, dim=16, num_blocks=2, dropout=0.0, kind=kind, pooling=pooling
    )


@pytest.mark.parametrize(
    "kind,pooling", [("transformer", "mean"), ("transformer", "last"), ("gru", "mean")]
)
def test_padding_never_reaches_the_model(artifact_dir, kind, pooling):
    """A bucketed batch embeds exactly like the same users padded to max_len."""
    encoder = _encoder(kind, pooling)
    checked = 0
    for b in _bucketed(artifact_dir, shuffle=False).take(4):
        items = b[F.ITEMS].numpy()
        assert items.shape[1] < MAX_LEN or checked  # really narrower batches
        wide = np.pad(items, [(0, 0), (0, MAX_LEN - items.shape[1])])
        np.testing.assert_allclose(
            encoder(items).numpy(), encoder(wide).numpy(), atol=1e-5, rtol=1e-5
        )
        checked += 1
    assert checked == 4


def test_embed_split_returns_file_order_from_length_sorted_batches(artifact_dir, fixed):
    encoder = _encoder()
    emb, kept = embed_split(encoder, artifact_dir, "train", batch_size=64, keep=[F.USER_ID])
    assert list(kept[F.USER_ID]) == list(fixed)  # file order
    items = np.stack([fixed[u][0] for u in kept[F.USER_ID]])
    np.testing.assert_allclose(emb, encoder(items).numpy(), atol=1e-5, rtol=1e-5)
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(history_widths(items), [fixed[u][1] for u in fixed])
    again = embed_items(encoder, items[::-1], batch_size=7)
    np.testing.assert_allclose(again[::-1], emb, atol=1e-5, rtol=1e-5)


def _bt_model():
    encoder = SequenceEncoder(200, max_len=MAX_LEN, dim=8, num_blocks=1, dropout=0.0)
    return BarlowTwinsModel(encoder, build_projector("16-8"), lambd=0.05)


# ~10 s on 2 quiet cores. In the default suite: one replica equals two for Barlow Twins
# (test_distributed.py), the DE's loss on batches of different widths (test_dual_encoder.py).
@pytest.mark.slow
def test_one_replica_equals_two_with_buckets(artifact_dir, two_replicas):
    """Bucketed batches of varying width: fit on two replicas == fit on one device.

    (Batch 32, a few steps: with smaller batches the BT loss amplifies float
    round-off enough that a 1e-7 weight perturbation moves it by 1e-5.)
    """

    def data():  # a fresh dataset per run: same seed, same stream
        return _bucketed(
            artifact_dir,
            32,
            repeat=True,
            seed=7,
            augment_policy=POLICY,
            outputs=[VIEW1, VIEW2],
        )

    widths = {b[VIEW1].shape[1] for b in data().take(STEPS)}
    assert len(widths) > 1
    tf.keras.utils.set_random_seed(0)
    reference = _bt_model()
    reference.project(tf.constant([[3, 4]]), training=False)
    initial = reference.get_weights()
    runs = {}
    for name, strategy in [
        ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
        ("two", two_replicas),
    ]:
        with strategy.scope():
            model = _bt_model()
            model.project(tf.constant([[3, 4]]), training=False)
            model.set_weights(initial)
            model.compile(optimizer=tf.keras.optimizers.SGD(0.05))
        history = model.fit(data(), steps_per_epoch=STEPS, epochs=1, verbose=0)
        weights = [v.numpy() for v in model.encoder.weights + model.projector.weights]
        runs[name] = (history.history["loss"][0], weights)
    # round-off of the replica split, amplified over the steps (a wrong statistic: ~1e-1)
    assert runs["two"][0] == pytest.approx(runs["one"][0], rel=1e-4, abs=1e-4)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(runs["one"][1], initial))
    assert moved > 0.1  # a factor-2 error in the update would be far above the tolerance
    for w_one, w_two in zip(runs["one"][1], runs["two"][1]):
        np.testing.assert_allclose(w_two, w_one, rtol=1e-5, atol=1e-5)
