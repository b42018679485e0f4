"""Nothing lost when runs collide or die: atomic files, one process per output directory.

`bt_tf.atomic` writes a file completely or not at all; `bt_tf.locks` lets one
process at a time write an output directory, names the holder to the second
one, and frees the lock of a process that died. The collisions run as real
processes: two preprocessings into one data directory, two trainings into one
run directory, each started side by side.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from bt_tf import atomic, locks
from bt_tf.errors import UserError
from tests.tiny import TINY_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_DATA = ["--synthetic_users=300", "--synthetic_items=100", "--num_shards=2"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def _start(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append((p.returncode, stdout, stderr))
    return out


# --------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_json(str(path), {"a": 1}, indent=2)
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("}\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~_umask()  # as open() would create it, not mkstemp's 0600

    # Content that cannot be written (NaN with allow_nan=False, a failing writer) leaves
    # the previous file whole, and no temporary file behind.
    with pytest.raises(ValueError):
        atomic.write_json(str(path), {"a": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError):
        with atomic.replacing(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]

    # Writers that pick a format by extension see the target's extension.
    with atomic.replacing(str(tmp_path / "plot.png")) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"\x89PNG")
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_reader_never_sees_half_a_file(tmp_path):
    """A reader polling a file that a writer rewrites 200 times sees only whole versions."""
    path = tmp_path / "config.json"
    atomic.write_json(str(path), {"n": 0, "pad": "x" * 200_000})
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from bt_tf import atomic
                for n in range(1, 201):
                    atomic.write_json({str(path)!r}, {{"n": n, "pad": "x" * 200_000}})
                """
            ),
        ],
        env=_env(),
        cwd=REPO,
    )
    seen = set()
    while writer.poll() is None:
        seen.add(json.loads(path.read_text())["n"])  # raises on a torn read
    assert writer.returncode == 0 and json.loads(path.read_text())["n"] == 200
    assert len(seen) > 1


# --------------------------------------------------------------------------
# Locks

