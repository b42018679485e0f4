"""Paired bootstrap intervals, the claim's verdict, and the per-user scores table."""

import dataclasses

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


# --------------------------------------------------------------------------
# The hierarchical bootstrap: users, label seeds and each model's pretraining seeds


def _seeded_cells(rng, n, seeds, s, *, difference=0.1, noise=1.0, label_seeds=1):
    """Two models on ``n`` users, ``seeds`` pretraining seeds each: user u of model m under
    seed k scores ``base_u + d_m + delta_mk + noise`` with ``delta_mk ~ N(0, s)``
    (the between-seed spread) and ``d_a - d_b = difference`` (the truth, the
    expectation over seeds)."""
    base = rng.normal(1.0, 1.0, n)
    cells = {}
    for model, d in (("a", difference), ("b", 0.0)):
        values, pretrain, label = [], [], []
        for k in range(seeds):
            delta = rng.normal(0.0, s)
            for ls in range(label_seeds):
                values.append(base + d + delta + rng.normal(0.0, noise, n))
                pretrain.append(k)
                label.append(ls)
        cells[("m", 0.1, model)] = Cell("user_mean", np.stack(values), np.arange(n), model=model,
                                        pretrain_seed=np.array(pretrain),
                                        label_seed=np.array(label))  # fmt: skip
    return cells


def test_pretraining_seed_spread_is_in_the_interval_coverage_90_to_99_percent():
    """200 simulated evaluations, 3 pretraining seeds per model with per-seed effects of
    standard deviation 0.08 (the user-level standard error of the difference is about
    0.06): the interval resampling users and seeds covers the true difference in 90-99%
    of them; the method before (seeds averaged inside a resample of users) in under 90%."""
    n, reps, covered = 200, 200, {True: 0, False: 0}
    for r in range(reps):
        cells = _seeded_cells(np.random.default_rng(r), n, 3, 0.08)
        for hierarchical in (True, False):
            (c,) = task_intervals(cells, n, [("a", "b")], n_resamples=400, seed=r,
                                  resample_seeds=hierarchical)["comparisons"]  # fmt: skip
            covered[hierarchical] += c.difference_ci[0] <= 0.1 <= c.difference_ci[1]
    assert 0.90 <= covered[True] / reps <= 0.99, covered
    assert covered[False] / reps < 0.90, covered


def test_seeds_that_disagree_widen_the_interval_and_agreeing_ones_do_not():
    # The example: per-seed ratios 0.56 / 1.08 / 1.50 against 1.08 / 1.03 / 1.15.
    rng = np.random.default_rng(0)
    n = 400
    base = rng.uniform(0.2, 0.4, n)

    def cells(ratios):
        out = {}
        for model, per_seed in (("bt", ratios), ("de", (1.0, 1.0, 1.0))):
            values = np.stack([base * x + rng.normal(0, 0.05, n) for x in per_seed])
            out[("m", 0.1, model)] = Cell("user_mean", values, np.arange(n), model=model,
                                          pretrain_seed=np.arange(3))  # fmt: skip
        return out

    width = {}
    for name, ratios in (("spread", (0.56, 1.08, 1.50)), ("agree", (1.08, 1.03, 1.15))):
        c = cells(ratios)
        for hierarchical in (True, False):
            (cmp,) = task_intervals(c, n, [("bt", "de")], n_resamples=1000,
                                    resample_seeds=hierarchical)["comparisons"]  # fmt: skip
            width[(name, hierarchical)] = cmp.ratio_ci[1] - cmp.ratio_ci[0]
    # Users only: the same narrow interval whatever the seeds say (the flaw).
    assert width[("spread", False)] < 0.1 and width[("agree", False)] < 0.1
    # Resampling the seeds: the disagreeing seeds' interval spans most of their range.
    assert width[("spread", True)] > 0.5
    assert width[("agree", True)] < 0.2


