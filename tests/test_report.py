"""Report: the claim first, every cell with its paired interval, floors, files and plots."""

import json
import math

import matplotlib.image
import numpy as np
import pytest

from bt_tf.evaluation import report, scores
from bt_tf.evaluation.probing import Record, record_rows
from bt_tf.evaluation.tasks import Units

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows():
    """bt and de on two tasks, 2 fractions, 2 seeds, plus floors.

    Hand case (next_item hr@10, fraction 0.1): de seeds 0.38, 0.42 -> mean 0.40;
    bt 0.43, 0.45 -> mean 0.44; relative improvement (0.44 - 0.40)/0.40 = +10.0%.
    std(bt) with ddof=1 = |0.45 - 0.43| / sqrt(2) = 0.01414.
    """
    rows = []
    vals = {
        ("next_item", "hr@10", 0.1): {"de": (0.38, 0.42), "bt": (0.43, 0.45), "bt+de": (0.5, 0.5)},
        ("next_item", "hr@10", 1.0): {"de": (0.50, 0.50), "bt": (0.55, 0.55), "bt+de": (0.6, 0.6)},
        ("favorite_genre", "accuracy", 0.1): {"de": (0.30, 0.30), "bt": (0.27, 0.27)},
        ("favorite_genre", "accuracy", 1.0): {"de": (0.5, 0.5), "bt": (0.5, 0.5)},
        ("liked_item", "auc", 1.0): {"de": (0.7, 0.7), "bt": (float("nan"), 0.8)},
    }
    for (task, metric, fraction), per_model in vals.items():
        for model, seeds in per_model.items():
            for seed, v in enumerate(seeds):
                rows.append(dict(model=model, task=task, metric=metric, fraction=fraction,
                                 seed=seed, value=v, batch_size=64))  # fmt: skip
    for fraction in (0.1, 1.0):
        for seed in (0, 1):
            rows.append(dict(model="popularity", task="next_item", metric="hr@10",
                             fraction=fraction, seed=seed, value=0.2))  # fmt: skip
            rows.append(dict(model="majority", task="favorite_genre", metric="accuracy",
                             fraction=fraction, seed=seed, value=0.25))  # fmt: skip
    return rows


def test_aggregate_and_relative_improvement_hand_case():
    aggs = {(a["task"], a["model"], a["fraction"]): a for a in report.aggregate(_rows())}
    bt = aggs[("next_item", "bt", 0.1)]
    assert bt["mean"] == pytest.approx(0.44) and bt["n_seeds"] == 2
    assert bt["std"] == pytest.approx(0.02 / math.sqrt(2))
    assert report.relative_improvement(0.44, 0.40) == pytest.approx(10.0)
    assert report.relative_improvement(0.27, 0.30) == pytest.approx(-10.0)
    assert math.isnan(report.relative_improvement(0.5, 0.0))
    # NaN seed values are left out: one finite value remains, std 0.
    auc = aggs[("liked_item", "bt", 1.0)]
    assert auc["mean"] == pytest.approx(0.8) and auc["std"] == 0.0 and auc["n_seeds"] == 1


