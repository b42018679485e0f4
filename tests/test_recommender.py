"""`bt_tf.evaluation.recommender`: the DE scored in the SASRec protocol, by hand and end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bt_tf import evaluate
from bt_tf import features as F
from bt_tf import runs as runs_lib
from bt_tf.errors import UserError
from bt_tf.evaluation import recommender
from bt_tf.evaluation.metrics import hits_at_k, ndcg_gains_at_k
from bt_tf.training import trainer
from bt_tf.training.flags import parse
from tests.tiny import TINY_FLAGS

# `runs` (conftest.py): {"bt": run dir, "de": run dir} trained on one tiny synthetic artifact.


@pytest.fixture(scope="module")
def trained_de(runs, tmp_path_factory):
    """A DE run on the artifact of `runs`, trained 40 steps (~9 s): `runs["de"]` (4 steps)
    barely leaves random (HR@10 0.125 where random scores 10/101), this one reaches ~0.33."""
    config = json.loads((Path(runs["de"]) / "config.json").read_text())
    run_dir = tmp_path_factory.mktemp("recommender") / "de40"
    flags = [*TINY_FLAGS, "--epochs=1", "--steps_per_epoch=40", "--no-probe", "--no-export"]
    data_dir = config["data"]["output_dir"]  # the artifact is reused, not rebuilt
    trainer.train(
        parse([*flags, "--model=de", f"--data_output_dir={data_dir}", f"--output_dir={run_dir}"])
    )
    assert runs_lib.read_config(run_dir)["artifact_dir"] == config["artifact_dir"]
    return str(run_dir)


def test_sasrec_inputs_hold_out_the_last_item_of_history_plus_future():
    history = np.array([[5, 6, 7, 0], [4, 0, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]])
    future = np.array([[8, 9, 0], [2, 0, 0], [4, 5, 0], [0, 0, 0]])
    inputs, targets, rated = recommender.sasrec_inputs(history, future, max_len=3)
    # 5 6 7 8 | 9: the last 3 before the target; 4 | 2 (OOV target); 3 4 | 5; nothing.
    np.testing.assert_array_equal(inputs, [[6, 7, 8], [4, 0, 0], [3, 4, 0], [0, 0, 0]])
    np.testing.assert_array_equal(targets, [9, 2, 5, 0])
    assert [r.tolist() for r in rated] == [[5, 6, 7, 8, 9], [2, 4], [3, 4, 5], []]


def _hand_case():
    """Item i in 3..14 is [i, 0]; 15 is [0, 1]; 16 is [5, 0], the same vector as item 5."""
    items = np.zeros((17, 2))
    items[3:15, 0] = np.arange(3, 15)
    items[15] = [0, 1]
    items[16] = [5, 0]
    users = np.array([[1.0, 0], [0, 1], [1, 0], [0, 0]])
    targets = np.array([5, 15, 3, 7])
    negatives = np.full((4, 12), -1)
    negatives[0, :5] = [3, 4, 16, 6, 7]
    negatives[1] = np.arange(3, 15)
    negatives[2] = [*range(4, 15), 16]
    negatives[3, :3] = [3, 4, 5]
    return users, items, targets, negatives


def test_sampled_ranks_hr_and_ndcg_worked_out_by_hand():
    # A: u=[1,0], target 5 scores 5; negatives 3,4 (lower), 16 (5: a TIE, counts
    #    against), 6, 7 (higher) -> rank 1 + 3 = 4; HR@10 1, NDCG@10 1/log2(5) = 0.4307.
    # B: u=[0,1], target 15 scores 1, its 12 negatives 0 -> rank 1; HR 1, NDCG 1/log2(2) = 1.
    # C: u=[1,0], target 3 scores 3; its 12 negatives (4..14 and 16) all score more
    #    -> rank 13 > 10; HR 0, NDCG 0.
    # D: u=[0,0], a constant scorer: the target ties with its 3 negatives -> rank 4
    #    (pessimistic, never lucky); HR 1, NDCG 0.4307.
    # Means: HR@10 = 3/4 = 0.75; NDCG@10 = (0.4307 + 1 + 0 + 0.4307) / 4 = 0.4653.
    ranks = recommender.sampled_ranks(*_hand_case())
    np.testing.assert_array_equal(ranks, [4, 1, 13, 4])
    assert hits_at_k(ranks, 10).tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(
        ndcg_gains_at_k(ranks, 10), [1 / math.log2(5), 1, 0, 1 / math.log2(5)]
    )
    assert hits_at_k(ranks, 10).mean() == 0.75
    assert ndcg_gains_at_k(ranks, 10).mean() == pytest.approx(0.46534, abs=1e-5)


def test_sampled_ranks_refuse_reserved_targets_and_misaligned_rows():
    users, items, targets, negatives = _hand_case()
    with pytest.raises(ValueError, match="every target must be a row"):
        recommender.sampled_ranks(users, items, np.array([5, 15, 3, 99]), negatives)
    with pytest.raises(ValueError, match="one row per user"):
        recommender.sampled_ranks(users[:3], items, targets, negatives)


def test_negatives_are_unrated_catalog_ids_seeded_and_exactly_100():
    num_items = 130  # catalog ids 3..129: 127 items
    rated = [
        np.arange(3, 21),  # 18 rated: 109 unrated, more than 100
        np.array([], np.int64),  # nothing rated: 127 candidates
        np.array([0, 1, 2, 40, 50]),  # reserved ids stored beside two items
        np.arange(3, 80),  # 77 rated: only 50 unrated -> all 50, then -1
    ]
    negatives = recommender.sample_negatives(rated, num_items, seed=7)
    assert negatives.shape == (4, recommender.NUM_NEGATIVES) == (4, 100)
    for row, ids in zip(negatives[:3], rated[:3]):
        assert len(set(row.tolist())) == 100  # distinct, no -1
        assert row.min() >= F.NUM_RESERVED and row.max() < num_items
        assert not set(row.tolist()) & set(ids.tolist())
    assert sorted(negatives[3, :50].tolist()) == list(range(80, 130))  # every unrated item
    assert (negatives[3, 50:] == -1).all()
    np.testing.assert_array_equal(recommender.sample_negatives(rated, num_items, seed=7), negatives)
    other = recommender.sample_negatives(rated, num_items, seed=8)
    assert not np.array_equal(other[:3], negatives[:3])


def test_negatives_are_uniform_over_the_unrated_items():
    # 20 unrated candidates (3..22, minus 5 and 9 rated), 5 draws per user, 4000 users:
    # each candidate is drawn 4000 * 5 / 18 = 1111 times in expectation (sd ~ 30).
    rated = [np.array([5, 9])] * 4000
    negatives = recommender.sample_negatives(rated, 23, num_negatives=5, seed=0)
    counts = np.bincount(negatives.ravel(), minlength=23)
    assert counts[[0, 1, 2, 5, 9]].sum() == 0
    candidates = np.setdiff1d(np.arange(3, 23), [5, 9])
    assert np.abs(counts[candidates] - 4000 * 5 / 18).max() < 150


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = (np.arange(500) % 4 == 0).astype(float)  # mean 0.25
    low, high = recommender.bootstrap_interval(values, seed=3)
    assert low < 0.25 < high and high - low < 0.1
    assert recommender.bootstrap_interval(values, seed=3) == (low, high)
    assert recommender.bootstrap_interval(np.ones(10)) == (1.0, 1.0)
    assert all(math.isnan(v) for v in recommender.bootstrap_interval(np.ones(1)))


def test_flag_scores_de_runs_skips_bt_and_writes_the_report(runs, trained_de, tmp_path):
    out = tmp_path / "report"
    rows = evaluate.main(
        [f"--runs={runs['bt']},{trained_de}", "--recommender", f"--output_dir={out}"]
    )
    report = json.loads((out / recommender.JSON_FILE).read_text())
    # bt: skipped; the popularity ranking of the same users and negatives comes last.
    assert (
        [r["model"] for r in rows] == [r["model"] for r in report["runs"]] == ["de", "popularity"]
    )
    row, popular = report["runs"]
    assert row["protocol"] == popular["protocol"] == "leave_last_out"
    assert (popular["n_users"], popular["sampled"]["min_negatives"]) == (row["n_users"], 100)
    artifact = runs_lib.read_config(trained_de)["artifact_dir"]
    n_total = sum(len(history) for history, _ in recommender.read_sequences(artifact).values())
    assert row["n_users"] + row["n_skipped"] == n_total and row["n_users"] > 0.9 * n_total
    assert row["n_skipped"] == sum(row["skipped"].values())
    assert row["sampled"]["min_negatives"] == 100 and set(row["by_split"]) == set(F.SPLITS)
    for ranking in ("full", "sampled"):
        for metric in ("hr@10", "ndcg@10"):
            low, high = row[ranking]["ci95"][metric]
            assert 0.0 <= low < row[ranking][metric] < high <= 1.0, (ranking, metric, row)
    # A random scorer hits the top 10 of 101 with probability 10/101 = 0.099; the trained
    # DE's whole interval lies above it (HR@10 ~0.33 on these 400 users). The full ranking
    # (about 200 items) is harder than the sampled one.
    sampled, full = row["sampled"], row["full"]
    assert sampled["ci95"]["hr@10"][0] > 10 / 101 and sampled["ndcg@10"] < sampled["hr@10"]
    assert full["hr@10"] <= sampled["hr@10"]
    assert row["epochs"] == 1 and row["best_epoch"] == 1 and row["wall_s"] >= row["train_s"]
    names = [ref["name"] for ref in report["reference"]]
    assert report["reference"][0]["sampled"] == {"hr@10": 0.8245, "ndcg@10": 0.5905}
    assert "public PyTorch port" in names[1] and report["seed"] == 0
    assert "leave_last_out" in report["protocols"]
    md = (out / recommender.MARKDOWN_FILE).read_text()
    assert f"| de | leave_last_out | {row['n_users']} | {row['n_skipped']} | " in md
    # Every figure with its interval, in the header's order (full HR, NDCG; sampled HR, NDCG).
    cells = " | ".join(
        f"{b[m]:.4f} [{b['ci95'][m][0]:.4f}, {b['ci95'][m][1]:.4f}]"
        for b in (full, sampled) for m in ("hr@10", "ndcg@10")
    )  # fmt: skip
    assert f"| {row['n_skipped']} | {cells} | 1 (1) |" in md and "| 0.8245 | 0.5905 |" in md
    assert "| popularity |" in md
    assert not (out / "report.md").exists() and not (out / "cache").exists()  # no probes
    # Same seed, same figures (negatives and bootstrap).
    again = recommender.evaluate_recommender([trained_de], str(tmp_path / "again"))["runs"][0]
    assert (again["sampled"], again["full"]) == (row["sampled"], row["full"])


def test_only_bt_runs_is_a_user_error(runs, tmp_path):
    with pytest.raises(UserError, match="needs a run with an item tower"):
        evaluate.main([f"--runs={runs['bt']}", "--recommender", f"--output_dir={tmp_path}"])
    assert not (tmp_path / recommender.JSON_FILE).exists()


def test_seed_spread_widens_the_contenders_interval():
    # 400 users, 3 seeds of a model whose seeds differ by a lot vs by nothing; the same
    # per-user noise. Resampling seeds makes the first interval much wider; the second
    # one is the users-only interval.
    rng = np.random.default_rng(0)
    users = rng.normal(0.5, 0.2, size=400)
    base = np.stack([users + rng.normal(0, 0.05, 400) for _ in range(3)])
    spread = np.stack([users + shift for shift in (-0.15, 0.0, 0.15)])
    calm = np.stack([users for _ in range(3)])
    wide = recommender.compare_contenders({"de": base, "x": spread}, "de", seed=1)
    narrow = recommender.compare_contenders({"de": base, "x": calm}, "de", seed=1)
    width = lambda c: c["ci95"][1] - c["ci95"][0]  # noqa: E731
    assert width(wide["models"]["x"]) > 3 * width(narrow["models"]["x"])
    assert width(wide["comparisons"]["x"]) > 3 * width(narrow["comparisons"]["x"])
    assert wide["comparisons"]["x"]["per_seed_ratios"] == pytest.approx(
        list(spread.mean(axis=1) / base.mean(axis=1))
    )
    # Paired over users: a model equal to the baseline has a ratio interval of exactly 1.
    same = recommender.compare_contenders({"de": base, "y": base.copy()}, "de", seed=1)
    assert same["comparisons"]["y"]["ci95"][0] < 1.0 < same["comparisons"]["y"]["ci95"][1]


def test_rejection_draws_are_uniform_over_a_large_catalog():
    # 2,000 items, 300 rated: the rejection path (unrated > 2 x 100). Every unrated item
    # is drawn about equally often, no rated or reserved one ever, rows distinct.
    rated = [np.arange(3, 303)] * 600
    negatives = recommender.sample_negatives(rated, 2003, seed=3)
    assert all(len(set(row.tolist())) == 100 for row in negatives)
    counts = np.bincount(negatives.ravel(), minlength=2003)
    assert counts[:303].sum() == 0
    expected = 600 * 100 / 1700
    assert abs(counts[303:].mean() - expected) < 1e-9 and counts[303:].std() < 2.5 * np.sqrt(
        expected
    )


def test_only_a_leave_one_out_run_has_a_validation_item_to_score(trained_de):
    with pytest.raises(UserError, match="only a leave-one-out run has a validation item"):
        recommender.score_run(trained_de, stage="val")
    with pytest.raises(ValueError, match="stage must be one of"):
        recommender.score_run(trained_de, stage="eval")
