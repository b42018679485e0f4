"""`bt_tf.reproduce`: equal-budget runs, evaluation, report, batch-size ablation, resume."""

import dataclasses
import json
import os

import pytest

from bt_tf import reproduce, runs
from bt_tf.evaluation import reproduction
from bt_tf.training.config import TrainConfig
from tests.tiny import TINY_FLAGS as TINY

TINY_FLAGS = [*TINY, "--epochs=1", "--no-probe", "--no-export"]


def test_own_flags_are_split_from_training_flags():
    args, base = reproduce.parse(
        [
            "--seeds=2",
            "--seed=7",
            "--dim=8",
            "--batch_sizes=16,32",
            "--cache_dir=/c",
            "--label_fractions=0.1,1.0",
            "--epochs=3",
        ]
    )
    assert args.seeds == 2 and base.seed == 7  # no prefix matching between the two
    assert base.encoder.dim == 8 and base.epochs == 3 and base.data.cache_dir == "/c"
    assert args.batch_sizes == [16, 32] and args.label_fractions == [0.1, 1.0]
    assert args.cache is True  # --cache_dir went to preprocessing, not to --cache
    assert args.output_dir == os.path.join("runs", "reproduce_synthetic")
    args, base = reproduce.parse(["--output_dir=/x", "--dataset=ml-1m"])
    assert args.output_dir == "/x" and base.run_dir != "/x"
    with pytest.raises(ValueError, match="--models"):
        reproduce.parse(["--model=de"])


def test_ablation_by_default_and_how_to_turn_it_off():
    args, _ = reproduce.parse([])
    assert args.batch_sizes == [32, 64, 128, 256, 512] and args.skip_too_big
    for off in (["--no-ablation"], ["--batch_sizes="]):
        assert reproduce.parse(off)[0].batch_sizes == [], off
    args, _ = reproduce.parse(["--batch_sizes=16,32"])
    assert args.batch_sizes == [16, 32] and not args.skip_too_big


def test_each_model_gets_its_own_hparams_on_top_of_the_shared_flags(tmp_path):
    bt, de = tmp_path / "bt.json", tmp_path / "de.json"
    bt.write_text(json.dumps({"lambd": 0.02, "epochs": 40}))  # a Hyperband file's epochs
    de.write_text(json.dumps({"temperature": 0.05, "learning_rate": 0.003, "batch_size": 16}))
    shared = ["--dim=8", "--learning_rate=0.002", "--batch_size=32", "--max_epochs=3"]
    args, base = reproduce.parse([*shared, f"--hparams_bt={bt}", f"--hparams_de={de}"])
    assert set(args.model_configs) == {"bt", "de"}
    configs = reproduction.main_configs(
        base, "/out", ["bt", "de", "bt+de"], own=args.model_configs, num_train_users=330
    )
    bt_c, de_c, joint = configs["bt"], configs["de"], configs["bt+de"]
    assert (bt_c.lambd, bt_c.learning_rate, bt_c.encoder.dim) == (0.02, 0.002, 8)
    assert (de_c.temperature, de_c.learning_rate, de_c.encoder.dim) == (0.05, 0.003, 8)
    assert joint == dataclasses.replace(base, model="bt+de", run_dir="/out/bt+de")
    # The budget is shared: the file's epochs are ignored; a batch of 16 trains twice
    # the steps (max(16, 330 // 32) = 16 steps of 32 users -> 32 steps of 16).
    assert {c.epochs for c in configs.values()} == {3}
    assert de_c.batch_size == 16 and de_c.steps_per_epoch == 32
    assert bt_c.steps_per_epoch == joint.steps_per_epoch == 0
    assert reproduction.differing_settings(list(configs.values())) == [
        "lambd",
        "temperature",
        "learning_rate",
    ]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"model": "bt"}))
    with pytest.raises(ValueError, match="sets model='bt', but it is --hparams_de"):
        reproduce.parse([f"--hparams_de={wrong}"])
    other = tmp_path / "x.json"
    other.write_text(json.dumps({"max_len": 12}))
    args, base = reproduce.parse([f"--hparams_de={other}"])
    with pytest.raises(ValueError, match="data settings"):
        reproduction.main_configs(base, "/o", ["de"], own=args.model_configs, num_train_users=330)


