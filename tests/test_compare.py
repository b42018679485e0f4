"""`tuning.compare`: recipes against the base, trained alike, evaluated together with intervals."""

import json

import pytest

from bt_tf import runs
from bt_tf.errors import UserError
from tests.tiny import TINY_FLAGS
from tuning import compare


def test_variants_parse_and_bad_ones_are_refused():
    got = compare.parse_variants("b128:batch_size=128; t:temperature=0.05,learning_rate=3e-4;"
                                 "q:no-de_logq")  # fmt: skip
    assert got == [
        ("b128", {"batch_size": "128"}),
        ("t", {"temperature": "0.05", "learning_rate": "3e-4"}),
        ("q", {"no-de_logq": None}),
    ]
    for bad in ("nocolon", "base:lambd=1", "a:x=1;a:y=2", ":lambd=1"):
        with pytest.raises(ValueError):
            compare.parse_variants(bad)


def test_variant_configs_share_the_budget_and_seed_every_recipe(tmp_path):
    argv = [*TINY_FLAGS, "--steps_per_epoch=0", "--min_steps_per_epoch=2", "--model=de",
            f"--data_output_dir={tmp_path / 'data'}"]  # fmt: skip
    variants = compare.parse_variants("b64:batch_size=64;t:temperature=0.3")
    configs = compare.variant_configs(argv, variants, str(tmp_path / "out"), 2)
    assert [(n, c.seed) for n, c in configs] == [
        ("base", 0), ("base", 1), ("b64", 0), ("b64", 1), ("t", 0), ("t", 1)
    ]  # fmt: skip
    by = {(n, c.seed): c for n, c in configs}
    assert by[("t", 1)].temperature == 0.3 and by[("t", 1)].run_dir.endswith("t/seed1")
    with pytest.raises(UserError, match=r"lambda_typo.*not training flags"):
        compare.variant_configs(argv, compare.parse_variants("x:lambda_typo=1"), str(tmp_path), 1)
    with pytest.raises(UserError, match=r"\['loo'\] change --protocol"):
        compare.variant_configs(argv, compare.parse_variants("loo:protocol=leave_one_out"),
                                str(tmp_path), 1)  # fmt: skip
    base, big = by[("base", 0)], by[("b64", 0)]
    # Equal users per epoch: the base's one pass of 32-user steps, in 64-user steps.
    users = base.steps_for(base.num_train_users({"train": 313, "eval": 46, "test": 41}))
    assert big.batch_size == 64 and big.steps_per_epoch * 64 == pytest.approx(users * 32, abs=32)


def test_compare_end_to_end_on_tiny_runs(tmp_path, tiny_data):
    out = tmp_path / "out"
    result = compare.main([
        *TINY_FLAGS, "--epochs=1", "--no-probe", "--no-export",
        f"--data_output_dir={tiny_data}", f"--output_dir={out}",
        "--variants=lam:lambd=0.05", "--pretrain_seeds=1", "--tasks=favorite_genre",
        "--label_fractions=0.5", "--seeds=1", "--bootstrap_resamples=200",
    ])  # fmt: skip
    cell = result["variants"]["lam"]["favorite_genre"]
    lo, hi = cell["ci95"]
    assert lo <= cell["ratio"] <= hi and cell["position"] in ("ahead", "behind", "within noise")
    assert result["users"] == ["train", "eval"]
    md = (out / "compare.md").read_text()
    assert "| lam | lambd=0.05 |" in md
    assert json.loads((out / "compare.json").read_text())["variants"] == result["variants"]
    # The test split is never scored.
    assert not list((out / "report").glob("scores.parquet"))  # no report: records only


def test_leave_one_out_recipes_are_judged_on_the_validation_item(tmp_path, tiny_data):
    out = tmp_path / "loo"
    result = compare.main([
        *TINY_FLAGS, "--epochs=1", "--no-probe", "--no-export", "--model=de",
        "--protocol=leave_one_out", f"--data_output_dir={tiny_data}", f"--output_dir={out}",
        "--variants=d8:dim=8", "--pretrain_seeds=1",
    ])  # fmt: skip
    assert result["stage"] == "val" and result["figures"][0] == "full ndcg@10"
    # The base's figure is what training itself judged its epoch by: the validation item.
    best = runs.read_metrics(str(out / "base" / "seed0"))
    assert best["monitor"] == "val_ndcg@10"
    assert result["models"]["base"]["full ndcg@10"]["mean"] == pytest.approx(best["best_value"])
    assert set(result["variants"]) == {"d8"} and "popularity" in result["models"]
    for figure in result["figures"]:
        cell = result["variants"]["d8"][figure]
        lo, hi = cell["ci95"]
        assert lo <= cell["ratio"] <= hi and len(cell["per_seed_ratios"]) == 1, figure
    report = json.loads((out / "report" / "recommender.json").read_text())
    assert {r["stage"] for r in report["runs"]} == {"val"}
    # ...and no run scored its test item (training's own closing figures are off).
    assert not list(out.glob("*/seed0/recommender.json"))
    assert "recommender" not in best and not runs.read_config(str(out / "d8" / "seed0"))[
        "score_test"]
    md = (out / "compare.md").read_text()
    assert "validation item" in md and "| d8 | dim=8 | " in md and "| base | | 0." in md
