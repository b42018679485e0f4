"""`tuning.search`: search space and pins, eval-only objective, random search end to end,
Hyperband continuation, resume after SIGKILL, chief + 2 workers on 127.0.0.1.

Every search here runs on tiny synthetic data whose TEST split has been
deleted: a search that read it would fail. The distributed test is marked
slow: `pytest -m slow tests/test_tuning.py`.
"""

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras_tuner
import pytest
from keras_tuner.engine.trial import Trial

from bt_tf import runs
from bt_tf.data import dataset
from bt_tf.data.augment import AugmentPolicy
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.training.config import TrainConfig
from bt_tf.training.flags import parse
from bt_tf.training.genre_probe import genre_probe
from bt_tf.training.trainer import train
from pipelines import preprocess
from tests.tiny import TRAIN_FLAGS
from tuning import objective as obj
from tuning import report
from tuning import search as ts
from tuning import space as sp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_FLAGS = [*TRAIN_FLAGS, "--projector_widths=16,32", "--projector_depths=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny preprocessed synthetic data WITHOUT its test split."""
    root = tmp_path_factory.mktemp("tuning_data")
    _, base = ts.parse([*TINY_FLAGS, f"--data_output_dir={root}"])
    artifact_dir = preprocess.preprocess(base.data)
    shutil.rmtree(os.path.join(artifact_dir, "Split-test"))
    return str(root)


def _flags(data_dir, output_dir, *extra):
    return [*TINY_FLAGS, f"--data_output_dir={data_dir}", f"--output_dir={output_dir}", *extra]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    for key in ("TF_CONFIG", "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP"):
        env.pop(key, None)
    return env


def _events(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, ts.EVENTS)) as f:
        return [json.loads(line) for line in f]