def test_each_model_gets_its_own_dataset_defaults_unless_a_flag_is_given(own_recipes, tmp_path):
    args, base = reproduce.parse(["--dataset=ml-100k"])
    assert (base.batch_size, base.temperature) == (own_recipes["batch_size"], 0.1)  # shared
    assert set(args.model_configs) == {"de", "bt+de"}  # bt has no recipe of its own
    configs = reproduction.main_configs(
        base, "/out", ["bt", "de", "bt+de"], own=args.model_configs, num_train_users=747
    )
    de = configs["de"]
    assert (de.batch_size, de.temperature, de.learning_rate, de.encoder.pooling) == (
        16,
        0.05,
        0.003,
        "last",
    )
    assert configs["bt+de"].bt_weight == 0.5 and configs["bt+de"].batch_size == 64
    assert configs["bt"] == dataclasses.replace(base, run_dir="/out/bt")
    # The budget stays shared: 16 (min) steps of 64 users -> 64 steps of 16.
    assert de.steps_per_epoch == 64 and {c.epochs for c in configs.values()} == {base.epochs}
    # A flag on the command line applies to every model; a model's file goes on top.
    hparams = tmp_path / "de.json"
    hparams.write_text(json.dumps({"learning_rate": 0.01}))
    args, base = reproduce.parse(
        ["--dataset=ml-100k", "--temperature=0.3", f"--hparams_de={hparams}"]
    )
    de = args.model_configs["de"]
    assert (de.temperature, de.learning_rate, de.batch_size) == (0.3, 0.01, 16)
    assert base.temperature == args.model_configs["bt+de"].temperature == 0.3
    text = " ".join(reproduce.build_parser(["--dataset=ml-100k"]).format_help().split())
    assert "BT statistics over all of it) (default: 64)" in text  # --help: the shared ones


def test_ablation_runs_see_the_same_number_of_users():
    base = TrainConfig(batch_size=32, steps_per_epoch=0, epochs=2, min_steps_per_epoch=1)
    main = reproduction.main_configs(base, "/out", ["bt", "de", "bt+de"])
    assert {c.run_dir for c in main.values()} == {"/out/bt", "/out/de", "/out/bt+de"}
    assert (
        len({(c.batch_size, c.epochs, c.steps_per_epoch, c.encoder.dim) for c in main.values()})
        == 1
    )
    runs = reproduction.ablation_configs(
        base,
        "/out",
        batch_sizes=[16, 32, 64, 100],
        models=["bt", "de"],
        num_train_users=313,
        main=main,
    )
    # 313 // 32 = 9 steps of 32 = 288 users per epoch at the base batch size.
    steps = {(m, b): c.steps_per_epoch for m, b, c in runs}
    assert steps[("bt", 16)] == 18 and steps[("bt", 64)] == 5 and steps[("bt", 100)] == 3
    for m, b, c in runs:
        assert abs(b * (c.steps_per_epoch or 9) - 288) <= b / 2 and c.epochs == 2
        assert c.model == m and c.batch_size == b
    reused = [c for m, b, c in runs if b == 32]
    assert reused == [main["bt"], main["de"]]  # trained once, not twice
    assert runs[0][2].run_dir == "/out/batch_size/bt_b16"
    with pytest.raises(ValueError, match="exceed the 313 train users"):
        reproduction.ablation_configs(
            base, "/o", batch_sizes=[512], models=["bt"], num_train_users=313
        )
    kept = reproduction.ablation_configs(
        base, "/o", batch_sizes=[32, 512], models=["bt"], num_train_users=313, skip_too_big=True
    )
    assert [b for _, b, _ in kept] == [32]


def test_pretrain_seeds_expand_every_model_and_the_ablation_keeps_the_first():
    base = TrainConfig(batch_size=32, seed=5, lambd=0.01)
    main = reproduction.main_configs(base, "/out", ["bt", "de"])
    seeded = reproduction.seed_configs(main, 3)
    assert [(m, c.seed, c.run_dir) for m, c in seeded] == [
        ("bt", 5, "/out/bt"),
        ("bt", 6, "/out/bt_seed1"),
        ("bt", 7, "/out/bt_seed2"),
        ("de", 5, "/out/de"),
        ("de", 6, "/out/de_seed1"),
        ("de", 7, "/out/de_seed2"),
    ]
    assert seeded[0][1] is main["bt"]  # seed 0 is the one-seed run: its dir is reused
    for m, c in seeded:
        assert dataclasses.replace(c, seed=5, run_dir=main[m].run_dir) == main[m]
    assert reproduction.seed_configs(main, 1) == list(main.items())
    with pytest.raises(ValueError, match="--pretrain_seeds=0"):
        reproduction.seed_configs(main, 0)
    assert reproduction.DEFAULT_PRETRAIN_SEEDS == 3
    ablation = reproduction.ablation_configs(
        base, "/out", batch_sizes=[16, 32], models=["bt"], num_train_users=313, main=main
    )
    assert {c.seed for _, _, c in ablation} == {5} and ablation[1][2] is main["bt"]