def test_replicate_weights_follow_the_drawn_seeds():
    # bt: pretraining seeds 0, 1 x label seeds 0, 1; de: seed 5 only (never resampled).
    bt = Cell("user_mean", np.arange(12.0).reshape(4, 3), np.arange(3), model="bt",
              pretrain_seed=np.array([0, 0, 1, 1]), label_seed=np.array([0, 1, 0, 1]))  # fmt: skip
    de = Cell("user_mean", np.ones((2, 3)), np.arange(3), model="de",
              pretrain_seed=np.array([5, 5]), label_seed=np.array([0, 1]))  # fmt: skip
    one = Cell("user_mean", np.ones((1, 3)), np.arange(3), model="bt",
               pretrain_seed=np.array([0]), label_seed=np.array([0]))  # fmt: skip
    design = intervals.Design.of([bt, de, one], 3)
    assert design.label_seeds == (0, 1) and dict(design.pretrain_seeds) == {
        "bt": (0, 1),
        "de": (5,),
    }
    assert [len(d) for d in design.data()] == [3, 2, 2]  # users, label seeds, bt's seeds
    # One resample: users [0, 0, 2], label seeds [1, 1], bt's seeds [0, 1].
    draws = design.draws([np.array([[0, 0, 2]]), np.array([[1, 1]]), np.array([[0, 1]])])
    np.testing.assert_array_equal(draws.w, [[2, 0, 1]])
    np.testing.assert_array_equal(draws.replicate_weights(bt), [[0, 2, 0, 2]])
    np.testing.assert_array_equal(draws.replicate_weights(de), [[0, 2]])
    # A cell with one label seed and one of bt's seeds keeps its one replicate whatever is
    # drawn (2 label draws x 2 seed draws, all mapped to it).
    np.testing.assert_array_equal(draws.replicate_weights(one), [[4]])
    # bt's metric: label seed 1 of seeds 0 and 1 (rows 1, 3) on users 0, 0, 2.
    want = np.mean([(2 * 3 + 5) / 3, (2 * 9 + 11) / 3])
    assert intervals._statistic(bt, draws.w, draws.replicate_weights(bt))[0] == pytest.approx(want)
    assert intervals.point_value(bt, pretrain_seed=1) == pytest.approx(np.mean(np.arange(6.0, 12)))
    users_only = intervals.Design.of([bt, de], 3, resample_seeds=False)
    assert len(users_only.data()) == 1 and users_only.describe()["resampled"] == ["users"]


def _claim(records, **kw):
    kw.setdefault("n_resamples", 200)
    return scores.analyse(records, 10, **kw)


def test_claim_block_names_its_pair_seeds_fractions_and_per_seed_ratios():
    records = _records()
    claim = _claim(records)["claim"]
    assert (claim["model"], claim["baseline"]) == ("bt", "de")
    assert claim["seeds"] == {"bt": 2, "de": 1} and claim["missing"] == []
    assert claim["users"] == "all" and claim["n_users"] == 200
    assert claim["selection"] == "not recorded"
    assert "de: 1 pretraining seed" in claim["interval"]
    by = {t["task"]: t for t in claim["tasks"]}
    for t in claim["tasks"]:
        assert t["fractions"] == [0.01, 0.05, 0.1] and t["n_users"] == 200
        per = t["per_seed_ratios"]
        assert set(per) == {"bt", "de"} and set(per["bt"]) == {"0", "1"} and set(per["de"]) == {"0"}
        # de has one seed: its only per-seed ratio is the claim ratio itself; bt's two
        # bracket it (the mean of per-fraction ratios is not linear in the seeds, so
        # only approximately their mean).
        assert per["de"]["0"] == pytest.approx(t["ratio"])
        assert min(per["bt"].values()) - 1e-9 <= t["ratio"] <= max(per["bt"].values()) + 1e-9
    # Hand check of one per-seed ratio: bt's seed 1 alone against de.
    cells, _, _ = scores._cells(
        FAVORITE_GENRE, [r for r in records if r.task == FAVORITE_GENRE], 10
    )
    want = np.mean([intervals.point_value(cells[("balanced_accuracy", f, "bt")][0], 1)
                    / intervals.point_value(cells[("balanced_accuracy", f, "de")][0])
                    for f in (0.01, 0.05, 0.1)])  # fmt: skip
    assert by[FAVORITE_GENRE]["per_seed_ratios"]["bt"]["1"] == pytest.approx(want)


def test_the_claim_is_bt_against_de_whatever_the_baseline_and_only_the_pair_asked_for():
    records = _records()
    # --baseline=svd: the comparisons follow it, the claim stays bt / de.
    svd = [dataclasses.replace(r, model="svd") for r in records if r.model == "de"]
    out = _claim(records + svd, baseline="svd")
    assert (out["claim"]["model"], out["claim"]["baseline"]) == ("bt", "de")
    assert {c["reference"] for c in out["comparisons"]} >= {"svd"}
    same = _claim(records)["claim"]
    assert [t["ratio"] for t in out["claim"]["tasks"]] == [t["ratio"] for t in same["tasks"]]
    # --claim_models=bt,svd asks for that pair; without de runs there is no (bt, de) claim.
    pair = _claim(records + svd, claim_models=("bt", "svd"))["claim"]
    assert (pair["model"], pair["baseline"]) == ("bt", "svd")
    assert _claim([r for r in records if r.model != "de"] + svd)["claim"] is None
    with pytest.raises(ValueError, match="two models"):
        _claim(records, claim_models=("bt", "bt"))