def _statuses(output_dir) -> dict[str, str]:
    out = {}
    for path in glob.glob(os.path.join(output_dir, "search", "trial_*", "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        out[trial["trial_id"]] = trial["status"]
    return out


# --------------------------------------------------------------------------
# Space, pins, flags (no training)


def test_space_and_pins_from_the_command_line(tmp_path):
    search, base = ts.parse(["--output_dir=x", "--lambd=0.01", "--pin=projector_width=256"])
    assert search.space.pinned == {"lambd": 0.01, "projector_width": 256}
    hp = search.space.hyperparameters()
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {"lambd": "Fixed", "projector_width": "Fixed", "projector_depth": "Choice"}
    assert base.lambd == 0.01 and search.output_dir == "x"

    search, _ = ts.parse(["--search_augment", "--augment=mask:0.2"])
    assert search.output_dir == os.path.join("tuning_runs", "synthetic")
    kinds = {p.name: type(p).__name__ for p in search.space.hyperparameters().space}
    assert kinds == {
        "lambd": "Float",
        "projector_width": "Choice",
        "projector_depth": "Choice",
        "augment": "Fixed",  # explicitly given: pinned, mask/reorder/crop not searched
        "learning_rate": "Float",
    }
    lambd = next(p for p in search.space.hyperparameters().space if p.name == "lambd")
    assert (lambd.min_value, lambd.max_value, lambd.sampling) == (1e-4, 1e-1, "log")

    with pytest.raises(ValueError, match="pin either projector or projector_width"):
        ts.parse(["--pin=projector=64-64", "--pin=projector_width=64"])
    with pytest.raises(ValueError, match="only with --search_augment"):
        ts.parse(["--pin=mask=0.2"])
    with pytest.raises(ValueError, match="NAME one of"):
        ts.parse(["--pin=dim=32"])


def _kinds(search) -> dict:
    return {p.name: type(p).__name__ for p in search.space.hyperparameters().space}


def test_de_space_is_temperature_and_learning_rate_only():
    search, base = ts.parse(["--model=de", "--lambd=0.01", "--projector=64-64"])
    # BT settings given on the command line are not pinned: a DE has none.
    assert base.model == "de" and search.space.pinned == {}
    assert _kinds(search) == {"learning_rate": "Float", "temperature": "Float"}
    params = {p.name: p for p in search.space.hyperparameters().space}
    assert (params["temperature"].min_value, params["temperature"].max_value) == (0.02, 1.0)
    assert params["temperature"].sampling == params["learning_rate"].sampling == "log"

    search, _ = ts.parse(["--model=de", "--temperature=0.2", "--temperature_range=0.05,0.5"])
    assert search.space.pinned == {"temperature": 0.2}
    assert _kinds(search) == {"learning_rate": "Float", "temperature": "Fixed"}
    search, _ = ts.parse(["--model=de", "--learning_rate_range=1e-3,3e-3"])
    lr = next(p for p in search.space.hyperparameters().space if p.name == "learning_rate")
    assert (lr.min_value, lr.max_value) == (1e-3, 3e-3)

    with pytest.raises(ValueError, match="cannot pin \\['lambd'\\] for --model=de"):
        ts.parse(["--model=de", "--pin=lambd=0.01"])
    with pytest.raises(ValueError, match="--model=de has none"):
        ts.parse(["--model=de", "--search_augment"])
    with pytest.raises(ValueError, match="for --model=bt"):
        ts.parse(["--pin=temperature=0.1"])  # BT has no temperature


def test_joint_space_adds_temperature_learning_rate_and_bt_weight():
    search, _ = ts.parse(["--model=bt+de", "--bt_weight=0.3"])
    assert _kinds(search) == {
        "lambd": "Float",
        "projector_width": "Choice",
        "projector_depth": "Choice",
        "learning_rate": "Float",
        "temperature": "Float",
        "bt_weight": "Fixed",
    }
    values = {"temperature": 0.07, "learning_rate": 0.002, "bt_weight": 0.3, "lambd": 0.01}
    assert sp.train_flags(values) == values
    # BT alone is unchanged: no temperature, no learning rate unless asked for.
    assert "temperature" not in _kinds(ts.parse([])[0])


@pytest.mark.parametrize("model", ["bt", "de", "bt+de"])
def test_pooling_and_item_init_are_searched_only_when_asked(model):
    new = {"pooling", "item_init"}
    assert not new & set(_kinds(ts.parse([f"--model={model}"])[0]))  # default: as before
    search, _ = ts.parse([f"--model={model}", "--search_pooling", "--search_item_init"])
    params = {p.name: p for p in search.space.hyperparameters().space}
    assert {n: type(params[n]).__name__ for n in new} == {n: "Choice" for n in new}
    assert params["pooling"].values == ["mean", "last"]
    assert params["item_init"].values == ["random", "svd"]
    search, _ = ts.parse([f"--model={model}", "--search_item_init"])
    assert "pooling" not in _kinds(search) and _kinds(search)["item_init"] == "Choice"

    # Pins: --pin, or the training flag given explicitly; a pin alone still records it.
    search, _ = ts.parse([f"--model={model}", "--search_pooling", "--pin=pooling=last"])
    assert search.space.pinned == {"pooling": "last"} and _kinds(search)["pooling"] == "Fixed"
    search, _ = ts.parse([f"--model={model}", "--item_init=svd"])
    assert search.space.pinned == {"item_init": "svd"} and _kinds(search)["item_init"] == "Fixed"
    with pytest.raises(ValueError, match="--pin=item_init=pca: expected one of"):
        ts.parse([f"--model={model}", "--pin=item_init=pca"])


def test_pooling_and_item_init_values_become_the_train_config():
    values = {"pooling": "last", "item_init": "svd", "temperature": 0.2}
    assert sp.train_flags(values) == values
    base = TrainConfig(model="de", epochs=5)
    config = sp.trial_config(base, values, "/tmp/r", epochs=2)
    assert (config.encoder.pooling, config.item_init, config.temperature) == ("last", "svd", 0.2)
    assert dataclasses.replace(config.encoder, pooling="mean") == base.encoder
    assert (config.epochs, config.run_dir, config.freeze_item_embeddings) == (2, "/tmp/r", False)
    assert "pooling" in sp.SEARCHABLE_FLAGS and "item_init" in sp.SEARCHABLE_FLAGS


def test_each_tuner_gets_its_keras_tuner_oracle():
    expected = {
        "random": keras_tuner.oracles.RandomSearchOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        "hyperband": keras_tuner.oracles.HyperbandOracle,
    }
    for name, kind in expected.items():
        search, _ = ts.parse([f"--tuner={name}", "--objective=next_item", "--max_epochs=9"])
        oracle = ts.make_oracle(search)
        assert type(oracle) is kind
        assert (oracle.objective.name, oracle.objective.direction) == (
            "eval_next_item_hr@10",
            "max",
        )
    assert oracle.max_epochs == 9


def test_trial_values_become_train_flags():
    assert sp.trial_settings({"projector_width": 512, "projector_depth": 3}) == {
        "projector": ProjectorConfig((512, 512, 512))
    }
    values = {"lambd": 0.02, "projector_width": 256, "projector_depth": 2, "tuner/epochs": 4}
    assert sp.train_flags(values) == {"lambd": 0.02, "projector": "256-256"}
    values = {"mask": 0.25, "reorder": 0.1, "crop": 0.875, "learning_rate": 0.003}
    flags = sp.train_flags(values)
    assert flags == {"augment": "mask:0.25,reorder:0.1,crop:0.875", "learning_rate": 0.003}
    policy = sp.trial_settings(values)["augment"]
    assert policy == AugmentPolicy.from_string(flags["augment"])
    assert (policy.mask, policy.reorder, policy.crop) == (0.25, 0.1, 0.875)
    base = TrainConfig(epochs=5)
    config = sp.trial_config(base, {"lambd": 0.03}, "/tmp/r", epochs=2, export=False)
    assert (config.lambd, config.projector, config.epochs, config.run_dir, config.export) == (
        0.03,
        base.projector,
        2,
        "/tmp/r",
        False,
    )


def test_rerun_with_other_settings_is_refused(tmp_path):
    search, base = ts.parse(["--tuner=random", "--max_trials=3", f"--output_dir={tmp_path}"])
    ts.prepare(search, base)
    os.makedirs(search.project_dir)
    ts.prepare(dataclasses.replace(search, max_trials=5), base)  # extending is fine
    with pytest.raises(ValueError, match=r"search\.tuner"):
        ts.prepare(dataclasses.replace(search, tuner="bayesian"), base)
    with pytest.raises(ValueError, match=r"train\.lambd"):
        ts.prepare(search, dataclasses.replace(base, lambd=0.5))
    ts.prepare(dataclasses.replace(search, tuner="bayesian", overwrite=True), base)
    assert not os.path.exists(search.project_dir)


# --------------------------------------------------------------------------
# Objective


def test_objective_reads_only_train_and_eval(data_dir, tmp_path):
    _, base = ts.parse([*TINY_FLAGS, f"--data_output_dir={data_dir}"])
    artifact_dir = preprocess.artifact_dir(base.data)
    assert not os.path.exists(os.path.join(artifact_dir, "Split-test"))
    meta = dataset.load_metadata(artifact_dir)
    vocab = int(meta["vocab_sizes"]["items"])
    encoder = SequenceEncoder(vocab, max_len=40, dim=16, num_blocks=1, name="encoder")

    kinds = obj.PROBE_OBJECTIVES
    scores = {kind: obj.evaluate_objective(encoder, artifact_dir, kind) for kind in kinds}
    with pytest.raises(ValueError, match="crossfit_objective"):
        obj.evaluate_objective(encoder, artifact_dir, "claim")
    for kind, result in scores.items():
        value = result[obj.objective_name(kind)]
        assert 0.0 <= value <= 1.0, (kind, value)
        assert 0 < result["eval_users"] <= meta["num_users"]["eval"]
    # The default objective is exactly bt_tf.train's quick probe on eval users.
    probe = genre_probe(encoder, artifact_dir, seed=0)
    fav = scores["favorite_genre"]
    assert fav["eval_favorite_genre_accuracy"] == probe["favorite_genre_accuracy"]
    assert fav["eval_users"] == probe["eval_users"]

    # With the eval split gone there is nothing to score: it really is read.
    no_eval = tmp_path / "no_eval"
    shutil.copytree(artifact_dir, no_eval, ignore=shutil.ignore_patterns("Split-eval"))
    with pytest.raises(FileNotFoundError, match="Split-eval"):
        obj.evaluate_objective(encoder, str(no_eval), "favorite_genre")


# --------------------------------------------------------------------------
# Searches


def test_random_search_writes_best_hparams_that_train_accepts(data_dir, tmp_path):
    out = tmp_path / "search"
    summary = ts.main(_flags(data_dir, out, "--tuner=random", "--max_trials=3", "--epochs=1"))

    assert _statuses(out) == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"}
    best = json.loads((out / "best_hparams.json").read_text())
    assert set(best) == {"lambd", "projector"}
    assert 1e-4 <= best["lambd"] <= 1e-1 and best["projector"] in ("16-16", "32-32")
    ends = [e for e in _events(out) if e["event"] == "end"]
    name = "eval_favorite_genre_accuracy"
    top = max(ends, key=lambda e: e[name])
    assert summary["best"]["objective"] == top[name]
    # Ties go to the first trial; either way the best trial's values are the file's.
    best_trial = [e for e in ends if e[name] == top[name]][0]["trial_id"]
    assert summary["best"]["trial_id"] == best_trial
    assert best == sp.train_flags(summary["best"]["values"])

    table = (out / "trials.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| trial")]
    assert len(rows) == 3 and all("COMPLETED" in r for r in rows)
    assert (out / report.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # bt_tf.train accepts the file and trains with exactly those values.
    config = parse(
        [*TRAIN_FLAGS, f"--data_output_dir={data_dir}", f"--output_dir={tmp_path / 'r'}",
         "--epochs=1", "--no-probe", "--no-export", f"--hparams={out / 'best_hparams.json'}"]
    )  # fmt: skip
    assert (config.lambd, config.projector.to_string()) == (best["lambd"], best["projector"])
    assert train(config)["epochs_completed"] == 1

    # The same command again: nothing is retrained.
    before = len(_events(out))
    ts.main(_flags(data_dir, out, "--tuner=random", "--max_trials=3", "--epochs=1"))
    assert len(_events(out)) == before


# ~15 s on 2 quiet cores. In the default suite: a search end to end (the random search above),
# the DE's space (test_de_space_is_temperature_and_learning_rate_only).
@pytest.mark.slow
def test_de_search_writes_best_hparams_that_train_accepts(data_dir, tmp_path):
    out = tmp_path / "de_search"
    flags = _flags(data_dir, out, "--model=de", "--tuner=random", "--max_trials=2", "--epochs=1")
    summary = ts.main(flags)
    assert _statuses(out) == {"0": "COMPLETED", "1": "COMPLETED"}
    best = json.loads((out / "best_hparams.json").read_text())
    assert set(best) == {"temperature", "learning_rate"}
    assert 0.02 <= best["temperature"] <= 1.0 and 1e-4 <= best["learning_rate"] <= 1e-2
    assert 0.0 <= summary["best"]["objective"] <= 1.0
    config = parse(
        [*TRAIN_FLAGS, f"--data_output_dir={data_dir}", f"--output_dir={tmp_path / 'r'}",
         "--model=de", "--epochs=1", "--no-probe", "--no-export",
         f"--hparams={out / 'best_hparams.json'}"]
    )  # fmt: skip
    assert (config.temperature, config.learning_rate) == (
        best["temperature"],
        best["learning_rate"],
    )
    assert config.encoder_kwargs(10)["causal"]  # the DE's query tower
    assert train(config)["epochs_completed"] == 1


# ~15 s on 2 quiet cores. In the default suite: the Hyperband oracle (test_each_tuner_gets_...),
# a resumed run's history (test_train.py::test_metrics_history_has_every_epoch_across_resumes).
@pytest.mark.slow
def test_hyperband_continues_the_parent_checkpoint(data_dir, tmp_path, capsys):
    search, base = ts.parse(
        _flags(data_dir, tmp_path / "hb", "--tuner=hyperband", "--max_epochs=3")
    )
    ts.prepare(search, base)
    tuner = ts.make_tuner(search, base)
    space = search.space.hyperparameters()
    values = {"lambd": 0.01, "projector_width": 16, "projector_depth": 2}

    def run(trial_id, **extra):
        hp = space.copy()
        hp.values = {**values, **extra}
        return tuner.run_trial(Trial(hp, trial_id=trial_id))

    parent = run("0000", **{"tuner/epochs": 1, "tuner/initial_epoch": 0})
    assert parent["epochs"] == 1
    capsys.readouterr()
    child = run("0001", **{"tuner/epochs": 3, "tuner/initial_epoch": 1, "tuner/trial_id": "0000"})
    assert child["epochs"] == 3
    child_run = tmp_path / "hb" / "search" / "trial_0001" / "run"
    resumed = f"resumed from {child_run}/train_state/ckpt-1"
    assert resumed in capsys.readouterr().out  # from the parent's checkpoint, not retrained
    metrics = json.loads((child_run / "metrics.json").read_text())
    # The parent is untouched and still 1 epoch; the child's history is the parent's first
    # epoch (its history.csv, copied with the checkpoints), then epochs 2 and 3.
    parent_metrics = json.loads(
        (tmp_path / "hb" / "search" / "trial_0000" / "run" / "metrics.json").read_text()
    )
    assert parent_metrics["epochs_completed"] == 1
    assert len(metrics["history"]["loss"]) == 3
    assert metrics["history"]["loss"][0] == parent_metrics["history"]["loss"][0]


@pytest.mark.slow  # ~45 s: a subprocess killed mid-run, then resumed
def test_killed_search_resumes_without_rerunning_finished_trials(data_dir, tmp_path):
    out = tmp_path / "search"
    # 40 steps per epoch so the kill lands inside trial 1's second epoch.
    flags = _flags(data_dir, out, "--tuner=random", "--max_trials=3", "--epochs=2")
    flags.append("--steps_per_epoch=40")
    cmd = [sys.executable, "-m", "tuning.search", *flags]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO
    )
    ckpt = out / "search" / "trial_1" / "run" / "checkpoints" / "checkpoint"
    deadline = time.time() + 400
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "trial 1 never wrote a checkpoint"
    ckpts_at_kill = len(glob.glob(str(ckpt.parent / "ckpt-*.index")))
    assert _statuses(out) == {"0": "COMPLETED", "1": "RUNNING"}
    trial0_metrics = out / "search" / "trial_0" / "run" / "metrics.json"
    mtime = trial0_metrics.stat().st_mtime_ns

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert _statuses(out) == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"}
    events = _events(out)
    starts = [e["trial_id"] for e in events if e["event"] == "start"]
    ends = [e["trial_id"] for e in events if e["event"] == "end"]
    assert sorted(ends) == ["0", "1", "2"]  # every trial finished exactly once
    assert starts.count("0") == 1 and starts.count("1") == 2  # only the killed one again
    assert trial0_metrics.stat().st_mtime_ns == mtime
    # Resumed from its checkpoint, not retrained; metrics.json's history has both epochs, the
    # one before the kill from history.csv (test_train.py::test_metrics_history_...).
    state = ckpt.parent.parent / runs.STATE_DIR
    assert f"resumed from {state}/ckpt-{ckpts_at_kill}" in rerun.stdout, rerun.stdout[-3000:]
    history = json.loads((ckpt.parent.parent / "metrics.json").read_text())["history"]
    assert len(history["loss"]) == 2


@pytest.mark.slow  # four Python processes with TensorFlow: ~70 s on an idle 2-core machine
def test_chief_and_two_workers_run_each_trial_once(data_dir, tmp_path):
    out = tmp_path / "dist"
    flags = _flags(data_dir, out, "--tuner=random", "--max_trials=4", "--epochs=1")
    done = subprocess.run(
        [sys.executable, "-m", "tuning.search", *flags, "--distributed_workers=2"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _statuses(out) == {str(i): "COMPLETED" for i in range(4)}
    events = _events(out)
    ends = [e for e in events if e["event"] == "end"]
    starts = [e for e in events if e["event"] == "start"]
    assert sorted(e["trial_id"] for e in ends) == ["0", "1", "2", "3"]  # none twice
    assert len(starts) == 4
    # Both workers trained; the chief only served the oracle.
    assert {e["tuner_id"] for e in ends} == {"tuner0", "tuner1"}
    assert len({e["pid"] for e in ends}) == 2
    for name in ("chief", "tuner0", "tuner1"):
        assert (out / "logs" / f"{name}.log").exists()
    assert json.loads((out / "best_hparams.json").read_text()).keys() == {"lambd", "projector"}


# ~20 s on 2 quiet cores (2 trials, each probed on 3 tasks, and the svd floor). In the default
# suite: a search end to end (the random search above), the cross-fitted scoring it rests on
# (test_crossfit.py).
@pytest.mark.slow
def test_claim_objective_search_scores_train_and_eval_users_against_svd(data_dir, tmp_path):
    out = tmp_path / "claim_search"
    claim = ["--objective=claim", "--objective_fractions=0.5", "--objective_seeds=1"]
    flags = _flags(data_dir, out, "--tuner=random", "--max_trials=2", "--epochs=1", *claim)
    summary = ts.main(flags)
    assert _statuses(out) == {"0": "COMPLETED", "1": "COMPLETED"}
    ends = {e["trial_id"]: e for e in _events(out) if e["event"] == "end"}
    for e in ends.values():
        assert e["cv_claim_vs_svd"] == pytest.approx(e["claim_ratio"])
        assert e["claim_ratio_lo"] <= e["claim_ratio"] <= e["claim_ratio_hi"]
        tasks = [e[f"{t}_vs_svd"] for t in ("next_item", "favorite_genre", "liked_item")]
        assert e["claim_ratio"] == pytest.approx(sum(tasks) / 3)
        assert all(0 < r < 10 for r in tasks)
    assert summary["best"]["objective"] == max(e["cv_claim_vs_svd"] for e in ends.values())
    # The svd floor is probed once for the search: its cache is shared by the trials.
    cache = out / "search" / "crossfit_cache" / "cache" / "units"
    assert sorted(p.name for p in cache.iterdir()) == ["svd", "trial_0", "trial_1"]
    table = (out / "trials.md").read_text()
    assert "claim_ratio [95%]" in table and "favorite_genre_vs_svd [95%]" in table
    row = [line for line in table.splitlines() if line.startswith("| **")][0]
    assert row.count("[") >= 4  # the objective's and each task's interval
    # --objective_stat=lower: the interval's low end (probes from the shared cache).
    spec = obj.CrossfitSpec(fractions=(0.5,), seeds=1, stat="lower")
    run = out / "search" / "trial_0" / "run"
    lower = obj.crossfit_objective(str(run), "trial_0", str(cache.parent.parent), spec)
    assert lower["cv_claim_vs_svd"] == lower["claim_ratio_lo"] == ends["0"]["claim_ratio_lo"]
    with pytest.raises(ValueError, match="stat"):
        obj.CrossfitSpec(stat="median")
