"""Tests for bt_tf.data.dataset on artifacts written by the real preprocessing pipeline."""

import collections

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

from bt_tf import features as F
from bt_tf.data import augment as A
from bt_tf.data import dataset as I
from pipelines.preprocess import PreprocessConfig, preprocess
from pipelines.synthetic import SyntheticConfig

MAX_LEN = 50  # pipeline truncation; synthetic sequences are 20..150 long
FUTURE_LEN = 5
NUM_SHARDS = 3


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    config = PreprocessConfig(
        dataset="synthetic",
        output_dir=str(tmp_path_factory.mktemp("artifacts")),
        max_len=MAX_LEN,
        future_len=FUTURE_LEN,
        num_shards=NUM_SHARDS,
        synthetic=SyntheticConfig(num_users=300, num_items=200, block_size=100, seed=3),
    )
    return preprocess(config)


@pytest.fixture(scope="module")
def examples(artifact_dir):
    """user id -> {feature: list} for the train split, read without bt_tf.data.dataset."""
    out = {}
    for path in I.split_files(artifact_dir, "train"):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            ex = tf.train.Example.FromString(record.numpy())
            feats = {}
            for name, f in ex.features.feature.items():
                kind = f.WhichOneof("kind")
                feats[name] = list(getattr(f, kind).value)
            out[feats[F.USER_ID][0].decode()] = feats
    return out


def _epoch(ds):
    return [{k: v.numpy() for k, v in b.items() if not isinstance(v, tf.RaggedTensor)} for b in ds]


def _users(batches):
    return [u.decode() for b in batches for u in b[F.USER_ID]]


def test_feature_spec_is_built_from_the_schema(artifact_dir):
    schema = I.load_schema(artifact_dir)
    spec = I.feature_spec(schema)
    assert set(spec) == {f.name for f in schema.feature}
    assert spec[F.USER_ID] == tf.io.FixedLenFeature([], tf.string)
    assert spec[F.HISTORY_LENGTH] == tf.io.FixedLenFeature([], tf.int64)
    assert isinstance(spec[F.HISTORY_RATINGS], tf.io.RaggedFeature)
    assert spec[F.HISTORY_RATINGS].dtype == tf.float32
    assert spec[F.HISTORY_GENRE_IDS].partitions == (
        tf.io.RaggedFeature.RowLengths(F.HISTORY_GENRE_COUNTS),
    )
    # A feature added to the schema is parsed without touching the code.
    extra = schema.feature.add(name="extra_scores", type=schema_pb2.FLOAT)  # var-len
    extra.value_count.min = 0
    fixed = schema.feature.add(name="extra_vec", type=schema_pb2.INT)  # shape [3]
    fixed.shape.dim.add(size=3)
    spec = I.feature_spec(schema)
    assert spec["extra_scores"] == tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)
    assert spec["extra_vec"] == tf.io.FixedLenFeature([3], tf.int64)


def test_shapes_and_dtypes(artifact_dir):
    meta = I.load_metadata(artifact_dir)
    assert (meta["max_len"], meta["future_len"]) == (MAX_LEN, FUTURE_LEN)
    spec = I.make_dataset(artifact_dir, "train", 16, drop_remainder=True).element_spec
    assert spec[F.ITEMS] == tf.TensorSpec([16, MAX_LEN], tf.int32)
    assert spec[F.LENGTH] == tf.TensorSpec([16], tf.int32)
    assert spec[F.HISTORY_TIMESTAMPS] == tf.TensorSpec([16, MAX_LEN], tf.int64)
    assert spec[F.HISTORY_RATINGS] == tf.TensorSpec([16, MAX_LEN], tf.float32)
    assert spec[F.FUTURE_ITEM_IDS] == tf.TensorSpec([16, FUTURE_LEN], tf.int64)
    assert spec[F.FUTURE_LENGTH] == tf.TensorSpec([16], tf.int32)
    assert spec[F.USER_ID] == tf.TensorSpec([16], tf.string)
    for name in meta["attributes"]:
        assert spec[F.ATTRIBUTE_PREFIX + name] == tf.TensorSpec([16], tf.int64)
    assert isinstance(spec[F.HISTORY_GENRE_IDS], tf.RaggedTensorSpec)
    assert spec[F.HISTORY_GENRE_IDS].ragged_rank == 2
    assert F.HISTORY_GENRE_COUNTS not in spec