def test_pretrain_seeds_flag():
    assert reproduce.parse([])[0].pretrain_seeds == reproduction.DEFAULT_PRETRAIN_SEEDS
    assert reproduce.parse(["--pretrain_seeds=2"])[0].pretrain_seeds == 2
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="argument --pretrain_seeds"):
            reproduce.parse([f"--pretrain_seeds={bad}"])
    text = " ".join(reproduce.build_parser([]).format_help().split())
    assert "--pretrain_seeds PRETRAIN_SEEDS pretraining seeds per model" in text
    assert "<model>_seed<k> (default: 3)" in text


def test_ablation_on_a_small_dataset_keeps_the_floor_of_steps_and_early_stopping():
    # 750 train users (ML-100K): 2 batches of 256 per pass, so an epoch is 16 steps.
    base = TrainConfig(batch_size=256, min_steps_per_epoch=16, epochs=20)
    main = reproduction.main_configs(base, "/out", ["bt", "de"])
    runs = reproduction.ablation_configs(
        base, "/out", batch_sizes=[32, 256, 512], models=["de"], num_train_users=750, main=main
    )
    steps = {b: c.steps_per_epoch for _, b, c in runs}
    assert steps == {32: 128, 256: 0, 512: 8}  # 16 × 256 = 4096 users per epoch for all
    for _, _, c in runs:
        assert c.epochs == 20 and c.early_stopping_patience == base.early_stopping_patience
    assert runs[1][2] is main["de"]


def _mtimes(paths):
    return {p: os.stat(p).st_mtime_ns for p in paths}


def _argv(tmp_path, data, *extra):
    """``data``: the session's tiny data (`tiny_data`, conftest.py), reused, not rebuilt."""
    return [
        *TINY_FLAGS,
        f"--data_output_dir={data}",
        f"--output_dir={tmp_path / 'repro'}",
        "--tasks=favorite_genre",
        "--label_fractions=0.5",
        "--seeds=2",
        "--bootstrap_resamples=200",
        "--pretrain_seeds=1",  # (a later --pretrain_seeds in extra wins)
        *extra,
    ]


def test_equal_budget_report_and_rerun_reuses_runs_and_probes(tmp_path, tiny_data):
    out = tmp_path / "repro"
    de_hparams = tmp_path / "de.json"
    de_hparams.write_text(json.dumps({"temperature": 0.2}))
    argv = _argv(
        tmp_path, tiny_data, "--models=bt,de", "--no-ablation", f"--hparams_de={de_hparams}"
    )
    first = reproduce.main(argv)
    md = (out / "report" / "report.md").read_text()
    for name in ("bt", "de", "untrained(bt)", "untrained(de)", "bag_of_items", "majority"):
        assert f"| {name} |" in md, name
    assert "| bt vs de |" in md and "## Training runs" in md and "## The claim" in md
    assert "## Batch-size ablation" not in md
    metrics = {m: json.loads((out / m / "metrics.json").read_text()) for m in ("bt", "de")}
    # Equal budget: the same batch size, cap and steps for both models.
    assert {(m["epochs_completed"], m["steps_per_epoch"]) for m in metrics.values()} == {(1, 4)}
    assert json.loads((out / "de" / "config.json").read_text())["temperature"] == 0.2
    # The run table: budget as trained, and the setting in which the models differ.
    row = [line for line in md.splitlines() if line.startswith("| de | `")][0]
    assert "| 32 | 4 | 1 | 1 | 1 | max_epochs | 4 | 128 |" in row and "temperature=0.2" in row
    assert "best epoch" in md and "train seconds" in md and "judged by" in md
    de_metrics = metrics["de"]
    assert f"| {de_metrics['monitor'] or 'n/a'} |" in row
    for r in first["rows"]:
        assert 0.0 <= r["value"] <= 1.0, r

    # Rerun: no retraining (metrics.json untouched), no re-probing (cache untouched).
    watched = [str(out / m / "metrics.json") for m in ("bt", "de")]
    watched += [str(p) for p in (out / "report" / "cache").rglob("*") if p.is_file()]
    before = _mtimes(watched)
    second = reproduce.main(argv)
    assert _mtimes(watched) == before
    assert second["rows"] == first["rows"]


