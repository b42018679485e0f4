"""`bt_tf.train` end to end: learning, resume after SIGKILL, multi-worker, hparams, export."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from bt_tf import cli, distribute, runs
from bt_tf import train as bt_train
from bt_tf.data import dataset
from bt_tf.evaluation import embedding_cache
from bt_tf.features import MASK_ID, PAD_ID
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.serving import export
from bt_tf.training import trainer
from bt_tf.training.config import TrainConfig
from bt_tf.training.flags import parse
from pipelines import preprocess as pp
from pipelines import synthetic
from tests.tiny import TINY_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bt_tf.train", *args],
        capture_output=True,
        text=True,
        env=kw.pop("env", _env()),
        timeout=kw.pop("timeout", 600),
        cwd=REPO,
    )


def _final_loss(stdout: str) -> float:
    line = [x for x in stdout.splitlines() if x.startswith("final loss")][-1]
    return float(line.split()[-1])


def test_trained_encoder_beats_untrained_on_favorite_genre(tmp_path):
    """Learning, tested by learning: BT pretraining must add >= 5 points of probe accuracy."""
    data = pp.PreprocessConfig(
        output_dir=str(tmp_path / "data"),
        max_len=60,
        kcore_max_iterations=2,
        num_shards=2,
        synthetic=synthetic.SyntheticConfig(
            num_users=1500, num_items=300, num_genres=8, mean_len=30, max_len_seq=60
        ),
    )
    config = TrainConfig.from_settings(
        dict(dim=32, num_blocks=1, projector="256-256"),
        data=data,
        run_dir=str(tmp_path / "run"),
        batch_size=64,
        epochs=6,
        export=False,
    )
    result = trainer.train(config)
    probe = result["probe"]
    trained = probe["trained"]["favorite_genre_accuracy"]
    untrained = probe["untrained_favorite_genre_accuracy"]
    print(f"favorite genre: trained {trained:.3f}, untrained {untrained:.3f}")
    assert trained >= untrained + 0.05
    assert trained > probe["trained"]["majority_accuracy"] + 0.2
    history = result["history"]["loss"]
    assert history[-1] < history[0]


def test_hparams_file_overrides_flags(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"lambd": 0.02, "projector": "128-64"}))
    config = parse(["--lambd=0.5", "--projector=8-8", f"--hparams={path}"])
    assert config.lambd == 0.02 and config.projector == ProjectorConfig((128, 64))
    path.write_text(json.dumps({"lamda": 0.02}))
    with pytest.raises(ValueError, match="unknown flags \\['lamda'\\]"):
        parse([f"--hparams={path}"])


def test_max_epochs_and_its_old_name_epochs():
    assert parse(["--max_epochs=7"]).epochs == parse(["--epochs=7"]).epochs == 7
    assert parse([]).max_epochs == TrainConfig().epochs
    d = TrainConfig()
    assert d.early_stopping_patience > 0 and d.min_steps_per_epoch > 1  # convergence by default
    # An epoch is one pass over the train users, but at least min_steps_per_epoch steps.
    assert d.steps_for(750) == d.min_steps_per_epoch  # ML-100K: 2 batches of 256
    assert d.steps_for(100 * d.batch_size) == 100
    assert TrainConfig.from_settings(dict(steps_per_epoch=3)).steps_for(10**6) == 3


@pytest.mark.parametrize("key", ["epochs", "max_epochs"])
def test_hparams_files_name_the_cap_either_way(tmp_path, key):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({key: 3, "lambd": 0.01}))
    assert parse(["--max_epochs=9", f"--hparams={path}"]).epochs == 3
    path.write_text(json.dumps({"epochs": 3, "max_epochs": 4}))
    with pytest.raises(ValueError, match="both"):
        parse([f"--hparams={path}"])


# `tiny_data` (conftest.py): the tiny job's data, preprocessed once for the session.


def _history_owners(artifact_dir: str, width: int, hold_out: int = 0) -> dict:
    """history (as the trainer's batches cut it, without the last ``hold_out`` items the
    DE validates on) -> (split, user id), over every split."""
    owners = {}
    for split in ("train", "eval", "test"):
        ds = dataset.make_dataset(
            artifact_dir,
            split,
            64,
            max_len=width,
            shuffle=False,
            outputs=["items", "user_id"],
            hold_out=hold_out,
        )
        for batch in ds:
            for items, user in zip(batch["items"].numpy(), batch["user_id"].numpy()):
                owners[tuple(items[items != PAD_ID])] = (split, user.decode())
    return owners


@pytest.mark.parametrize(
    "train_users,buckets", [("train", ""), ("all", ""), ("all", "auto")], ids=str
)
def test_train_users_sets_whose_histories_the_train_stream_reads(
    tmp_path, tiny_data, train_users, buckets
):
    """One pass of the trainer's own stream holds every user of the chosen splits, and an
    epoch is one pass over as many users (the DE keeps the histories, so rows name users)."""
    argv = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", f"--output_dir={tmp_path}"]
    argv += ["--model=de", "--steps_per_epoch=0", "--min_steps_per_epoch=1", "--epochs=1"]
    argv += [f"--train_users={train_users}", f"--bucket_boundaries={buckets}"]
    config = parse(argv)
    run = trainer.prepare_run(config, pp.preprocess(config.data))
    splits = {"train": ["train"], "all": ["train", "eval", "test"]}[train_users]
    num_users = sum(run.meta["num_users"][s] for s in splits)
    assert run.steps == num_users // config.batch_size
    assert config.hold_out == 1  # the DE trains without each history's last item
    owners = _history_owners(
        run.artifact_dir, trainer.data_width(config, run.meta), config.hold_out
    )
    assert len(owners) == sum(run.meta["num_users"].values())  # a history names its user
    # The first floor(2N / B) batches of the repeated stream hold every user at least once.
    stream = trainer.build_inputs(run, initial_epoch=0).train
    seen = set()
    for batch in stream.take(2 * num_users // config.batch_size):
        seen |= {owners[tuple(row[row != PAD_ID])] for row in batch["items"].numpy()}
    assert {split for split, _ in seen} == set(splits)
    assert len(seen) == num_users


def _encoder_variables(checkpoint: str) -> dict:
    reader = tf.train.load_checkpoint(checkpoint)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith("model/encoder/") and k.endswith("VARIABLE_VALUE")
    }


def test_the_run_keeps_and_every_loader_gets_the_best_epoch(tmp_path, tiny_data):
    """val_loss stops improving within a few epochs (a high learning rate; on the tiny
    synthetic data at epoch 6 of 8): the best epoch's weights, not the last one's, are
    what metrics.json names and export/, evaluate and bt_tf.export use."""
    flags = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--no-probe"]
    flags += ["--learning_rate=0.03", "--early_stopping_patience=1"]
    run = tmp_path / "peaked"
    result = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=8"]))
    val = result["history"]["val_loss"]
    best = result["best_epoch"]
    assert result["stop_reason"] == "patience" and result["stopped_early"]
    assert best < result["epochs_completed"] == len(val)  # the last epoch is not the best
    assert best == 1 + int(np.argmin(val)) and result["best_val_loss"] == pytest.approx(min(val))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == best and metrics["monitor"] == "val_loss"
    assert metrics["optimizer_steps"] == 4 * len(val)  # every epoch ran, to the stop
    assert metrics["users_seen"] == 32 * 4 * len(val) and metrics["train_seconds"] > 0

    # The same run capped at the best epoch: its last weights ARE the best epoch's.
    short = tmp_path / "short"
    trainer.train(parse([*flags, f"--output_dir={short}", f"--max_epochs={best}", "--no-export"]))
    want = _encoder_variables(tf.train.latest_checkpoint(str(short / runs.STATE_DIR)))
    last = _encoder_variables(tf.train.latest_checkpoint(str(run / runs.STATE_DIR)))
    kept = _encoder_variables(tf.train.latest_checkpoint(str(run / runs.CHECKPOINT_DIR)))
    assert kept.keys() == want.keys() == last.keys() and kept
    for k in kept:
        np.testing.assert_allclose(kept[k], want[k], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(kept[k], last[k]) for k in kept)

    # Loaders: evaluate/tuner/bt_tf.export restore the run, export/ was written by train.
    ids = tf.constant([list(range(3, 13))])
    by_short, _ = export.restore_encoder(str(short))
    by_eval, _, _ = embedding_cache.restore_run(str(run))
    want_emb = by_short(ids, training=False).numpy()
    np.testing.assert_allclose(by_eval(ids, training=False).numpy(), want_emb, atol=1e-5)
    vocab = dataset.load_vocab(metrics["artifact_dir"])
    loaded = tf.saved_model.load(str(run / "export"))
    served = loaded.signatures["serving_default"](item_ids=tf.constant([vocab[3:13]]))
    np.testing.assert_allclose(served["user_embedding"].numpy(), want_emb, atol=1e-5)

    # A run that stopped early is finished: a rerun with a higher cap reuses it.
    again = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=12"]))
    assert again == metrics


def _history_rows(run_dir) -> list[str]:
    return (run_dir / runs.HISTORY_FILE).read_text().splitlines()


def test_metrics_history_has_every_epoch_across_resumes(tmp_path, tiny_data):
    """A run stopped after 2 of 4 epochs and resumed, and a run whose metrics.json is lost
    or torn after the last epoch: metrics.json's history has all 4 epochs, equal to an
    uninterrupted run's (history.csv beside the checkpoints, `runs.read_history`; the
    slow test below kills a process at epoch 2 of 6)."""
    flags = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--no-probe", "--no-export"]
    flags += ["--early_stopping_patience=0"]
    whole = trainer.train(parse([*flags, f"--output_dir={tmp_path / 'whole'}", "--max_epochs=4"]))
    assert whole["epochs_completed"] == 4 and len(whole["history"]["loss"]) == 4
    assert {"loss", "val_loss"} <= set(whole["history"])
    assert len(_history_rows(tmp_path / "whole")) == 1 + 4  # header + one row per epoch

    run = tmp_path / "resumed"
    first = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=2"]))
    assert len(first["history"]["loss"]) == 2
    resumed = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=4"]))
    assert resumed["history"] == whole["history"]  # every epoch, the same values
    assert resumed["final"] == whole["final"] and len(_history_rows(run)) == 1 + 4

    # Killed after the last epoch, before metrics.json: the rerun rebuilds it from disk.
    (run / runs.METRICS_FILE).unlink()
    rebuilt = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=4"]))
    assert rebuilt["history"] == whole["history"] and rebuilt["best_epoch"] == whole["best_epoch"]
    # A torn metrics.json (cut short): a notice, then the same rebuild, never a traceback.
    text = (run / runs.METRICS_FILE).read_text()
    (run / runs.METRICS_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(runs.UnreadableRunFile, match="rerun the same bt_tf.train command"):
        runs.read_metrics(str(run))
    again = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=4"]))
    assert again["history"] == whole["history"]
    assert json.loads((run / runs.METRICS_FILE).read_text())["history"] == whole["history"]


def test_history_csv_drops_rows_a_kill_left_beyond_the_checkpoint(tmp_path):
    """Rows of epochs after the last checkpointed one, repeated rows and a torn last line
    are what a kill between a row and its checkpoint leaves: the resume keeps one row
    per checkpointed epoch, the last of each."""
    (tmp_path / runs.HISTORY_FILE).write_text(
        "epoch,loss,val_loss\n0,5.0,6.0\n1,4.0,5.0\n1,4.5,5.5\n2,3.0,4.0\n3,2.0"
    )
    assert runs.read_history(str(tmp_path), 2) == {"loss": [5.0, 4.5], "val_loss": [6.0, 5.5]}
    runs.trim_history(str(tmp_path), 2)
    assert _history_rows(tmp_path) == ["epoch,loss,val_loss", "0,5.0,6.0", "1,4.5,5.5"]
    runs.trim_history(str(tmp_path), 0)  # a fresh start
    assert not (tmp_path / runs.HISTORY_FILE).exists() and runs.read_history(str(tmp_path), 3) == {}


def test_a_torn_config_json_is_one_error_line_that_says_how_to_recover(tmp_path, tiny_data):
    flags = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--no-probe", "--no-export"]
    run = tmp_path / "run"
    trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=1"]))
    text = (run / runs.CONFIG_FILE).read_text()
    (run / runs.CONFIG_FILE).write_text(text[:40])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(bt_train.main, [*flags, f"--output_dir={run}", "--max_epochs=1"])
    assert exit_info.value.code == 2
    with pytest.raises(runs.UnreadableRunFile) as err:
        runs.read_config(str(run))
    message = str(err.value)
    assert message.startswith(f"{run / runs.CONFIG_FILE} is unreadable: not valid JSON (")
    assert "delete it and rerun the same bt_tf.train command" in message and "\n" not in message


@pytest.mark.slow  # ~60 s: a subprocess killed mid-run, then resumed
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Killed (SIGKILL) at epoch 2 of 6 and resumed: the same weights, and metrics.json's
    history has all 6 epochs, equal to an uninterrupted run's."""
    data_flags = [f"--data_output_dir={tmp_path / 'data'}", *TINY_FLAGS, "--epochs=6", "--no-probe"]
    data_flags += ["--early_stopping_patience=0"]
    whole = _run([*data_flags, f"--output_dir={tmp_path / 'whole'}", "--no-export"])
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bt_tf.train", *data_flags, f"--output_dir={run_dir}"]
    cmd.append("--no-export")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO
    )
    deadline = time.time() + 300
    state = run_dir / runs.STATE_DIR / "checkpoint"
    while time.time() < deadline and "ckpt-2" not in (state.read_text() if state.exists() else ""):
        time.sleep(0.02)
    assert state.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()  # it really died before the end
    killed_at = tf.train.get_checkpoint_state(str(run_dir / runs.STATE_DIR))
    epochs_before = runs.checkpoint_number(killed_at.model_checkpoint_path)
    assert 2 <= epochs_before < 6, epochs_before

    resumed = _run([*data_flags, f"--output_dir={run_dir}", "--no-export"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / runs.STATE_DIR}/ckpt-{epochs_before}" in resumed.stdout
    assert "Epoch 1/6" not in resumed.stdout  # the resumed process did not start over
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert a["epochs_completed"] == b["epochs_completed"] == 6
    # The same early-stopping record: the same epoch kept, the same counts.
    for key in ("best_epoch", "optimizer_steps", "users_seen", "stop_reason"):
        assert a[key] == b[key], key
    assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-4)
    # Every epoch's metrics, the killed process's and the resumed one's, as uninterrupted.
    assert len(b["history"]["loss"]) == len(b["history"]["val_loss"]) == 6
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=1e-4)

    again = _run([*data_flags, f"--output_dir={run_dir}", "--no-export"])
    assert again.returncode == 0 and "is complete" in again.stdout  # finished runs are reused


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# One process, two replicas: MirroredStrategy over two logical CPUs (configured
# before anything else uses TensorFlow), then the training command.
_TWO_REPLICAS = """
import sys
import bt_tf
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bt_tf import cli, train
cli.run_main(train.main, sys.argv[1:])
"""