def test_batches_equal_the_examples(artifact_dir, examples):
    ds = I.make_dataset(artifact_dir, "train", 32, shuffle=False)
    seen = 0
    for batch in ds:
        users = [u.decode() for u in batch[F.USER_ID].numpy()]
        items, length = batch[F.ITEMS].numpy(), batch[F.LENGTH].numpy()
        genres = batch[F.HISTORY_GENRE_IDS].to_list()
        for row, user in enumerate(users):
            ex = examples[user]
            hist = ex[F.HISTORY_ITEM_IDS]
            n = len(hist)
            assert length[row] == n == ex[F.HISTORY_LENGTH][0]
            assert list(items[row, :n]) == hist
            assert (items[row, n:] == F.PAD_ID).all()
            assert list(batch[F.HISTORY_TIMESTAMPS][row, :n].numpy()) == ex[F.HISTORY_TIMESTAMPS]
            fut = ex[F.FUTURE_ITEM_IDS]
            assert batch[F.FUTURE_LENGTH][row] == len(fut)
            np.testing.assert_array_equal(
                batch[F.FUTURE_ITEM_IDS][row].numpy(), fut + [0] * (FUTURE_LEN - len(fut))
            )
            flat, counts = ex[F.HISTORY_GENRE_IDS], ex[F.HISTORY_GENRE_COUNTS]
            splits = np.cumsum([0] + counts)
            assert genres[row] == [flat[a:b] for a, b in zip(splits[:-1], splits[1:])]
            assert batch["attr_segment"][row] == ex["attr_segment"][0]
            seen += 1
    assert seen == len(examples)


def test_max_len_keeps_the_most_recent_items(artifact_dir, examples):
    width = 10
    batch = next(iter(I.make_dataset(artifact_dir, "train", 64, max_len=width, shuffle=False)))
    for row, user in enumerate(batch[F.USER_ID].numpy()):
        hist = examples[user.decode()][F.HISTORY_ITEM_IDS]
        assert list(batch[F.ITEMS][row].numpy()) == hist[-width:]  # all histories >= 10
        assert batch[F.LENGTH][row] == width
        assert batch[F.HISTORY_GENRE_IDS][row].nrows() == width


def test_one_epoch_covers_the_split_exactly_once(artifact_dir, examples):
    meta = I.load_metadata(artifact_dir)
    users = _users(_epoch(I.make_dataset(artifact_dir, "train", 32, seed=5)))
    assert len(users) == len(set(users)) == meta["num_users"]["train"]
    assert set(users) == set(examples)
    test_users = _users(_epoch(I.make_dataset(artifact_dir, "test", 32, seed=5)))
    assert len(test_users) == meta["num_users"]["test"]
    assert not set(test_users) & set(users)


def _split_users(artifact_dir, split):
    """The user ids of one split, read from its shards without bt_tf.data.dataset."""
    spec = {F.USER_ID: tf.io.FixedLenFeature([], tf.string)}
    return {
        tf.io.parse_single_example(record, spec)[F.USER_ID].numpy().decode()
        for path in I.split_files(artifact_dir, split)
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP")
    }


@pytest.mark.parametrize("spec", ["train+eval+test", ("test", "eval", "train")])
@pytest.mark.parametrize("buckets", [None, "auto"])
def test_several_splits_are_read_as_one(artifact_dir, spec, buckets):
    """Every user of every split once per epoch, streamed or in memory, whole or sharded."""
    per_split = {s: _split_users(artifact_dir, s) for s in F.SPLITS}
    num_users = I.load_metadata(artifact_dir)["num_users"]
    assert all(len(per_split[s]) == num_users[s] > 0 for s in F.SPLITS)
    everyone = set().union(*per_split.values())
    users = _users(_epoch(I.make_dataset(artifact_dir, spec, 8, bucket_boundaries=buckets)))
    assert len(users) == len(set(users)) == len(everyone) and set(users) == everyone
    shares = []
    for i in range(2):  # 9 files over 2 pipelines: by file
        ctx = tf.distribute.InputContext(2, i, 2)
        shares += _users(_epoch(I.make_dataset(artifact_dir, spec, 8, input_context=ctx)))
    assert sorted(shares) == sorted(everyone)
    two = I.make_dataset(artifact_dir, ("train", "eval"), 8, shuffle=False)
    assert set(_users(_epoch(two))) == per_split["train"] | per_split["eval"]


