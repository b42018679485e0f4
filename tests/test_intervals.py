"""Paired bootstrap intervals, the claim's verdict, and the per-user scores table."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from bt_tf.evaluation import intervals, scores
from bt_tf.evaluation.intervals import Cell, claim_verdict, task_intervals, task_verdict
from bt_tf.evaluation.probing import Record, record_rows
from bt_tf.evaluation.protocol import Population
from bt_tf.evaluation.tasks import FAVORITE_GENRE, LIKED_ITEM, NEXT_ITEM, Units


def test_interval_covers_a_known_difference_in_90_to_99_percent_of_replicates():
    # 200 simulated evaluations: per user, model a scores b's value plus N(0.1, 1);
    # the paired 95% interval of the difference must cover the true 0.1 in 90-99%
    # of them (the percentile bootstrap of a mean over 300 users: ~94%).
    rng = np.random.default_rng(1)
    n, covered, ratio_covered = 300, 0, 0
    for r in range(200):
        b = rng.normal(1.0, 1.0, n)
        a = b + rng.normal(0.1, 1.0, n)
        cells = {("m", 0.1, "a"): Cell("user_mean", a[None], np.arange(n)),
                 ("m", 0.1, "b"): Cell("user_mean", b[None], np.arange(n))}  # fmt: skip
        (c,) = task_intervals(cells, n, [("a", "b")], n_resamples=500, seed=r)["comparisons"]
        covered += c.difference_ci[0] <= 0.1 <= c.difference_ci[1]
        ratio_covered += c.ratio_ci[0] <= 1.1 <= c.ratio_ci[1]
    assert 0.90 <= covered / 200 <= 0.99, covered
    assert 0.90 <= ratio_covered / 200 <= 0.99, ratio_covered


def test_resampled_metrics_are_the_metric_of_the_resampled_users():
    rng = np.random.default_rng(0)
    n, m = 200, 1500
    user = rng.integers(0, n, m)
    label = rng.integers(0, 2, m)
    score = np.round(label * 0.5 + rng.normal(size=m), 1)  # ties
    idx = rng.integers(0, n, (3, n))  # three resamples of users
    w = intervals._weights(idx, n)
    auc = intervals._statistic(Cell("auc", score[None], user, label), w)
    y = rng.integers(0, 4, n)
    correct = (np.where(rng.random(n) < 0.5, y, rng.integers(0, 4, n)) == y).astype(float)
    bal = intervals._statistic(Cell("balanced", correct[None], np.arange(n), y), w)
    for b in range(3):
        pairs = np.concatenate([np.flatnonzero(user == u) for u in idx[b]])
        assert auc[b] == pytest.approx(roc_auc_score(label[pairs], score[pairs]))
        pred = np.where(correct[idx[b]] == 1, y[idx[b]], -1)
        assert bal[b] == pytest.approx(balanced_accuracy_score(y[idx[b]], pred))
    # Two replicates (seeds): their mean.
    two = Cell("user_mean", np.stack([correct, 1 - correct]), np.arange(n))
    np.testing.assert_allclose(intervals._statistic(two, w), 0.5)
    # The AUC of two groups (folds) is the mean of their AUCs, never ranking across them.
    group = (np.arange(m) % 2).astype(np.int64)
    shifted = score + 10 * group  # fold 1 on another scale
    grouped = intervals._statistic(Cell("auc", shifted[None], user, label, group), w[:1])
    per = [roc_auc_score(label[pairs][group[pairs] == g], shifted[pairs][group[pairs] == g])
           for g in (0, 1) for pairs in [np.concatenate([np.flatnonzero(user == u)
                                                         for u in idx[0]])]]  # fmt: skip
    assert grouped[0] == pytest.approx(np.mean(per))


def test_task_and_claim_verdicts_follow_the_rules():
    assert task_verdict(1.22, (1.02, 1.45)) == "reproduced"
    assert task_verdict(1.10, (0.98, 1.25)) == "inconclusive"  # the interval touches 1
    assert task_verdict(1.05, (1.01, 1.09)) == "inconclusive"  # below the threshold
    assert task_verdict(0.95, (0.92, 0.98)) == "refuted"
    assert task_verdict(1.0, (0.95, 1.0799)) == "refuted"  # cannot reach 1.08
    assert task_verdict(float("nan"), (float("nan"), float("nan"))) == "inconclusive"
    assert claim_verdict(["reproduced", "reproduced", "refuted"]) == "reproduced"
    assert claim_verdict(["refuted", "inconclusive", "refuted"]) == "refuted"
    assert claim_verdict(["reproduced", "inconclusive", "refuted"]) == "inconclusive"
    assert claim_verdict(["reproduced"]) == "inconclusive"  # needs 2 tasks


def _records(n=200, seed=0):
    """bt (2 pretraining seeds) and de on three tasks; bt is better on genre, equal on
    next item, worse on liked item; 2 label seeds at 3 fractions."""
    rng = np.random.default_rng(seed)
    users = np.arange(n)
    y = rng.integers(3, 8, n)
    target = rng.integers(3, 50, n)
    pair_user = np.repeat(users, 3)
    liked = rng.integers(0, 2, pair_user.size)
    fold = users % 5
    out = []
    for model, pretrain_seeds in (("bt", (0, 1)), ("de", (0,))):
        for ps in pretrain_seeds:
            for f in (0.01, 0.05, 0.1):
                for s in (0, 1):
                    good = 0.7 if model == "bt" else 0.45
                    pred = np.where(rng.random(n) < good, y, 3)
                    out.append(
                        Record(
                            model,
                            ps,
                            FAVORITE_GENRE,
                            f,
                            s,
                            Units(users, y, pred=pred, fold=fold),
                            (),
                        )
                    )
                    rank = rng.integers(1, 30, n).astype(float)
                    out.append(
                        Record(
                            model,
                            ps,
                            NEXT_ITEM,
                            f,
                            s,
                            Units(users, target, rank=rank, fold=fold),
                            (),
                        )
                    )
                    noise = 2.0 if model == "bt" else 0.5
                    score = liked + rng.normal(0, noise, liked.size)
                    out.append(Record(model, ps, LIKED_ITEM, f, s,
                                      Units(pair_user, liked, item=pair_user % 7, score=score,
                                            fold=fold[pair_user]), ()))  # fmt: skip
    return out


def test_analyse_gives_the_claim_block_from_per_user_scores():
    records = _records()
    out = scores.analyse(records, 10, n_resamples=300)
    claim = out["claim"]
    assert claim["threshold"] == 1.08 and claim["fractions"] == [0.01, 0.05, 0.1]
    by = {t["task"]: t for t in claim["tasks"]}
    assert set(by) == {NEXT_ITEM, FAVORITE_GENRE, LIKED_ITEM}
    assert by[FAVORITE_GENRE]["metric"] == "balanced_accuracy"
    assert by[FAVORITE_GENRE]["verdict"] == "reproduced"  # 0.7 vs 0.45 of the labels
    assert by[LIKED_ITEM]["verdict"] == "refuted"  # noisier scores: lower AUC
    assert by[NEXT_ITEM]["verdict"] != "reproduced"  # both random
    assert claim["verdict"] == "inconclusive"
    for t in claim["tasks"]:
        lo, hi = t["ci95"]
        assert lo <= t["ratio"] <= hi
    # The claim ratio is the mean over fractions of bt / de, each the mean over
    # label and pretraining seeds of the metric.
    cells = {(c["task"], c["metric"], c["fraction"], c["model"]): c for c in out["cells"]}
    want = np.mean([cells[(FAVORITE_GENRE, "balanced_accuracy", f, "bt")]["value"]
                    / cells[(FAVORITE_GENRE, "balanced_accuracy", f, "de")]["value"]
                    for f in (0.01, 0.05, 0.1)])  # fmt: skip
    assert by[FAVORITE_GENRE]["ratio"] == pytest.approx(want)
    bt = cells[(FAVORITE_GENRE, "accuracy", 0.1, "bt")]
    assert bt["n_replicates"] == 4  # 2 pretraining seeds x 2 label seeds
    rows = [r for r in record_rows(records, 10)
            if (r["task"], r["metric"], r["fraction"], r["model"])
            == (FAVORITE_GENRE, "accuracy", 0.1, "bt")]  # fmt: skip
    assert bt["value"] == pytest.approx(np.mean([r["value"] for r in rows]))
    comps = [c for c in out["comparisons"] if c["task"] == FAVORITE_GENRE]
    assert {(c["model"], c["reference"]) for c in comps} == {("bt", "de")}


def test_scores_parquet_holds_every_unit_and_recomputes_the_rows(tmp_path):
    records = _records(n=50)
    ids = {"train": np.array([f"u{i}".encode() for i in range(50)], dtype=object),
           "eval": np.array([], dtype=object), "test": np.array([], dtype=object)}  # fmt: skip
    path = scores.write_scores(records, Population.make(ids), str(tmp_path / "scores.parquet"))
    table = scores.read_scores(path)
    assert len(table["user_id"]) == sum(len(r.units) for r in records)
    assert set(table) >= {"model", "pretrain_seed", "task", "fraction", "seed", "fold",
                          "user_id", "item", "label", "pred", "score", "rank", "hit", "ndcg",
                          "correct"}  # fmt: skip
    rows = record_rows(records, 10)
    for r in rows[:40]:
        sel = ((table["model"] == r["model"]) & (table["task"] == r["task"])
               & (table["fraction"] == r["fraction"]) & (table["seed"] == r["seed"])
               & (table["pretrain_seed"] == r["pretrain_seed"]))  # fmt: skip
        column = {"accuracy": "correct", "hr@10": "hit", "ndcg@10": "ndcg"}.get(r["metric"])
        if column:
            assert table[column][sel].mean() == pytest.approx(r["value"]), r
        elif r["metric"] == "auc":
            folds = np.unique(table["fold"][sel])
            aucs = [
                roc_auc_score(
                    table["label"][sel & (table["fold"] == f)],
                    table["score"][sel & (table["fold"] == f)],
                )
                for f in folds
            ]
            assert np.mean(aucs) == pytest.approx(r["value"])  # fmt: skip


def test_claim_objective_is_the_mean_of_the_task_ratios_with_one_joint_interval():
    records = _records()
    fractions = (0.05, 0.1)
    out = scores.claim_objective(records, 10, model="bt", reference="de", fractions=fractions,
                                 n_resamples=300)  # fmt: skip
    analysed = scores.analyse(records, 10, claim_fractions=fractions, n_resamples=300)
    by = {t["task"]: t for t in analysed["claim"]["tasks"]}
    assert set(out["tasks"]) == {NEXT_ITEM, FAVORITE_GENRE, LIKED_ITEM}
    for task, cell in out["tasks"].items():  # the same point estimate as the claim block's
        assert cell["ratio"] == pytest.approx(by[task]["ratio"])
        lo, hi = cell["ci95"]
        assert lo <= cell["ratio"] <= hi
    assert out["ratio"] == pytest.approx(np.mean([c["ratio"] for c in out["tasks"].values()]))
    lo, hi = out["ci95"]
    assert lo < out["ratio"] < hi
    # bt beats de on genre and loses on liked item (the records' design).
    assert out["tasks"][FAVORITE_GENRE]["ci95"][0] > 1 > out["tasks"][LIKED_ITEM]["ci95"][1]
    # Against itself: exactly 1 in every resample.
    same = scores.claim_objective(records, 10, model="de", reference="de", fractions=fractions,
                                  n_resamples=100)  # fmt: skip
    assert same["ratio"] == pytest.approx(1.0) and same["ci95"] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="no claim task"):
        scores.claim_objective(records, 10, model="bt", reference="svd", fractions=fractions)
