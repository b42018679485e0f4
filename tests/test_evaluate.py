"""`bt_tf.evaluate` / `bt_tf.evaluation`: trained runs -> probes -> report, on tiny data."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bt_tf import evaluate
from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_split
from bt_tf.evaluation import (
    embedding_cache,
    eval_data,
    floors,
    labels,
    probing,
    runner,
    scores,
    settings,
)
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.protocol import Protocol
from bt_tf.serving import export
from bt_tf.training import trainer
from bt_tf.training.flags import parse
from tests.tiny import TINY_FLAGS

QUICK = settings.EvalSettings(c_grid=(1e-2, 1.0))
# `runs` (conftest.py): {"bt": run dir, "de": run dir} trained on one tiny synthetic artifact.


def _artifact(run_dir: str) -> str:
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)["artifact_dir"]


def test_cli_end_to_end_every_model_floor_task_and_valid_numbers(runs, tmp_path):
    out = tmp_path / "report"
    rows = evaluate.main(
        [
            f"--runs={runs['bt']},{runs['de']}",
            "--label_fractions=0.1",
            "--seeds=2",
            "--bootstrap_resamples=200",
            "--claim_users=test",
            f"--output_dir={out}",
        ]
    )
    models = {r["model"] for r in rows}
    # One untrained floor per architecture: the DE's query tower is causal, BT's is not.
    floors = {"untrained(bt)", "untrained(de)", "bag_of_items", "svd", "majority", "popularity",
              "bias"}  # fmt: skip
    assert models == {"bt", "de"} | floors
    # The bias floor (the item one-hot alone) is a liked-item floor only.
    assert {r["task"] for r in rows if r["model"] == "bias"} == {"liked_item"}
    tasks = {r["task"] for r in rows}
    assert tasks == {"next_item", "favorite_genre", "liked_item", "attr_segment"}
    expected_metrics = {
        "next_item": {"hr@10", "ndcg@10"},
        "favorite_genre": {"accuracy", "balanced_accuracy"},
        "liked_item": {"accuracy", "auc"},
        "attr_segment": {"accuracy", "balanced_accuracy"},
    }
    n_users = sum(len(v) for v in eval_data.load_eval_data(_artifact(runs["bt"]), tasks=[])
                  .user_ids.values())  # fmt: skip
    for model in ("bt", "de", "untrained(bt)", "untrained(de)", "bag_of_items", "svd"):
        for task, metric_names in expected_metrics.items():
            for metric in metric_names:
                cell = [
                    r for r in rows if (r["model"], r["task"], r["metric"]) == (model, task, metric)
                ]
                # label seeds are repeated where they decide the claim (its tasks at
                # 10%); a user attribute gets the first seed alone
                want = [(0.1, 0)] if task == "attr_segment" else [(0.1, 0), (0.1, 1)]
                assert sorted((r["fraction"], r["seed"]) for r in cell) == want, (
                    model, task, metric)  # fmt: skip
    for r in rows:
        assert math.isfinite(r["value"]) and 0.0 <= r["value"] <= 1.0, r
        assert 0.0 <= r["prior_selected"] <= 1.0
        if r["model"] in ("bt", "de"):
            assert r["batch_size"] == 32 and r["model_type"] == r["model"]
        if r["task"] in ("next_item", "favorite_genre"):  # cross-fitted: every user scored
            assert r["n_test"] <= n_users and r["n_test"] > 0.9 * n_users
    md = (out / "report.md").read_text()
    for name in models:
        assert f"| {name} |" in md, name
    assert md.index("## The claim") < md.index("## next_item")
    assert "cross-fitted (5 folds)" in md and "| bt vs de |" in md
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == len(rows)
    assert {t["task"] for t in results["claim"]["tasks"]} == {
        "next_item", "favorite_genre", "liked_item"
    }  # fmt: skip
    assert results["claim"]["verdict"] in ("reproduced", "refuted", "inconclusive")
    # --claim_users=test: the claim on the test users, the all-users claim beside it; the
    # synthetic data's defaults were chosen on no labels: out-of-sample both.
    test, everyone = results["claims"]
    assert results["claim"] == test and (test["model"], test["baseline"]) == ("bt", "de")
    n_test = len(eval_data.load_eval_data(_artifact(runs["bt"]), tasks=[]).user_ids["test"])
    assert test["users"] == "test" and 0.9 * n_test <= test["n_users"] <= n_test
    assert everyone["users"] == "all" and everyone["n_users"] > 0.9 * n_users
    assert results["provenance"] == []
    assert test["selection"] == everyone["selection"] == "out_of_sample"
    assert "| test users only (" in md and "selection: **out-of-sample**" in md
    for c in results["cells"]:
        lo, hi = c["ci95"]
        assert lo <= c["value"] <= hi, c
    table = scores.read_scores(str(out / scores.SCORES_FILE))
    assert set(np.unique(table["model"])) == models
    assert (out / "metrics_vs_fraction.png").stat().st_size > 10_000


def test_inductive_protocol_trains_on_train_and_eval_labels_and_test_never_steers_it(runs):
    """--probe_folds=0: the labelled users are a fraction of train + eval users;
    shuffling the test users' labels and embeddings changes their scores only."""
    artifact = _artifact(runs["bt"])
    meta = dataset.load_metadata(artifact)
    data = eval_data.load_eval_data(artifact, width=40)
    ids = {s: set(data.user_ids[s].tolist()) for s in F.SPLITS}
    for s in F.SPLITS:
        assert len(ids[s]) == len(data.user_ids[s]) == meta["num_users"][s]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["eval"])
    assert not (ids["eval"] & ids["test"])

    encoder, items, _ = embedding_cache.restore_run(runs["bt"])
    emb = embedding_cache.embed_users(encoder, data)
    reference, _ = embed_split(encoder, artifact, "test", max_len=40)  # the canonical reader
    np.testing.assert_allclose(emb["test"], reference, rtol=1e-5, atol=1e-6)
    protocol = Protocol(probe_folds=0)
    tasks = ("favorite_genre", "attr_segment")

    def probe(data, emb):
        ctx = runner._context(data, protocol, QUICK, "train", tasks)
        plan = probing.EvalPlan(ctx, (0.1, 1.0), (0,), tasks)
        bt = Contender("bt", 0, ctx.population.stack(emb), items)
        return ctx, probing.probe_records(plan, bt)

    ctx, records = probe(data, emb)
    test_rows = np.flatnonzero(ctx.population.split_of == "test")
    for r in records:
        y = ctx.labels[r.task]
        labelled = int(np.sum(y[: test_rows[0]] >= 0))  # train + eval users with a label
        (fit,) = r.fits
        assert fit["n_labelled"] == labels.sample_label_fraction(
            y[: test_rows[0]], r.fraction, [r.seed, 0]).size  # fmt: skip
        assert fit["n_labelled"] <= labelled
        assert set(r.units.user) <= set(test_rows)
    rng = np.random.default_rng(0)
    scrambled = eval_data.EvalData(**{**vars(data), "labels": {
        t: {**data.labels[t], "test": rng.permutation(data.labels[t]["test"])} for t in tasks
    }})  # fmt: skip
    # Test users' embeddings shuffled among them, not zeroed: features are standardized
    # with the mean and s.d. of ALL evaluated users (label-free, contenders.py), which
    # zeros would move (and with them, legitimately, the selection).
    _, records2 = probe(scrambled, {**emb, "test": rng.permutation(emb["test"])})
    assert [r.fits for r in records] == [r.fits for r in records2]  # the same selections
    assert any(not np.array_equal(a.units.pred, b.units.pred) for a, b in zip(records, records2))