def test_several_splits_shuffle_by_seed_and_name_bad_splits(artifact_dir):
    def make(seed):
        return _users(_epoch(I.make_dataset(artifact_dir, "train+eval+test", 32, seed=seed)))

    assert make(3) == make(3) != make(4)
    assert len(I.split_files(artifact_dir, "train+eval")) == 2 * NUM_SHARDS
    for bad in ("train+train", "train+dev", ()):
        with pytest.raises(ValueError, match="several of them without repeats"):
            I.make_dataset(artifact_dir, bad, 8)


def test_same_seed_same_batches_across_epochs(artifact_dir):
    policy = A.AugmentPolicy(mask=0.3, reorder=0.3)

    def make(seed):
        return I.make_dataset(artifact_dir, "train", 32, seed=seed, augment_policy=policy)

    a, b, c = make(1), make(1), make(2)
    a1, a2 = _epoch(a), _epoch(a)
    b1, b2 = _epoch(b), _epoch(b)
    for x, y in zip(a1 + a2, b1 + b2, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert _users(a1) != _users(a2)  # reshuffled each epoch
    assert sorted(_users(a1)) == sorted(_users(a2))
    assert _users(a1) != _users(_epoch(c))  # another seed, another order
    unshuffled = _users(_epoch(I.make_dataset(artifact_dir, "train", 32, shuffle=False)))
    assert unshuffled != _users(a1)


@pytest.mark.parametrize("num_pipelines", [2, 4])  # 3 files: by file, by element
def test_input_context_partitions_the_users(artifact_dir, examples, num_pipelines):
    shares = []
    for i in range(num_pipelines):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=num_pipelines,
            input_pipeline_id=i,
            num_replicas_in_sync=2 * num_pipelines,
        )
        batches = _epoch(I.make_dataset(artifact_dir, "train", 16, input_context=ctx))
        assert max(len(b[F.USER_ID]) for b in batches) == 16 // (2 * num_pipelines)
        shares.append(_users(batches))
    assert all(shares)
    counts = collections.Counter(u for share in shares for u in share)
    assert set(counts) == set(examples)
    assert set(counts.values()) == {1}


def test_distribute_datasets_from_function_gives_per_replica_batches(artifact_dir, two_replicas):
    strategy = two_replicas
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: I.make_dataset(
            artifact_dir, "train", 16, input_context=ctx, drop_remainder=True, outputs=[F.ITEMS]
        )
    )
    batch = next(iter(dist))
    per_replica = strategy.experimental_local_results(batch[F.ITEMS])
    assert [tuple(t.shape) for t in per_replica] == [(8, MAX_LEN), (8, MAX_LEN)]


@pytest.mark.parametrize("spec", ["mask:0.5,reorder:0.5", "crop:0.5,mask:0.2"])
def test_augmented_views_keep_shape_and_padding(artifact_dir, spec):
    policy = A.AugmentPolicy.from_string(spec)
    ds = I.make_dataset(artifact_dir, "train", 32, augment_policy=policy, drop_remainder=True)
    changed = 0
    for batch in ds.take(3):
        items, length = batch[F.ITEMS].numpy(), batch[F.LENGTH].numpy()
        for key in (F.VIEW1, F.VIEW2):
            view = batch[key].numpy()
            assert view.shape == (32, MAX_LEN) and view.dtype == np.int32
            new_len = (view != F.PAD_ID).sum(axis=1)
            if "crop" in spec:
                assert (new_len <= length).all() and (new_len >= 1).all()
            else:
                np.testing.assert_array_equal(new_len, length)
            for row in range(32):
                assert (view[row, new_len[row] :] == F.PAD_ID).all()
            changed += (view != items).any(axis=1).sum()
        assert (batch[F.VIEW1].numpy() != batch[F.VIEW2].numpy()).any()
    assert changed > 0.9 * 3 * 2 * 32


def test_outputs_selects_keys(artifact_dir):
    ds = I.make_dataset(
        artifact_dir,
        "eval",
        8,
        outputs=[F.VIEW1, F.VIEW2, F.LENGTH],
        augment_policy=A.AugmentPolicy(mask=0.2),
    )
    assert set(ds.element_spec) == {F.VIEW1, F.VIEW2, F.LENGTH}
    with pytest.raises(ValueError, match="Unknown output feature 'nope'"):
        I.make_dataset(artifact_dir, "eval", 8, outputs=["nope"])
    with pytest.raises(ValueError, match="need an augment_policy"):
        I.make_dataset(artifact_dir, "eval", 8, outputs=[F.VIEW1])