def _bt_wins_two(records):
    """bt wins favorite genre clearly (`_records`); here it wins next item too (every
    other user's target ranked first): 2 of 3 tasks reproduced."""
    return [dataclasses.replace(r, units=dataclasses.replace(r.units, rank=np.where(
        np.arange(len(r.units)) % 2 == 0, 1.0, r.units.rank)))
        if (r.model, r.task) == ("bt", NEXT_ITEM) else r for r in records]  # fmt: skip


def test_a_missing_task_or_fraction_makes_the_verdict_inconclusive():
    better = _bt_wins_two(_records())
    full = _claim(better)["claim"]
    assert [t["verdict"] for t in full["tasks"]].count("reproduced") == 2
    assert full["verdict"] == "reproduced"
    # Without liked item, 2 of 3 must not become 2 of 2.
    two = _claim([r for r in better if r.task != LIKED_ITEM])["claim"]
    assert two["missing"] == [LIKED_ITEM] and two["verdict"] == "inconclusive"
    assert "missing liked_item" in two["note"]
    # A task without one of the claim's fractions: flagged, inconclusive.
    hole = [r for r in better if not (r.task == NEXT_ITEM and r.fraction == 0.01)]
    claim = _claim(hole)["claim"]
    by = {t["task"]: t for t in claim["tasks"]}
    assert by[NEXT_ITEM]["fractions"] == [0.05, 0.1] and by[LIKED_ITEM]["fractions"] == [
        0.01, 0.05, 0.1]  # fmt: skip
    assert claim["missing"] == ["next_item@0.01"] and claim["verdict"] == "inconclusive"


def test_claim_on_a_subset_of_users_and_its_selection():
    records = _records()
    test_rows = np.arange(150, 200)  # "the test split": users whose labels chose nothing
    chosen = np.zeros(200, bool)
    chosen[:150] = True  # the others' labels chose a default
    out = _claim(records, claim_users=(("test", test_rows), ("all", None)), chosen=chosen)
    test, everyone = out["claims"]
    assert out["claim"] is test
    assert (test["users"], test["n_users"]) == ("test", 50)
    assert (everyone["users"], everyone["n_users"]) == ("all", 200)
    assert test["selection"] == "out_of_sample" and test["in_sample_share"] == 0.0
    assert everyone["selection"] == "in_sample"
    assert everyone["in_sample_share"] == pytest.approx(0.75)
    assert "in-sample: 75%" in everyone["note"]
    # The subset's ratio is the metric of its own units (the probes are the same).
    sub = [dataclasses.replace(r, units=_subset(r.units, test_rows)) for r in records]
    alone = _claim(sub)["claim"]
    for a, b in zip(test["tasks"], alone["tasks"]):
        assert a["ratio"] == pytest.approx(b["ratio"]), a["task"]
    # Fewer users: a wider interval than on everyone.
    for a, b in zip(test["tasks"], everyone["tasks"]):
        assert a["ci95"][1] - a["ci95"][0] > b["ci95"][1] - b["ci95"][0], a["task"]


def _subset(units, rows):
    keep = np.isin(units.user, rows)
    return Units(**{f: None if getattr(units, f) is None else getattr(units, f)[keep]
                    for f in Units.FIELDS})  # fmt: skip


def test_one_pretraining_seed_is_stated_and_a_decided_verdict_says_by_what():
    records = [r for r in _bt_wins_two(_records()) if r.pretrain_seed == 0]
    claim = _claim(records)["claim"]
    assert claim["seeds"] == {"bt": 1, "de": 1}
    assert "1 pretraining seed" in claim["interval"]
    assert claim["verdict"] == "reproduced"
    assert "decided by the interval over users and label seeds alone" in claim["note"]
    assert all(len(t["per_seed_ratios"]["bt"]) == 1 for t in claim["tasks"])


def test_a_ratio_undefined_in_some_resamples_has_no_interval_and_says_why():
    # One hit among 30 users for both models: resamples without that user give 0 / 0.
    users = np.arange(30)
    rank = np.where(users == 0, 1.0, np.inf)
    records = [Record(m, 0, NEXT_ITEM, f, s, Units(users, users + 3, rank=rank, fold=users % 5), ())
               for m in ("bt", "de") for f in (0.01, 0.05, 0.1) for s in (0, 1)]  # fmt: skip
    claim = _claim(records)["claim"]
    (task,) = claim["tasks"]
    assert task["ratio"] == pytest.approx(1.0) and np.isnan(task["ci95"]).all()
    assert task["verdict"] == "inconclusive"
    assert "no interval for next_item" in claim["note"]
