"""Report: aggregation, relative improvement, files and plots end to end."""

import json
import math
import os

import matplotlib.image
import numpy as np
import pytest

from bt_tf.evaluation import report

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


def test_write_report_end_to_end(tmp_path):
    rows = _rows()
    paths = report.write_report(rows, str(tmp_path), baseline="de", compare=("bt", "bt+de"))
    for p in paths.values():
        assert os.path.getsize(p) > 0

    md = open(paths["markdown"]).read()
    assert "## next_item" in md and "## favorite_genre" in md and "## liked_item" in md
    assert "| model | 10% | 100% |" in md
    assert "| bt | 0.440 ± 0.014 | 0.550 ± 0.000 |" in md
    # (0.44-0.40)/0.40 = +10.0%, (0.55-0.50)/0.50 = +10.0%; bt+de: +25.0%, +20.0%;
    # favorite genre (0.27-0.30)/0.30 = -10.0%, then 0.0%.
    assert "| bt | +10.0% | +10.0% |" in md
    assert "| bt+de | +25.0% | +20.0% |" in md
    assert "| bt | -10.0% | +0.0% |" in md
    # Floors are listed after the learned models.
    nxt = md.split("## next_item")[1].split("## favorite_genre")[0]
    assert nxt.index("| bt |") < nxt.index("| de |") < nxt.index("| popularity |")

    res = json.load(open(paths["json"]))  # strict JSON: NaN became null
    assert len(res["rows"]) == len(rows)
    for a in res["aggregates"]:
        assert 0.0 <= a["mean"] <= 1.0 and a["std"] >= 0.0
    imp = {
        (i["task"], i["model"], i["fraction"]): i["relative_improvement_pct"]
        for i in res["relative_improvement"]
    }
    assert imp[("next_item", "bt", 0.1)] == pytest.approx(10.0)
    assert imp[("favorite_genre", "bt", 0.1)] == pytest.approx(-10.0)
    assert any(r["value"] is None for r in res["rows"])  # the NaN AUC seed

    with open(paths["plot"], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = matplotlib.image.imread(paths["plot"])
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert np.std(img) > 0  # not a blank canvas


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
        report.write_report([], str(tmp_path))
    with pytest.raises(ValueError, match="lacks"):
        report.aggregate([{"model": "bt", "task": "t", "metric": "m", "value": 1.0}])


def _floor_rows():
    """Hand-made results, 2 seeds with equal values (std 0), floors beside each task.

    favorite_genre accuracy:   1%     100%
        majority             0.50    0.50
        bag_of_items         0.45    0.60
        untrained            0.42    0.44
        bt                   0.48 ▼  0.65      (< majority at 1%)
        bt+de                0.40 ▼  0.70      (< majority, bag_of_items, untrained at 1%)
        de                   0.52    0.55 ▼    (< bag_of_items at 100%)
    next_item hr@10 at 100%: popularity 0.04, bt 0.03 ▼, de 0.05.
    liked_item auc at 100%: untrained(bt) 0.60 (a per-architecture floor), bt 0.55 ▼,
    bt@b32 (an ablation run: learned, not a floor) 0.58 ▼, majority 0.50.
    """
    table = {
        ("favorite_genre", "accuracy", 0.01): dict(
            majority=0.5, bag_of_items=0.45, untrained=0.42, bt=0.48, de=0.52, **{"bt+de": 0.4}
        ),
        ("favorite_genre", "accuracy", 1.0): dict(
            majority=0.5, bag_of_items=0.6, untrained=0.44, bt=0.65, de=0.55, **{"bt+de": 0.7}
        ),
        ("next_item", "hr@10", 1.0): dict(popularity=0.04, bt=0.03, de=0.05),
        ("liked_item", "auc", 1.0): {
            "untrained(bt)": 0.6,
            "bt": 0.55,
            "bt@b32": 0.58,
            "majority": 0.5,
        },
    }
    return [
        dict(model=m, task=t, metric=k, fraction=f, seed=s, value=v)
        for (t, k, f), models in table.items()
        for m, v in models.items()
        for s in (0, 1)
    ]


def test_floors_beside_every_table_and_learned_models_below_a_floor_are_flagged(tmp_path):
    assert report.is_floor("majority") and report.is_floor("untrained(bt)")
    assert not report.is_floor("bt") and not report.is_floor("bt@b32")
    paths = report.write_report(_floor_rows(), str(tmp_path), protocol="THE RULE.")
    md = open(paths["markdown"]).read()
    assert "THE RULE." in md  # the selection rule is stated
    fav = md.split("## favorite_genre")[1].split("## next_item")[0]
    # Floors are rows of the same table, after the learned models.
    order = ["| bt |", "| bt+de |", "| de |", "| untrained |", "| bag_of_items |", "| majority |"]
    assert [fav.index(r) for r in order] == sorted(fav.index(r) for r in order)
    assert "| bt | 0.480 ± 0.000 ▼ | 0.650 ± 0.000 |" in fav
    assert "| bt+de | 0.400 ± 0.000 ▼ | 0.700 ± 0.000 |" in fav
    assert "| de | 0.520 ± 0.000 | 0.550 ± 0.000 ▼ |" in fav
    # Floors are never flagged (majority 0.5 < bag_of_items 0.6 at 100%).
    assert "| majority | 0.500 ± 0.000 | 0.500 ± 0.000 |" in fav
    # The note under the table names the floor(s), highest first.
    assert (
        "▼ below a floor: `bt` at 1% (0.4800) < `majority` 0.5000; "
        "`bt+de` at 1% (0.4000) < `majority` 0.5000, `bag_of_items` 0.4500, "
        "`untrained` 0.4200; `de` at 100% (0.5500) < `bag_of_items` 0.6000." in fav
    )
    nxt = md.split("## next_item")[1].split("## liked_item")[0]
    assert "| bt | 0.030 ± 0.000 ▼ |" in nxt and "| de | 0.050 ± 0.000 |" in nxt
    assert "`bt` at 100% (0.0300) < `popularity` 0.0400." in nxt
    liked = md.split("## liked_item")[1]
    assert liked.index("| bt@b32 |") < liked.index("| untrained(bt) |")
    assert "| bt@b32 | 0.580 ± 0.000 ▼ |" in liked and "| untrained(bt) | 0.600 ± 0.000 |" in liked
    # The same cells in results.json.
    res = json.load(open(paths["json"]))
    flagged = {(b["task"], b["model"], b["fraction"]): b["floors"] for b in res["below_floor"]}
    assert flagged == {
        ("favorite_genre", "bt", 0.01): {"majority": 0.5},
        ("favorite_genre", "bt+de", 0.01): {"majority": 0.5, "bag_of_items": 0.45,
                                            "untrained": 0.42},
        ("favorite_genre", "de", 1.0): {"bag_of_items": 0.6},
        ("next_item", "bt", 1.0): {"popularity": 0.04},
        ("liked_item", "bt", 1.0): {"untrained(bt)": 0.6},
        ("liked_item", "bt@b32", 1.0): {"untrained(bt)": 0.6},
    }  # fmt: skip
    assert res["protocol"] == "THE RULE."