# ~40 s on 2 quiet cores (4 runs, each evaluated twice). In the default suite: the seeds'
# configs (test_pretrain_seeds_expand_...), one run per model end to end (test_equal_budget_...).
@pytest.mark.slow
def test_pretrain_seeds_train_every_model_twice_and_pool_in_the_report(tmp_path, tiny_data):
    out = tmp_path / "repro"
    argv = _argv(
        tmp_path, tiny_data, "--models=bt,de", "--no-ablation", "--pretrain_seeds=2", "--seeds=1"
    )
    first = reproduce.main(argv)
    dirs = {m: [out / m, out / f"{m}_seed1"] for m in ("bt", "de")}
    for m, (one, two) in dirs.items():
        configs = [json.loads((d / "config.json").read_text()) for d in (one, two)]
        assert [c["seed"] for c in configs] == [0, 1] and configs[0]["model"] == m
        weights = [runs.latest_checkpoint(str(d)) for d in (one, two)]
        assert (one / "metrics.json").exists() and (two / "metrics.json").exists()
        assert runs.file_sha256(weights[0] + ".index") != runs.file_sha256(weights[1] + ".index")
    rows = json.loads((out / "report" / "results.json").read_text())["rows"]
    seeds = {(r["model"], r.get("pretrain_seed"), r.get("run_dir")) for r in rows}
    for m, (one, two) in dirs.items():
        assert {(s, d) for n, s, d in seeds if n == m} == {(0, str(one)), (1, str(two))}
    # One untrained floor per architecture, not per seed (its seed: the first run's).
    assert {r["pretrain_seed"] for r in rows if r["model"] == "untrained(bt)"} == {0}
    # The cells pool both pretraining seeds (1 label seed each).
    cells = json.loads((out / "report" / "results.json").read_text())["cells"]
    assert {c["n_replicates"] for c in cells if c["model"] in ("bt", "de")} == {2}
    md = (out / "report" / "report.md").read_text()
    assert f"`{out / 'bt_seed1'}`" in md and f"`{out / 'de_seed1'}`" in md  # the run table
    # Each seed has its own caches: a rerun recomputes nothing and rewrites no cache.
    cache = out / "report" / "cache"
    assert (cache / "embeddings" / "bt%40seed1.npz").exists()
    assert (cache / "units" / "bt%40seed1").is_dir() and (cache / "units" / "bt").is_dir()
    watched = [str(p) for p in cache.rglob("*") if p.is_file()]
    before = _mtimes(watched)
    assert reproduce.main(argv)["rows"] == first["rows"]
    assert _mtimes(watched) == before


@pytest.mark.slow
def test_three_models_and_batch_size_ablation_then_rerun(tmp_path, tiny_data):
    out = tmp_path / "repro"
    argv = _argv(tmp_path, tiny_data, "--batch_sizes=16,32", "--ablation_models=bt")
    first = reproduce.main(argv)
    report_dir = out / "report"
    md = (report_dir / "report.md").read_text()
    for name in ("bt", "de", "bt+de", "untrained(bt)", "untrained(de)", "bag_of_items", "majority"):
        assert f"| {name} |" in md, name
    assert "| bt vs de |" in md
    assert "## Training runs" in md and "## Batch-size ablation" in md
    assert "| model | b=16 | b=32 |" in md
    # 16 × 8 × 1 users: batch, steps/epoch, cap, epochs, best epoch, stop, steps, users
    assert "### Ablation runs" in md and "| 16 | 8 | 1 | 1 | 1 | max_epochs | 8 | 128 |" in md

    # Equal budget: same batch, epochs and steps for the three models.
    metrics = {m: json.loads((out / m / "metrics.json").read_text()) for m in ("bt", "de", "bt+de")}
    assert {(m["epochs_completed"], m["steps_per_epoch"]) for m in metrics.values()} == {(1, 4)}
    b16 = json.loads((out / "batch_size" / "bt_b16" / "metrics.json").read_text())
    assert b16["steps_per_epoch"] == 8  # 16 × 8 = 32 × 4 users per epoch
    assert not (out / "batch_size" / "bt_b32").exists()  # the main bt run was reused

    ablation = json.loads((report_dir / reproduction.ABLATION_JSON).read_text())
    assert {(r["model"], r["batch_size"]) for r in ablation} == {("bt", 16), ("bt", 32)}
    for r in first["rows"] + ablation:
        assert 0.0 <= r["value"] <= 1.0, r
    assert (report_dir / "batch_size_favorite_genre_accuracy_50pct.png").stat().st_size > 5_000

    # Rerun: no retraining (metrics.json untouched), no re-probing (cache untouched).
    watched = [str(out / m / "metrics.json") for m in ("bt", "de", "bt+de")]
    watched += [str(out / "batch_size" / "bt_b16" / "metrics.json")]
    watched += [str(p) for p in (report_dir / "cache").rglob("*") if p.is_file()]
    before = _mtimes(watched)
    second = reproduce.main(argv)
    assert _mtimes(watched) == before
    assert second["rows"] == first["rows"]
    assert second["ablation_rows"] == first["ablation_rows"]