def test_repeat_and_drop_remainder(artifact_dir):
    n = I.load_metadata(artifact_dir)["num_users"]["eval"]
    ds = I.make_dataset(artifact_dir, "eval", 7, repeat=True, drop_remainder=True)
    assert ds.element_spec[F.ITEMS].shape == (7, MAX_LEN)
    users = _users(_epoch(ds.take(2 * n // 7 + 1)))
    assert len(users) > n
    assert set(collections.Counter(users[:n]).values()) == {1}  # first epoch whole


def test_clear_errors(artifact_dir, tmp_path):
    with pytest.raises(ValueError, match="split='dev'"):
        I.make_dataset(artifact_dir, "dev", 8)
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        I.make_dataset(str(tmp_path), "train", 8)
    (tmp_path / "Split-train").mkdir()
    with pytest.raises(FileNotFoundError, match="Split-train"):
        I.split_files(str(tmp_path), "train")


def test_cooccurrence_table_comes_from_the_train_histories(artifact_dir, examples):
    histories = [ex[F.HISTORY_ITEM_IDS] for ex in examples.values()]
    values, lengths = I.train_histories(artifact_dir)
    assert sorted(map(tuple, np.split(values, np.cumsum(lengths)[:-1]))) == sorted(
        map(tuple, histories)
    )
    vocab = I.load_metadata(artifact_dir)["vocab_sizes"]["items"]
    table = I.cooccurrence_table(artifact_dir)
    assert table.shape == (vocab, A.COOCCURRENCE_TOP_K) and not table.flags.writeable
    expected = A.cooccurrence_table(np.concatenate(histories), [len(h) for h in histories], vocab)
    np.testing.assert_array_equal(table, expected)
    assert I.cooccurrence_table(artifact_dir) is table  # built once per process
    assert (table[F.NUM_RESERVED :] >= F.NUM_RESERVED).all()


def test_table_is_built_only_for_policies_that_need_it(artifact_dir):
    I.cooccurrence_table.cache_clear()
    I.make_dataset(artifact_dir, "train", 8, augment_policy=A.AugmentPolicy(mask=0.3))
    assert I.cooccurrence_table.cache_info().currsize == 0
    policy = A.AugmentPolicy(substitute=0.3)
    I.make_dataset(artifact_dir, "eval", 8, augment_policy=policy)
    assert I.cooccurrence_table.cache_info().currsize == 1


def test_substitute_and_insert_views(artifact_dir):
    table = I.cooccurrence_table(artifact_dir)
    policy = A.AugmentPolicy.from_string("substitute:0.3,insert:0.2")
    ds = I.make_dataset(artifact_dir, "train", 32, augment_policy=policy, drop_remainder=True)
    for batch in ds.take(2):
        items, length = batch[F.ITEMS].numpy(), batch[F.LENGTH].numpy()
        for key in (F.VIEW1, F.VIEW2):
            view = batch[key].numpy()
            assert view.shape == (32, MAX_LEN) and view.dtype == np.int32
            new_len = (view != F.PAD_ID).sum(axis=1)
            np.testing.assert_array_equal(new_len, np.minimum(length + length // 5, MAX_LEN))
            for row in range(32):
                assert (view[row, new_len[row] :] == F.PAD_ID).all()
                real = view[row, : new_len[row]]
                assert (real >= F.NUM_RESERVED).all()
                # Every item is a history item or within 2 hops of one (insert,
                # then substitute of the inserted item).
                history = items[row, : length[row]]
                allowed = set(history) | set(table[history].ravel())
                allowed |= set(table[table[history]].ravel())
                assert set(real) <= allowed
            assert (view != items).any(axis=1).all()
    # An explicit table is used instead of the train one: map every item to item 3.
    forced = np.repeat(np.arange(table.shape[0], dtype=np.int32)[:, None], 2, axis=1)
    forced[F.NUM_RESERVED + 1 :, 0] = F.NUM_RESERVED
    policy = A.AugmentPolicy(substitute=1.0)
    ds = I.make_dataset(artifact_dir, "eval", 8, augment_policy=policy, cooccurrence=forced)
    batch = next(iter(ds))
    view, length = batch[F.VIEW1].numpy(), batch[F.LENGTH].numpy()
    for row, n in enumerate(length):
        items = batch[F.ITEMS].numpy()[row, :n]
        assert (view[row, :n] == F.NUM_RESERVED).all(), items