_HOLD = """
import sys, time
from bt_tf import locks
with locks.hold_dir(sys.argv[1], hint=" or use another --output_dir"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(directory, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(directory), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_a_held_directory_stops_a_second_process_with_the_holders_details(tmp_path, caplog):
    out = tmp_path / "run"
    holder = _holder(out, 60)
    try:
        with pytest.raises(locks.DirectoryLocked) as err:
            with locks.hold_dir(str(out), hint=" or use another --output_dir"):
                pass
        message = str(err.value)
        assert isinstance(err.value, UserError) and "\n" not in message
        assert message.startswith(f"{out} is in use by another process: PID {holder.pid} on ")
        assert "started 20" in message and "UTC" in message and "python -c" in message
        assert "wait for it to finish or use another --output_dir" in message
        info = json.loads((out / ".lock.json").read_text())
        assert info["pid"] == holder.pid and info["released"] is False
    finally:
        holder.kill()
        holder.wait()

    # Its holder was killed: the lock is free, taken over with a notice naming it.
    with caplog.at_level("WARNING", logger="bt_tf.locks"):
        with locks.hold_dir(str(out)):
            assert locks.is_held(str(out / locks.LOCK_FILE))
            with locks.hold_dir(str(out)):  # the same process may take it again
                pass
            assert json.loads((out / ".lock.json").read_text())["pid"] == os.getpid()
    notices = [r.getMessage() for r in caplog.records]
    assert any(f"took over the lock of {out} from PID {holder.pid}" in m for m in notices)
    assert json.loads((out / ".lock.json").read_text())["released"] is True
    assert not locks.is_held(str(out / locks.LOCK_FILE))
    caplog.clear()
    with caplog.at_level("WARNING", logger="bt_tf.locks"), locks.hold_dir(str(out)):
        pass  # released properly: no notice
    assert not caplog.records


def test_an_output_directory_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"cannot use .*/file as an output directory: it is a file"):
        locks.ensure_dir(str(tmp_path / "file"))
    with pytest.raises(UserError, match=r"file/run as an output directory: .*/file is a file"):
        locks.ensure_dir(str(tmp_path / "file" / "run"))


# --------------------------------------------------------------------------
# Collisions of real commands


def _records(shard: str) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(shard, compression_type="GZIP"))


# ~15 s on 2 quiet cores. In the default suite: a held data version stops a preprocessing
# (below).
@pytest.mark.slow
def test_two_preprocessings_into_one_directory(tmp_path):
    """Started together: one builds the version, the other stops with the lock's error
    line naming it; the published version holds exactly the records metadata.json counts."""
    out = str(tmp_path / "data")
    results = _finish(
        [_start("pipelines.preprocess", *SMALL_DATA, f"--output_dir={out}") for _ in range(2)]
    )
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    winner = next(r for r in results if r[0] == 0)
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].count("\n") == 1 and " is in use by another process: PID " in loser[2]
    version = winner[1].split()[1]  # "wrote DIR"
    assert f"error: {version} is in use" in loser[2]
    meta = json.loads(open(os.path.join(version, "metadata.json")).read())
    for split, users in meta["num_users"].items():
        folder = os.path.join(version, f"Split-{split}")
        assert sum(_records(os.path.join(folder, f)) for f in os.listdir(folder)) == users
    parent = os.path.dirname(version)
    assert sorted(os.listdir(parent)) == sorted(
        os.path.basename(version) + s for s in ("", ".lock", ".lock.json")
    )  # no build directory left


_HOLD_FILE = """
import sys, time
from bt_tf import locks
with locks.hold(sys.argv[1], what=sys.argv[2]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_held_run_directory_or_data_version_stops_training_and_preprocessing(tmp_path, tiny_data):
    """The slow collision tests' cheaper siblings: another live process holds the run
    directory (the data version's lock file): `trainer.train` (`preprocess`) in this process
    stops with the lock's error naming the holder, and writes nothing."""
    import posixpath

    from bt_tf.training import trainer
    from bt_tf.training.flags import parse
    from pipelines import preprocess

    run = tmp_path / "run"
    argv = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", f"--output_dir={run}"]
    config = parse([*argv, "--no-probe", "--no-export", "--max_epochs=1"])
    holder = _holder(run, 60)
    try:
        with pytest.raises(locks.DirectoryLocked) as err:
            trainer.train(config)
        assert str(err.value).startswith(f"{run} is in use by another process: PID {holder.pid} ")
        assert not (run / "config.json").exists() and not (run / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()

    data = parse([*TINY_FLAGS, f"--data_output_dir={tmp_path / 'data'}"]).data
    parent = tmp_path / "data" / data.dataset
    parent.mkdir(parents=True)
    version = preprocess.version_of(data, preprocess.resolve_inputs(data))
    final = posixpath.join(str(parent), version)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FILE, final + ".lock", final],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(locks.DirectoryLocked) as err:
            preprocess.preprocess(data)
        assert str(err.value).startswith(f"{final} is in use by another process: PID {holder.pid} ")
        assert sorted(os.listdir(parent)) == [version + ".lock", version + ".lock.json"]
    finally:
        holder.kill()
        holder.wait()


# ~15 s on 2 quiet cores. In the default suite: the test above. (`bt-train` to the end as a
# process of its own: CI's default job, .ci/run.)
@pytest.mark.slow
def test_two_trainings_into_one_run_directory(tmp_path, tiny_data):
    """Different settings, one run directory: one trains, the other stops at once."""
    run = str(tmp_path / "run")
    common = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", f"--output_dir={run}"]
    common += ["--no-probe", "--no-export", "--max_epochs=3"]
    results = _finish(
        [_start("bt_tf.train", *common, f"--lambd={lambd}") for lambd in (0.01, 0.02)]
    )
    assert sorted(code for code, _, _ in results) == [0, 2], [r[2][-2000:] for r in results]
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].count("\n") == 1
    assert loser[2].startswith(f"error: {run} is in use by another process: PID ")
    config = json.loads(open(os.path.join(run, "config.json")).read())
    assert config["lambd"] in (0.01, 0.02)
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert len(metrics["history"]["loss"]) == 3  # one run's epochs, not two runs' mixed
    events = [f for _, _, fs in os.walk(os.path.join(run, "logs")) for f in fs]
    assert len([f for f in events if "events" in f]) == 2  # one train, one validation file