def test_cache_reuses_results_and_settings_invalidate_it(runs, tmp_path):
    kwargs = dict(
        label_fractions=[1.0],
        seeds=1,
        tasks=["favorite_genre"],
        include_floors=False,
        write=False,
    )
    first = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=QUICK, **kwargs)
    cache_file = tmp_path / "cache" / "units" / "bt" / "favorite_genre%7C1.0%7C0.npz"
    stamp = cache_file.stat().st_mtime_ns
    again = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=QUICK, **kwargs)
    assert again == first and cache_file.stat().st_mtime_ns == stamp  # read, not recomputed
    other = settings.EvalSettings(c_grid=(1e-3,))
    changed = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=other, **kwargs)
    assert cache_file.stat().st_mtime_ns != stamp  # recomputed under the new settings
    assert {c for r in changed for c in r["candidates"]} <= {"prior", "C=0.001"}


def test_item_embeddings_bt_input_table_de_item_tower(runs):
    bt_encoder, bt_items, _ = embedding_cache.restore_run(runs["bt"])
    np.testing.assert_array_equal(bt_items, bt_encoder.item_embedding.embeddings.numpy())
    de_encoder, de_items, config = embedding_cache.restore_run(runs["de"])
    assert de_items.shape == (config["encoder"]["vocab_size"], 16)
    # The DE ties its item side to the encoder's input table (SASRec) by default ...
    assert config["tie_item_embeddings"]
    np.testing.assert_array_equal(de_items, de_encoder.item_embedding.embeddings.numpy())


