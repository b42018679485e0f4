"""`bt_tf.evaluate` / `bt_tf.evaluation`: trained runs -> probes -> report, on tiny data."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

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
    settings,
)
from bt_tf.serving import export

QUICK = settings.EvalSettings(probe_max_epochs=20, probe_min_epochs=5)
# `runs` (conftest.py): {"bt": run dir, "de": run dir} trained on one tiny synthetic artifact.


def _artifact(run_dir: str) -> str:
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f)["artifact_dir"]


def test_cli_end_to_end_every_model_floor_task_and_valid_numbers(runs, tmp_path):
    out = tmp_path / "report"
    rows = evaluate.main(
        [
            f"--runs={runs['bt']},{runs['de']}",
            "--label_fractions=0.5",
            "--seeds=2",
            "--probe_max_epochs=20",
            "--probe_min_epochs=5",
            f"--output_dir={out}",
        ]
    )
    models = {r["model"] for r in rows}
    # One untrained floor per architecture: the DE's query tower is causal, BT's is not.
    floors = {"untrained(bt)", "untrained(de)", "bag_of_items", "majority", "popularity"}
    assert models == {"bt", "de"} | floors
    tasks = {r["task"] for r in rows}
    assert tasks == {"next_item", "favorite_genre", "liked_item", "attr_segment"}
    expected_metrics = {
        "next_item": {"hr@10", "ndcg@10"},
        "favorite_genre": {"accuracy", "balanced_accuracy"},
        "liked_item": {"accuracy", "auc"},
        "attr_segment": {"accuracy", "balanced_accuracy"},
    }
    for model in ("bt", "de", "untrained(bt)", "untrained(de)", "bag_of_items"):  # every probe
        for task, metric_names in expected_metrics.items():
            for metric in metric_names:
                cell = [
                    r for r in rows if (r["model"], r["task"], r["metric"]) == (model, task, metric)
                ]
                assert sorted((r["fraction"], r["seed"]) for r in cell) == [
                    (0.5, 0),
                    (0.5, 1),
                ], (model, task, metric)
    for r in rows:
        assert math.isfinite(r["value"]) and 0.0 <= r["value"] <= 1.0, r
        if r["model"] in ("bt", "de"):
            assert r["batch_size"] == 32 and r["model_type"] == r["model"]
    # The report: every model and floor, the improvement table, aggregates in range.
    md = (out / "report.md").read_text()
    for name in models:
        assert f"| {name} |" in md, name
    assert "Relative improvement over `de`" in md
    assert settings.selection_rule() in md  # the selection rule, stated once
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == len(rows)
    for a in results["aggregates"]:
        assert 0.0 <= a["mean"] <= 1.0 and a["std"] >= 0.0, a
    assert (out / "metrics_vs_fraction.png").stat().st_size > 10_000


def test_probes_see_only_train_labels_and_test_never_steers_selection(runs):
    """No leak: splits are disjoint; the probe training set is a fraction of TRAIN
    users; replacing test labels and test embeddings changes scores only."""
    artifact = _artifact(runs["bt"])
    meta = dataset.load_metadata(artifact)
    data = eval_data.load_eval_data(artifact, width=40)
    ids = {s: set(data.user_ids[s].tolist()) for s in F.SPLITS}
    for s in F.SPLITS:
        assert len(ids[s]) == len(data.user_ids[s]) == meta["num_users"][s]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["eval"])
    assert not (ids["eval"] & ids["test"])

    encoder, _, _ = embedding_cache.restore_run(runs["bt"])
    emb = embedding_cache.embed_users(encoder, data)
    reference, _ = embed_split(encoder, artifact, "test", max_len=40)  # the canonical reader
    np.testing.assert_allclose(emb["test"], reference, rtol=1e-5, atol=1e-6)
    tasks = ["favorite_genre", "attr_segment"]
    kwargs = dict(fractions=[0.1, 1.0], seeds=[0], tasks=tasks, settings=QUICK)
    plan = probing.EvalPlan.make(data, **kwargs)
    rows = probing.evaluate_features(plan, "bt", emb)
    assert probing.evaluate_features(plan, "bt", emb) == rows  # same seed, same result
    for r in rows:
        y = data.labels[r["task"]]
        labelled_train = int(np.sum(y["train"] >= 0))
        expected = labels.sample_label_fraction(y["train"], r["fraction"], r["seed"]).size
        assert r["n_train"] == expected  # drawn from the train split's labels only
        assert r["n_test"] == int(np.sum(y["test"] >= 0))
        # Selection sees the same fraction of eval labels (at least the minimum),
        # not all of them (the old rule, changed on purpose).
        selection = labels.sample_selection_users(y["eval"], r["fraction"], r["seed"])
        assert r["n_eval"] == selection.size and r["n_eval_labelled"] == np.sum(y["eval"] >= 0)
        if r["fraction"] < 1.0:
            assert r["n_eval"] < r["n_eval_labelled"]
        if r["fraction"] == 1.0:  # all labelled train users, not train + test
            assert r["n_train"] == labelled_train < labelled_train + r["n_test"]
        else:
            assert r["n_train"] < labelled_train

    # Scramble the test labels and zero the test embeddings: nothing the probe
    # chose (L2, stopping epoch, sample sizes) may change; the scores do.
    rng = np.random.default_rng(0)
    scrambled = eval_data.EvalData(
        **{
            **vars(data),
            "labels": {
                t: {**data.labels[t], "test": rng.permutation(data.labels[t]["test"])}
                for t in tasks
            },
        }
    )
    emb2 = {**emb, "test": np.zeros_like(emb["test"])}
    rows2 = probing.evaluate_features(probing.EvalPlan.make(scrambled, **kwargs), "bt", emb2)
    keys = ("task", "metric", "fraction", "seed", "l2", "best_epoch", "n_train", "n_eval")
    assert [tuple(r[k] for k in keys) for r in rows] == [tuple(r[k] for k in keys) for r in rows2]
    assert [r["value"] for r in rows] != [r["value"] for r in rows2]


def test_cache_reuses_results_and_settings_invalidate_it(runs, tmp_path):
    kwargs = dict(
        label_fractions=[1.0],
        seeds=1,
        tasks=["favorite_genre"],
        include_floors=False,
        write=False,
    )
    first = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=QUICK, **kwargs)
    cache_file = tmp_path / "cache" / "bt.json"
    stamp = cache_file.stat().st_mtime_ns
    again = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=QUICK, **kwargs)
    assert again == first and cache_file.stat().st_mtime_ns == stamp  # read, not recomputed
    other = settings.EvalSettings(probe_max_epochs=20, probe_min_epochs=5, l2_grid=(1e-3,))
    changed = runner.evaluate_runs([runs["bt"]], str(tmp_path), settings=other, **kwargs)
    assert cache_file.stat().st_mtime_ns != stamp  # recomputed under the new settings
    assert {r["l2"] for r in changed} == {1e-3}


def test_item_embeddings_bt_input_table_de_item_tower(runs):
    bt_encoder, bt_items, _ = embedding_cache.restore_run(runs["bt"])
    np.testing.assert_array_equal(bt_items, bt_encoder.item_embedding.embeddings.numpy())
    de_encoder, de_items, config = embedding_cache.restore_run(runs["de"])
    assert de_items.shape == (config["encoder"]["vocab_size"], 16)
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
    assert [(r.name, r.cache_name) for r in runs] == [
        ("bt", "bt@seed1"),
        ("bt", "bt"),  # the lowest seed keeps the one-seed cache name
        ("de", "de"),
        ("bt", "bt@seed2"),
    ]
    assert [r.row_fields()["pretrain_seed"] for r in runs] == [1, 0, 0, 2]
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
        for rows_cache in (out / "cache").glob("*.json"):  # probe rows: recompute them
            rows_cache.unlink()
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
