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

from bt_tf import config as cfg
from bt_tf import train
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
    config = cfg.TrainConfig(
        data=data,
        run_dir=str(tmp_path / "run"),
        dim=32,
        num_blocks=1,
        projector="256-256",
        batch_size=64,
        epochs=6,
        export=False,
    )
    result = train.train(config)
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
    config = cfg.parse(["--lambd=0.5", "--projector=8-8", f"--hparams={path}"])
    assert config.lambd == 0.02 and config.projector == "128-64"
    path.write_text(json.dumps({"lamda": 0.02}))
    with pytest.raises(ValueError, match="unknown flags \\['lamda'\\]"):
        cfg.parse([f"--hparams={path}"])


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    data_flags = [f"--data_output_dir={tmp_path / 'data'}", *TINY_FLAGS, "--epochs=4", "--no-probe"]
    whole = _run([*data_flags, f"--output_dir={tmp_path / 'whole'}", "--no-export"])
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bt_tf.train", *data_flags, f"--output_dir={run_dir}"]
    cmd.append("--no-export")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "checkpoints" / "checkpoint").exists():
        time.sleep(0.05)
    assert (run_dir / "checkpoints" / "checkpoint").exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()  # it really died before the end

    resumed = _run([*data_flags, f"--output_dir={run_dir}", "--no-export"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert a["epochs_completed"] == b["epochs_completed"] == 4
    assert len(b["history"]["loss"]) < 4  # the resumed process did not start over
    # Same batches, same weights: the resumed epochs replay the uninterrupted ones.
    resumed_epochs = len(b["history"]["loss"])
    np.testing.assert_allclose(
        b["history"]["loss"], a["history"]["loss"][-resumed_epochs:], rtol=1e-4
    )

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


def test_two_workers_on_localhost_train_together(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    flags = [
        f"--data_output_dir={tmp_path / 'data'}",
        f"--output_dir={tmp_path / 'run'}",
        *TINY_FLAGS,
        "--epochs=1",
        "--strategy=multi_worker",
        "--no-probe",
        "--no-export",
    ]
    procs = []
    for index in range(2):
        env = _env()
        task = {"type": "worker", "index": index}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bt_tf.train", *flags],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    losses = [_final_loss(out) for out, _ in outputs]
    assert np.isfinite(losses).all() and losses[0] == pytest.approx(losses[1], rel=1e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())  # chief only
    assert metrics["epochs_completed"] == 1
    assert not (tmp_path / "run" / ".workers" / "worker-1").exists()  # scratch cleaned


def test_export_cli_on_a_trained_run(tmp_path):
    run_dir = tmp_path / "run"
    done = _run(
        [
            f"--data_output_dir={tmp_path / 'data'}",
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
