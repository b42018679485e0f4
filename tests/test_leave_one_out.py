"""`--protocol=leave_one_out`: the split, the validation item's ranking, the test figures,
and `--init_from`.

The split test writes an own-log CSV in which every user's last two items are items that
no user ever has earlier ("V*" then "T*"), so that any leak of a validation or test item
into training shows as one of their ids in a training batch.
"""

import csv
import json
import tempfile

import numpy as np
import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import features as F
from bt_tf import runs as runs_lib
from bt_tf.data import dataset
from bt_tf.errors import UserError
from bt_tf.evaluation import recommender
from bt_tf.serving.export import restore_encoder
from bt_tf.training import trainer
from bt_tf.training.flags import parse
from bt_tf.training.progress import EpochEnd, Progress
from bt_tf.training.validation import full_ranking, leave_one_out_cases
from tests.tiny import TINY_FLAGS

NUM_USERS, COMMON = 60, 25


def _write_log(path):
    """Users u0..u59: 6-10 common items c0..c24 (distinct per user), then "V<u % 6>" and
    "T<u % 6>" last. Timestamps strictly increase within a user."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "timestamp"])
        for u in range(NUM_USERS):
            items = [f"c{i}" for i in rng.permutation(COMMON)[: rng.integers(6, 11)]]
            items += [f"V{u % 6}", f"T{u % 6}"]
            for t, item in enumerate(items):
                out.writerow([f"u{u}", item, 1_000_000 + 100 * u + t])


@pytest.fixture(scope="module")
def loo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loo")
    _write_log(root / "log.csv")
    flags = [
        "--dataset=interactions",
        f"--data_dir={root / 'log.csv'}",
        "--min_user_interactions=3",
        "--min_item_interactions=1",
        "--protocol=leave_one_out",
        "--max_len=12",
        "--dim=16",
        "--num_blocks=1",
        "--batch_size=16",
        "--steps_per_epoch=6",
        "--epochs=3",
        "--model=de",
        "--no-export",
        f"--data_output_dir={root / 'data'}",
        f"--output_dir={root / 'de'}",
    ]
    config = parse(flags)
    metrics = trainer.train(config)
    return config, metrics, root


def _vocab_ids(artifact_dir, prefix):
    vocab = dataset.load_vocab(artifact_dir)
    return {i for i, token in enumerate(vocab) if token.startswith(prefix)}


def test_no_validation_or_test_item_reaches_training(loo_run):
    config, metrics, _ = loo_run
    artifact = metrics["artifact_dir"]
    meta = dataset.load_metadata(artifact)
    assert meta["num_users"] == {"train": NUM_USERS, "eval": 0, "test": 0}
    held_out = _vocab_ids(artifact, "V") | _vocab_ids(artifact, "T")
    assert len(held_out) == 12  # in the vocabulary (the catalog), never trained on
    # Two epochs of the exact training stream of the run.
    stream = trainer.make_train_data(
        config, artifact, config.train_splits, config.batch_size, repeat=True, seed=config.seed
    )
    seen = set()
    for batch in stream.take(2 * metrics["steps_per_epoch"]):
        seen |= set(np.unique(batch[F.ITEMS].numpy()).tolist())
    assert len(seen - {F.PAD_ID}) >= COMMON - 2  # the common items are trained on
    assert not seen & held_out
    # Validation: input = the history, target = V; test: history + V, target = T.
    sequences = dataset.read_sequences(artifact, config.train_splits)
    vocab = dataset.load_vocab(artifact)
    val = leave_one_out_cases(sequences, "val", config.max_len, len(vocab))
    test = leave_one_out_cases(sequences, "test", config.max_len, len(vocab))
    assert all(vocab[t].startswith("V") for t in val["targets"])
    assert all(vocab[t].startswith("T") for t in test["targets"])
    assert not set(val["inputs"].ravel().tolist()) & held_out
    last = [row[row != F.PAD_ID][-1] for row in test["inputs"]]
    assert all(vocab[i].startswith("V") for i in last)
    assert not set(test["inputs"].ravel().tolist()) & _vocab_ids(artifact, "T")


def test_a_leave_one_out_run_judges_epochs_by_the_validation_item(loo_run):
    config, metrics, root = loo_run
    assert metrics["monitor"] == "val_ndcg@10" and metrics["protocol"] == "leave_one_out"
    history = metrics["history"]["val_ndcg@10"]
    assert len(history) == 3
    assert metrics["best_epoch"] == 1 + int(np.argmax(history))
    assert metrics["best_value"] == pytest.approx(max(history))
    report = json.loads((root / "de" / recommender.JSON_FILE).read_text())
    assert report["protocol"] == "leave_one_out" and report["n_users"] == NUM_USERS
    for ranking in ("full", "sampled"):
        block = report[ranking]
        for name in ("hr@10", "ndcg@10"):
            low, high = block["ci95"][name]
            assert low <= block[name] <= high
    assert report["epochs"] == 3 and report["best_epoch"] == metrics["best_epoch"]
    assert report["wall_s"] >= report["train_s"] > 0
    # The run's own figures are what `evaluate --recommender` computes from its checkpoint.
    scored = recommender.score_run(str(root / "de"), seed=config.seed)
    for name in ("hr@10", "ndcg@10"):
        assert scored["full"][name] == pytest.approx(report["full"][name], abs=1e-6)
    assert scored["protocol"] == "leave_one_out" and scored["stage"] == "test"
    # Scored on the validation item instead (what `tuning.compare` chooses recipes on),
    # the figure is the one training kept its epoch by.
    val = recommender.score_run(str(root / "de"), seed=config.seed, stage="val", keep_ranks=True)
    assert val["full"]["ndcg@10"] == pytest.approx(metrics["best_value"], abs=1e-6)
    vocab = dataset.load_vocab(metrics["artifact_dir"])
    assert all(vocab[t].startswith("V") for t in val["ranks"]["cases"].targets)


def test_full_ranking_excludes_earlier_items_and_counts_ties_against_the_target():
    # 8 ids: 0-2 reserved, items 3..7. One user, embedding [1]; item scores = their row.
    items = np.array([[9], [9], [9], [0.5], [0.2], [0.5], [0.9], [0.1]], np.float32)
    users = np.ones((3, 1), np.float32)
    sequences = dataset.Sequences(
        values=np.array([6, 4, 6, 6, 5]),  # user 0: [6, 4]; user 1: [6]; user 2: [6, 5]
        row_lengths=np.array([2, 1, 2]),
        future=np.array([[3, 5], [5, 3], [3, 6]]),
    )
    test = leave_one_out_cases(sequences, "test", max_len=4, num_items=8)
    np.testing.assert_array_equal(test["targets"], [5, 3, 6])
    ranks = full_ranking(users, items, test["targets"], test["seen"])
    # User 0: earlier 6, 4, 3 excluded; left 5 (0.5), 7 (0.1): rank 1.
    # User 1: earlier 6, 5 excluded; left 3 (0.5, the target), 4, 7: rank 1.
    # User 2: target 6 consumed before stays rankable; earlier 5, 3 excluded; 6 (0.9) first.
    np.testing.assert_array_equal(ranks, [1, 1, 1])
    # Ties count against the target: user 1 with 5 not excluded ties 3 (0.5) -> rank 2.
    one = dataset.Sequences(np.array([6]), np.array([1]), np.array([[4, 3]]))
    case = leave_one_out_cases(one, "test", max_len=4, num_items=8)
    assert case["seen"].toarray()[0].nonzero()[0].tolist() == [4, 6]
    assert full_ranking(users[:1], items, case["targets"], case["seen"]).tolist() == [2.0]
    # Validation ranks item n-1 after the history alone: users 0 and 1 tie their target
    # (0.5) with another item left (5, resp. 3) -> rank 2; user 2's 3 beats 4 and 7.
    val = leave_one_out_cases(sequences, "val", max_len=4, num_items=8)
    np.testing.assert_array_equal(val["targets"], [3, 5, 3])
    assert full_ranking(users, items, val["targets"], val["seen"]).tolist() == [2.0, 2.0, 1.0]


def test_short_users_and_unknown_targets_are_skipped_and_counted():
    sequences = dataset.Sequences(
        values=np.array([4, 5, 6]), row_lengths=np.array([1, 1, 1]),
        future=np.array([[3, 0], [5, F.OOV_ID], [6, 7]]),
    )  # fmt: skip
    test = leave_one_out_cases(sequences, "test", max_len=4, num_items=8)
    assert test["skipped"] == {"fewer_than_3_items": 1, "target_not_in_vocab": 1}
    np.testing.assert_array_equal(test["users"], [2])


def test_best_epoch_of_a_figure_to_maximize():
    progress = Progress()
    checkpoint = tf.train.Checkpoint(progress=progress)
    epoch = tf.Variable(0, dtype=tf.int64)
    with tempfile.TemporaryDirectory() as tmp:
        state = tf.train.CheckpointManager(checkpoint, tmp + "/s", max_to_keep=1)
        best = tf.train.CheckpointManager(checkpoint, tmp + "/b", max_to_keep=1)
        callback = EpochEnd(state, best, epoch, progress, monitor="val_ndcg@10", patience=2,
                            min_delta=0.0, mode="max")  # fmt: skip
        callback.set_model(tf.keras.Sequential())
        callback.on_train_begin()
        for e, value in enumerate([0.10, 0.30, 0.20, 0.25]):
            callback.on_epoch_end(e, {"val_ndcg@10": value})
        assert int(progress.best_epoch.numpy()) == 2
        assert callback.model.stop_training  # 2 epochs without a gain


def test_init_from_restores_the_encoder_exactly(runs, tmp_path):
    # `runs` (conftest.py): a bt and a de run of the tiny synthetic artifact, 1 epoch each.
    source = runs["bt"]
    data_dir = runs_lib.read_config(source)["data"]["output_dir"]
    flags = [*TINY_FLAGS, "--epochs=1", "--no-probe", "--no-export", "--model=de",
             f"--data_output_dir={data_dir}", f"--output_dir={tmp_path / 'ft'}"]  # fmt: skip
    run = trainer.prepare_run(parse([*flags, f"--init_from={source}"]))
    built = trainer.build_model(run)
    bt_encoder, _ = restore_encoder(source)
    mine = {v.name.split("/", 1)[-1]: v.numpy() for v in built.model.encoder.weights}
    theirs = {v.name.split("/", 1)[-1]: v.numpy() for v in bt_encoder.weights}
    assert mine.keys() == theirs.keys() and len(mine) > 4
    for name, value in theirs.items():
        np.testing.assert_array_equal(mine[name], value, err_msg=name)
    # The DE's tied item side is the BT encoder's item table.
    table = theirs["item_embedding/embeddings:0"]
    np.testing.assert_array_equal(built.model.item_embeddings(), table)
    # Another width is refused with what differs.
    other = parse([*flags, "--dim=8", f"--init_from={source}",
                   f"--output_dir={tmp_path / 'ft8'}"])  # fmt: skip
    with pytest.raises(UserError, match=r"its encoder differs: dim=16 \(here 8\)"):
        trainer.build_model(trainer.prepare_run(other))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(runs_lib.read_config(source)))
    with pytest.raises(UserError, match="has not finished training"):
        trainer.build_model(
            trainer.prepare_run(
                parse([*flags, f"--init_from={unfinished}", f"--output_dir={tmp_path / 'ft2'}"])
            )  # fmt: skip
        )


def test_leave_one_out_defaults_are_sasrec_with_a_full_softmax():
    """A leave-one-out DE gets SASRec's recipe trained by full softmax, not the history /
    future DE's (mean pooling, batch 64, 50 epochs); flags still override it."""
    loo = parse(["--dataset=ml-100k", "--model=de", "--protocol=leave_one_out"])
    assert (loo.batch_size, loo.temperature, loo.encoder.pooling) == (128, 1.0, "last")
    assert (loo.encoder.positions, loo.encoder.scale_embeddings) == ("end", True)
    assert (loo.encoder.num_heads, loo.encoder.ffn_dim, loo.input_len) == (1, 64, 200)
    assert loo.resolved_de_loss(1349) == "full_softmax"
    assert loo.monitor == "val_ndcg@10" and loo.early_stopping_patience == 20
    # BT-SR's small weight is leave-one-out's own; history / future keeps 0.1.
    joint = parse(["--dataset=ml-100k", "--model=bt+de", "--protocol=leave_one_out"])
    assert joint.bt_weight == 0.001 and loo.bt_weight == 0.1
    assert parse(["--dataset=ml-100k", "--model=bt+de"]).bt_weight == 0.1
    hf = parse(["--dataset=ml-100k", "--model=de"])
    assert (hf.batch_size, hf.max_epochs, hf.encoder.pooling) == (64, 50, "mean")
    assert not hf.encoder.scale_embeddings
    mine = parse(["--dataset=ml-100k", "--protocol=leave_one_out", "--no-scale_embeddings",
                  "--batch_size=32"])  # fmt: skip
    assert not mine.encoder.scale_embeddings and mine.batch_size == 32