def test_the_fine_tune_starts_from_the_bt_run_of_its_seed():
    _, base = reproduce.parse(["--dim=8"])
    configs = reproduction.main_configs(base, "/out", ["bt_ft", "de", "bt"], num_train_users=330)
    assert list(configs) == ["bt", "de", "bt_ft"]  # BT trains before its fine-tune
    ft = configs["bt_ft"]
    assert (ft.model, ft.run_dir, ft.init_from) == ("de", "/out/bt_ft", "/out/bt")
    seeded = reproduction.seed_configs(configs, 3)
    fts = [c for m, c in seeded if m == "bt_ft"]
    assert [c.init_from for c in fts] == ["/out/bt", "/out/bt_seed1", "/out/bt_seed2"]
    assert [c.seed for c in fts] == [0, 1, 2]
    assert all(not c.init_from for m, c in seeded if m != "bt_ft")
    with pytest.raises(ValueError, match="bt_ft fine-tunes the bt runs; add bt"):
        reproduction.main_configs(base, "/out", ["de", "bt_ft"], num_train_users=330)


# ~30 s on 2 quiet cores (6 runs). In the default suite: the leave-one-out split, training
# and metrics (test_leave_one_out.py), `evaluate --recommender` end to end (test_recommender.py),
# the seed spread (test_recommender.py) and the fine-tune's configs (test_the_fine_tune_...).
@pytest.mark.slow
def test_leave_one_out_compares_the_recommenders_with_seed_spread(tmp_path, tiny_data):
    out = tmp_path / "loo"
    flags = [*TINY, "--epochs=1", "--no-export", "--protocol=leave_one_out", "--no-ablation",
             "--models=bt,de,bt_ft", "--pretrain_seeds=2", f"--output_dir={out}",
             f"--data_output_dir={tiny_data}"]  # fmt: skip
    reproduce.main(flags)
    report = json.loads((out / "report" / "recommender.json").read_text())
    assert {r["model"] for r in report["runs"]} == {"de", "bt_ft", "popularity"}
    primary = report["contenders"]["full ndcg@10"]
    assert set(primary["models"]) == {"de", "bt_ft", "popularity"}
    de, ft = primary["models"]["de"], primary["models"]["bt_ft"]
    assert de["seeds"] == ft["seeds"] == 2 and primary["models"]["popularity"]["seeds"] == 1
    assert de["mean"] == pytest.approx(sum(de["per_seed"]) / 2)
    comparison = primary["comparisons"]["bt_ft"]
    assert comparison["ci95"][0] <= comparison["ratio"] <= comparison["ci95"][1]
    assert len(comparison["per_seed_ratios"]) == 2
    assert runs.read_config(out / "bt_ft_seed1")["init_from"] == str(out / "bt_seed1")
    md = (out / "report" / "report.md").read_text()
    assert "## full ndcg@10 (primary)" in md and "| bt_ft |" in md and "## Training runs" in md
    low, high = de["ci95"]
    assert f"| de | {de['mean']:.4f} [{low:.4f}, {high:.4f}] |" in md


def test_fine_tunes_of_several_seeds_share_one_name():
    """bt_ft's seed s starts from bt's seed s: the runs differ in ``init_from`` too, and
    are still one model's pretraining seeds (found on ML-100K with 2 seeds)."""
    from bt_tf.evaluation.runner import run_names

    ft = [{"model": "de", "lambd": 0.005, "seed": s, "init_from": f"/o/bt_seed{s}"} for s in (0, 1)]
    assert run_names(ft, ["/o/bt_ft", "/o/bt_ft_seed1"]) == ["de", "de"]
    other = [ft[0], {**ft[1], "lambd": 0.01}]  # a real setting differs: two models
    assert run_names(other, ["/o/bt_ft", "/o/x"]) == ["bt_ft", "x"]