def _network_variables(run_dir) -> dict:
    """Encoder and projector weights (incl. batch-norm statistics) of a run's checkpoint."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith(("model/encoder/", "model/projector/"))
    }


@pytest.mark.slow
def test_two_workers_train_like_one_process_with_two_replicas(tmp_path, tiny_data):
    """Two single-CPU workers (multi_worker, TF_CONFIG on 127.0.0.1) end with the weights
    of one process running two replicas (mirrored over two logical CPUs).

    Why the global batches are the same (`distribute.replica_contexts`): replica r of
    R reads shard r of the train users and draws its views from seeds that
    include r, whether the replicas are workers or devices of one machine. So
    the test fails if the workers read the wrong shards, draw the same views
    (the former bug: every worker used seed id 0), or do not combine gradients
    and batch statistics over both. Validation batches are those of one device
    in both, so val_loss and the kept epoch agree too. Dropout is on: each
    replica's draws are the same in both set-ups. A GRU encoder: the
    transformer has weights without a gradient (attention key biases, the last
    layer norm's offset, which the projector's batch norm cancels), which Adam
    moves by amplified round-off, differently in every set-up.
    """
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    flags = [
        f"--data_output_dir={tiny_data}",
        *TINY_FLAGS,
        "--encoder=gru",
        "--epochs=2",
        "--no-probe",
        "--no-export",
    ]

    def start(command, output_dir, **env):
        return subprocess.Popen(
            [*command, *flags, f"--output_dir={output_dir}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(_env(), **env),
            cwd=REPO,
        )

    workers, replicas = tmp_path / "workers", tmp_path / "replicas"
    procs = [
        start(
            [sys.executable, "-m", "bt_tf.train", "--strategy=multi_worker"],
            workers,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    # After the workers: on a busy machine a third process could starve one of them
    # past the coordination service's heartbeat timeout.
    procs.append(start([sys.executable, "-c", _TWO_REPLICAS, "--strategy=mirrored"], replicas))
    outputs.append(procs[-1].communicate(timeout=900))
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    a = json.loads((workers / "metrics.json").read_text())  # written by the chief only
    b = json.loads((replicas / "metrics.json").read_text())
    assert a["epochs_completed"] == b["epochs_completed"] == 2
    assert a["best_epoch"] == b["best_epoch"] and a["optimizer_steps"] == b["optimizer_steps"] == 8
    for key in ("loss", "val_loss"):  # val_loss: every worker validates, on one device's batches
        np.testing.assert_allclose(a["history"][key], b["history"][key], rtol=1e-5)
    assert _final_loss(outputs[0][0]) == pytest.approx(_final_loss(outputs[2][0]), rel=1e-6)
    ours, theirs = _network_variables(workers), _network_variables(replicas)
    assert sorted(ours) == sorted(theirs) and len(ours) >= 8
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert not (workers / ".workers" / "worker-1").exists()  # scratch cleaned


def test_each_replica_draws_its_own_views(tiny_data):
    """Views come from stateless seeds that include the replica's index: with one seed id
    for all (the former multi-worker bug) two replicas' masks would coincide wherever
    both have an item; drawn apart, they agree about as often as two coin flips."""
    config = parse([*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--augment=mask:0.5"])
    artifact_dir = pp.preprocess(config.data)  # reused
    views = []
    for replica in range(2):
        context = tf.distribute.InputContext(2, replica, 2)
        ds = trainer.make_train_data(
            config, artifact_dir, "train", 32, repeat=False, seed=0, input_context=context
        )
        views.append(next(iter(ds))["view1"].numpy())
        assert views[-1].shape[0] == 16  # batch_size / replicas
    both = (views[0] != PAD_ID) & (views[1] != PAD_ID)
    masked = [v == MASK_ID for v in views]
    assert both.sum() > 100
    agreement = np.mean(masked[0][both] == masked[1][both])
    assert 0.3 < agreement < 0.7, agreement


def test_replica_contexts_give_each_replica_its_own_shard():
    """Replica r of R reads shard r: one pipeline feeding two replicas builds shards 0 and 1,
    the second of two single-replica workers builds shard 1."""

    def ids(pipelines, pipeline, replicas):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        return [
            (c.num_input_pipelines, c.input_pipeline_id, c.num_replicas_in_sync)
            for c in distribute.replica_contexts(context)
        ]

    assert ids(1, 0, 1) == [(1, 0, 1)]  # one device: the whole data, as before
    assert ids(1, 0, 2) == [(2, 0, 2), (2, 1, 2)]  # mirrored, two replicas
    assert ids(2, 1, 2) == [(2, 1, 2)]  # multi_worker, worker 1 of 2
    assert ids(2, 1, 4) == [(4, 2, 4), (4, 3, 4)]  # worker 1 of 2, two replicas each


# ~20 s on 2 quiet cores (two processes one after the other). In the default suite:
# `python -m bt_tf.train` to the end (test_locks.py), bt_tf.export's main (test_export.py).
@pytest.mark.slow
def test_export_cli_on_a_trained_run(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    done = _run(
        [
            f"--data_output_dir={tiny_data}",
            f"--output_dir={run_dir}",
            *TINY_FLAGS,
            "--epochs=1",
            "--no-probe",
        ]  # fmt: skip
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "export" / "saved_model.pb").exists()
    again = subprocess.run(
        [sys.executable, "-m", "bt_tf.export", f"--run_dir={run_dir}"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["encoder"]["dim"] == 16 and os.path.isdir(config["artifact_dir"])


@pytest.mark.slow  # ~10 s on 2 quiet cores: a run directory of an old layout (three trainings)
def test_a_run_directory_from_before_early_stopping_still_loads(tmp_path, tiny_data):
    """Old layout: config.json with `epochs` and without the newer settings, the last
    epoch's full state in checkpoints/, no train_state/: reused, loaded, resumable."""
    flags = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--no-probe", "--no-export"]
    run = tmp_path / "old"
    trainer.train(parse([*flags, f"--output_dir={run}", "--epochs=1"]))
    # Rewrite it the way the code before train_state/ left it.
    (run / runs.CHECKPOINT_DIR / "checkpoint").unlink()
    for path in (run / runs.CHECKPOINT_DIR).iterdir():
        path.unlink()
    (run / runs.CHECKPOINT_DIR).rmdir()
    (run / runs.STATE_DIR).rename(run / runs.CHECKPOINT_DIR)
    (run / runs.HISTORY_FILE).unlink()
    config = json.loads((run / "config.json").read_text())
    for key in ("min_steps_per_epoch", "min_delta"):
        del config[key]
    config["early_stopping_patience"] = 0
    (run / "config.json").write_text(json.dumps(config))
    metrics = json.loads((run / "metrics.json").read_text())
    old_keys = ("epochs_completed", "stopped_early", "steps_per_epoch", "train_seconds")
    old = {k: metrics[k] for k in (*old_keys, "history", "final", "artifact_dir", "vocab_size")}
    (run / "metrics.json").write_text(json.dumps(old))

    # Reused as it is, by the command that made it (and by today's defaults).
    assert trainer.train(parse([*flags, f"--output_dir={run}", "--epochs=1"])) == old
    # Loaded by export and evaluate.
    encoder, loaded_config = export.restore_encoder(str(run))
    assert loaded_config["epochs"] == 1
    embedding_cache.restore_run(str(run))
    # A higher cap trains on from its last epoch.
    more = trainer.train(parse([*flags, f"--output_dir={run}", "--max_epochs=2"]))
    # Its history starts where history.csv does: the epoch trained after the resume.
    assert more["epochs_completed"] == 2 and len(more["history"]["loss"]) == 1
    assert more["optimizer_steps"] == 8 and more["best_epoch"] in (1, 2)
    export.restore_encoder(str(run))