def test_an_untied_de_run_is_scored_with_its_own_item_tower(runs, tmp_path):
    config = json.loads((Path(runs["de"]) / "config.json").read_text())
    flags = [*TINY_FLAGS, "--epochs=1", "--no-probe", "--no-export", "--model=de",
             "--no-tie_item_embeddings", f"--data_output_dir={config['data']['output_dir']}",
             f"--output_dir={tmp_path / 'untied'}"]  # fmt: skip
    trainer.train(parse(flags))
    de_encoder, de_items, _ = embedding_cache.restore_run(str(tmp_path / "untied"))
    assert not np.allclose(de_items, de_encoder.item_embedding.embeddings.numpy())


def test_runs_on_different_artifacts_are_refused(runs, tmp_path):
    other = tmp_path / "other_bt"
    shutil.copytree(runs["bt"], other)
    config = json.loads((other / "config.json").read_text())
    config["artifact_dir"] = str(tmp_path / "elsewhere")
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="share one artifact dir"):
        runner.evaluate_runs([runs["bt"], str(other)], str(tmp_path / "r"), seeds=1)
    with pytest.raises(FileNotFoundError, match="No config.json"):
        runner.evaluate_runs([str(tmp_path)], str(tmp_path / "r"), seeds=1)


def test_run_names_are_unique():
    configs = [{"model": "bt"}, {"model": "bt"}, {"model": "de"}]
    assert runner.run_names(configs, ["runs/a_bt", "runs/b_bt", "runs/x"]) == ["a_bt", "b_bt", "de"]
    assert runner.run_names(configs[:2], ["x/bt", "y/bt/"]) == ["bt", "bt-2"]
    assert runner.run_names([{"model": "bt+de"}], ["r"]) == ["bt+de"]


def test_pretraining_seeds_of_one_model_share_its_name_and_keep_their_caches_apart(tmp_path):
    def run(name, **settings):
        config = {"model": "bt", "seed": 0, "lambd": 0.005, "batch_size": 32, "epochs": 1}
        config.update(settings, run_dir=str(tmp_path / name), artifact_dir="/a", max_len=8)
        config["encoder"] = {"dim": 8}
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return str(tmp_path / name), config

    (bt, c0), (bt1, c1), (bt2, c2) = run("bt"), run("bt_seed1", seed=1), run("bt_seed2", seed=2)
    (de, d0), (other, o0) = run("de", model="de"), run("other", lambd=0.1, seed=3)
    assert runner.run_names([c0, c1, c2, d0], [bt, bt1, bt2, de]) == ["bt", "bt", "bt", "de"]
    assert runner.run_names([c0, c1, o0], [bt, bt1, other]) == ["bt", "bt_seed1", "other"]
    runs = runner.read_runs([bt1, bt, de, bt2])
    assert [(r.name, r.seed) for r in runs] == [("bt", 1), ("bt", 0), ("de", 0), ("bt", 2)]
    # Their caches (embeddings, probes) are kept apart by the contender's key.
    keys = [Contender(r.name, r.seed, None).key for r in runs]
    assert keys == ["bt@seed1", "bt", "de", "bt@seed2"]
    with pytest.raises(ValueError, match="differ in their seed alone"):
        runner.read_runs([bt, other], names=["bt", "bt"])  # another lambd
    (same, _) = run("bt_again")  # seed 0 again: the same run twice
    with pytest.raises(ValueError, match="differ in their seed alone"):
        runner.read_runs([bt, same], names=["bt", "bt"])