def test_batch_size_ablation_plot(tmp_path):
    rows = []
    for bs, (bt, de) in {32: (0.30, 0.20), 64: (0.32, 0.25), 256: (0.33, 0.30)}.items():
        for seed in (0, 1):
            for model, v in (("bt", bt), ("de", de)):
                rows.append(dict(model=model, task="next_item", metric="hr@10", fraction=1.0,
                                 seed=seed, value=v + 0.01 * seed, batch_size=bs))  # fmt: skip
    out = report.plot_batch_size_ablation(
        rows, str(tmp_path / "bs.png"), task="next_item", metric="hr@10", fraction=1.0
    )
    with open(out, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert matplotlib.image.imread(out).shape[0] > 100
    with pytest.raises(ValueError, match="batch_size"):
        report.plot_batch_size_ablation(rows, str(tmp_path / "x.png"), task="nope", metric="m")


def test_empty_rows_and_missing_fields_raise(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        report.write_report([], {}, str(tmp_path))
    with pytest.raises(ValueError, match="lacks"):
        report.aggregate([{"model": "bt", "task": "t", "metric": "m", "value": 1.0}])


def _records(n=300):
    """Per-user units of bt, de and two floors on favorite genre and liked item.

    favorite genre: bt right for 60% of users, de for 50%, bag_of_items for 70%
    (bt is clearly below it), majority for 48% (bt is above it); at 1% labels
    bt is right for 49% and majority for 48%: a lower mean than bag... and a
    difference within noise. liked item: bt and de equally noisy scores.
    """
    rng = np.random.default_rng(0)
    users = np.arange(n)
    y = rng.integers(3, 6, n)
    fold = users % 5
    right = {"bt": 0.6, "de": 0.5, "bag_of_items": 0.7, "majority": 0.48}
    pu = np.repeat(users, 2)
    lab = rng.integers(0, 2, pu.size)
    out = []
    for f in (0.01, 0.1):
        for model, p in right.items():
            p = 0.49 if (model == "bt" and f == 0.01) else p
            for s in (0, 1):
                pred = np.where(rng.random(n) < p, y, 9)
                fits = tuple({"fold": k, "n_labelled": 5, "prior_selected": k < 2 and model == "de",
                              "candidate": "C=1"} for k in range(5))  # fmt: skip
                out.append(Record(model, 0, "favorite_genre", f, s,
                                  Units(users, y, pred=pred, fold=fold), fits))  # fmt: skip
                out.append(Record(model, 0, "liked_item", f, s,
                                  Units(pu, lab, item=pu % 5, score=lab + rng.normal(size=pu.size),
                                        fold=fold[pu]), fits))  # fmt: skip
    return out


def test_report_opens_with_the_verdict_and_every_cell_carries_its_interval(tmp_path):
    records = _records()
    rows = record_rows(records, 10)
    analysis = scores.analyse(records, 10, n_resamples=300)
    paths = report.write_report(rows, analysis, str(tmp_path), protocol="THE PROTOCOL.",
                                population="300 users")  # fmt: skip
    md = open(paths["markdown"]).read()
    assert "THE PROTOCOL." in md and "300 users" in md
    # The verdict table comes before any task's table.
    assert md.index("## The claim: bt ≥ 1.08 × de") < md.index("## favorite_genre")
    claim = md.split("## The claim")[1].split("## favorite_genre")[0]
    assert "| favorite_genre | balanced_accuracy |" in claim and "**Verdict:" in claim
    assert "| liked_item | auc |" in claim
    fav = md.split("## favorite_genre")[1].split("## liked_item")[0]
    cell = {(c["model"], c["fraction"], c["metric"]): c for c in analysis["cells"]
            if c["task"] == "favorite_genre"}  # fmt: skip
    bt = cell[("bt", 0.1, "accuracy")]
    assert f"{bt['value']:.3f} [{bt['ci95'][0]:.3f}, {bt['ci95'][1]:.3f}]" in fav
    # Ratio cells "+x % [lo, hi]".
    comp = next(c for c in analysis["comparisons"] if c["task"] == "favorite_genre"
                and c["metric"] == "accuracy" and c["fraction"] == 0.1 and c["model"] == "bt"
                and c["reference"] == "de")  # fmt: skip
    lo, hi = (round(100 * (v - 1)) for v in comp["ratio_ci"])
    assert "| bt vs de | " in fav and f"% [{lo:+d}, {hi:+d}]" in fav
    # ▼ only where the difference's interval excludes 0: bt below bag_of_items at 10%
    # (0.6 vs 0.7 of 300 users), not at 1% below majority (0.49 vs 0.48: noise).
    acc = fav.split("### accuracy")[1].split("### balanced_accuracy")[0]
    bt_row = next(line for line in acc.splitlines() if line.startswith("| bt |"))
    assert bt_row.count("▼") == 2  # 1% and 10%, both below bag_of_items
    flagged = {(b["fraction"], b["metric"]): b["floors"] for b in
               json.load(open(paths["json"]))["below_floor"] if b["model"] == "bt"}  # fmt: skip
    assert "bag_of_items" in flagged[(0.1, "accuracy")]
    assert "majority" not in flagged.get((0.01, "accuracy"), {})
    # How often selection kept the prior: de 2 of 5 folds.
    assert "Selection kept the prior predictor" in fav and "| de | 0.40 | 0.40 |" in fav
    res = json.load(open(paths["json"]))
    assert set(res["claim"]) >= {"threshold", "fractions", "tasks", "verdict", "model",
                                 "baseline", "selection", "seeds", "missing"}  # fmt: skip
    assert all(set(t) == {"task", "metric", "ratio", "ci95", "verdict", "fractions", "n_users",
                          "per_seed_ratios"} for t in res["claim"]["tasks"])  # fmt: skip
    # No next-item records: the claim says so and cannot decide.
    assert res["claim"]["missing"] == ["next_item"] and res["claim"]["verdict"] == "inconclusive"
    assert "| next_item | missing |" in claim and "**Verdict: inconclusive.** (missing" in claim
    fav_claim = next(t for t in res["claim"]["tasks"] if t["task"] == "favorite_genre")
    r = fav_claim["ratio"]  # one pretraining seed each: the per-seed ratios are the ratio
    assert f"| bt {r:.2f}; de {r:.2f} |" in claim
    assert res["claims"] == [res["claim"]] and res["provenance"] is None
    assert len(res["rows"]) == len(rows) and res["bootstrap"]["resamples"] == 300
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert np.std(matplotlib.image.imread(paths["plot"])) > 0  # not a blank canvas


def test_report_shows_both_claims_their_selection_and_the_defaults_chosen_on_labels(tmp_path):
    records = _records()
    chosen = np.zeros(300, bool)
    chosen[:200] = True
    users = (("test", np.arange(250, 300)), ("all", None))
    analysis = scores.analyse(records, 10, n_resamples=200, chosen=chosen, claim_users=users)
    provenance = [dict(chose="the DE's recipe", settings={"temperature": 0.1}, models=["de"],
                       dataset="ml-100k", splits=["train", "eval"], split_percents=[80, 10],
                       labels=["next_item"], how="tuning.compare", runs=["de"],
                       used={"temperature": 0.1})]  # fmt: skip
    paths = report.write_report(record_rows(records, 10), analysis, str(tmp_path),
                                provenance=provenance)  # fmt: skip
    md = open(paths["markdown"]).read()
    claim = md.split("## The claim")[1].split("## favorite_genre")[0]
    assert "| test users only (50) | out-of-sample | inconclusive |" in claim
    assert "| all scored users (300) | in-sample (67% chose defaults) | inconclusive |" in claim
    assert claim.index("### Scored on test users only") < claim.index("### Scored on all scored")
    assert "- the DE's recipe: the train + eval users of ml-100k, labels of next_item" in claim
    res = json.load(open(paths["json"]))
    assert [c["users"] for c in res["claims"]] == ["test", "all"] and res["claim"][
        "users"
    ] == "test"
    assert res["provenance"] == provenance


def test_value_cell_prints_the_interval_and_says_what_is_missing():
    assert report.value_cell(0.0945, [0.0802, 0.10921], ".4f") == "0.0945 [0.0802, 0.1092]"
    assert report.value_cell(0.5, [0.4, float("nan")]) == "0.500 [0.400, n/a]"
    assert report.value_cell(float("nan"), [0.1, 0.2]) == report.value_cell(None, []) == "n/a"