class CountingEncoder:
    """The real encoder, counting the user rows it embeds (a TF variable, so
    every run of a traced function counts, not only its tracing)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.rows = tf.Variable(0, dtype=tf.int64)

    def __call__(self, items, training=False):
        self.rows.assign_add(tf.cast(tf.shape(items)[0], tf.int64))
        return self.encoder(items, training=training)

    def __getattr__(self, name):  # item_embedding, output_dim, ...
        return getattr(self.encoder, name)


# ~12 s on 2 quiet cores (three evaluations). In the default suite: the result cache
# (test_cache_reuses_results_and_settings_invalidate_it), a rerun that recomputes nothing
# (test_reproduce.py::test_equal_budget_...).
@pytest.mark.slow
def test_embeddings_are_cached_on_disk_until_the_checkpoint_changes(runs, tmp_path, monkeypatch):
    run = tmp_path / "bt"
    shutil.copytree(runs["bt"], run)
    encoders = []

    def counting(make):
        def wrapper(*args, **kwargs):
            out = make(*args, **kwargs)
            encoder = out[0] if isinstance(out, tuple) else out
            encoders.append(CountingEncoder(encoder))
            return (encoders[-1], *out[1:]) if isinstance(out, tuple) else encoders[-1]

        return wrapper

    # Where they are called: a run's encoder in the runner, the untrained one in the floors.
    monkeypatch.setattr(runner, "restore_run", counting(embedding_cache.restore_run))
    monkeypatch.setattr(floors, "untrained_encoder", counting(embedding_cache.untrained_encoder))
    out = tmp_path / "report"
    kwargs = dict(label_fractions=[1.0], seeds=1, tasks=["favorite_genre"], settings=QUICK)

    def evaluate(write=False):
        encoders.clear()
        shutil.rmtree(out / "cache" / "units", ignore_errors=True)  # probes: recompute them
        timings = []
        rows = runner.evaluate_runs([str(run)], str(out), timings=timings, write=write, **kwargs)
        return rows, sum(int(e.rows.numpy()) for e in encoders), timings

    first, embedded, timings = evaluate(write=True)
    n_users = sum(
        len(v) for v in eval_data.load_eval_data(_artifact(str(run)), tasks=[]).user_ids.values()
    )
    assert embedded == 2 * n_users  # the run and the untrained floor, every user once
    stages = [t["stage"] for t in timings]
    for stage in ("load data", "bt: embed", "bt: favorite_genre", "untrained: embed",
                  "bag_of_items: favorite_genre", "report"):  # fmt: skip
        assert stage in stages
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in timings)
    assert json.loads((out / runner.TIMINGS_FILE).read_text())["stages"] == timings

    again, embedded, _ = evaluate()  # a rerun: embeddings from the cache, probes rerun
    assert embedded == 0 and encoders == []  # nothing restored, nothing embedded
    assert again == first

    # New weights under the SAME checkpoint name: the cache must notice.
    cached = dict(np.load(out / "cache" / embedding_cache.EMBEDDINGS_DIR / "bt.npz"))
    encoder, _ = export.restore_encoder(str(run))
    for v in encoder.weights:
        v.assign(v + 0.5)
    path = tf.train.latest_checkpoint(str(run / "checkpoints"))
    checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder))
    assert checkpoint.save(str(run / "checkpoints" / "ckpt")) == path  # overwritten in place
    _, embedded, _ = evaluate()
    assert embedded == n_users  # only the run: the untrained floor is unchanged
    recached = dict(np.load(out / "cache" / embedding_cache.EMBEDDINGS_DIR / "bt.npz"))
    assert not np.allclose(recached["train"], cached["train"])
    assert str(recached["fingerprint"]) != str(cached["fingerprint"])


def test_length_sorted_batches_embed_like_full_width_ones(runs):
    data = eval_data.load_eval_data(_artifact(runs["bt"]), tasks=[])
    encoder, _, _ = embedding_cache.restore_run(runs["bt"])
    lengths = embedding_cache.history_extents(data.history["train"])
    assert lengths.min() < lengths.max()  # so the batches really are cut to different widths
    # Many batches, each cut to its longest history.
    small = embedding_cache.embed_users(encoder, data, batch_size=5)
    for split in F.SPLITS:
        full = encoder(tf.constant(data.history[split], tf.int32), training=False).numpy()
        np.testing.assert_allclose(small[split], full, rtol=1e-5, atol=1e-5)


_UNTRAINED_DIGEST = """
import hashlib, json, sys
import bt_tf
from bt_tf.evaluation.embedding_cache import untrained_encoder
encoder = untrained_encoder(json.loads(sys.argv[1]))
print(hashlib.sha256(b"".join(w.numpy().tobytes() for w in encoder.weights)).hexdigest())
"""


def test_untrained_floor_is_the_same_in_a_fresh_process_and_after_training():
    """Training switches Keras to tf.random.Generator initializers process-wide; the
    untrained encoder must not depend on whether a run was trained before it."""
    config = {"seed": 3, "encoder": dict(vocab_size=40, max_len=8, dim=8, num_blocks=1)}
    fresh = subprocess.run(
        [sys.executable, "-c", _UNTRAINED_DIGEST, json.dumps(config)],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    ).stdout.split()[-1]  # fmt: skip
    tf.keras.backend.experimental.enable_tf_random_generator()  # as after a training run
    encoder = embedding_cache.untrained_encoder(config)
    here = hashlib.sha256(b"".join(w.numpy().tobytes() for w in encoder.weights)).hexdigest()
    assert here == fresh


def test_the_full_softmax_next_item_probe_is_opt_in(runs):
    artifact = _artifact(runs["bt"])
    assert "next_item_softmax" not in eval_data.available_tasks(artifact)
    data = eval_data.load_eval_data(artifact, tasks=["next_item_softmax"])
    nxt = eval_data.load_eval_data(artifact, tasks=["next_item"])
    for split in F.SPLITS:  # the same labels as next_item's
        np.testing.assert_array_equal(
            data.labels["next_item_softmax"][split], nxt.labels["next_item"][split]
        )
