"""Every user mistake the issue found gives ONE ``error:`` line and exit code 2.

A table of bad inputs (flags, files, the environment) -> the error line each
command prints. The commands run in this process through `bt_tf.cli.run_main`
(the entry points' own ``main``, as ``python -m`` runs them); the rows that
need another process do run one: a file or directory root cannot read
(``setpriv`` drops root's permission override) and a full disk (a 64 KiB
tmpfs, where mounting one is allowed). ``pytest -rP`` shows the table.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bt_tf import cli
from bt_tf import embed as bt_embed
from bt_tf import train as bt_train
from bt_tf.serving import export
from pipelines import preprocess
from tests.tiny import TINY_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_LOG = ["--dataset=interactions", "--user_col=u", "--item_col=i", "--time_col=t"]
# setpriv: root without the capabilities that let it read any file (DAC override)
NO_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


@pytest.fixture(scope="module")
def saved_model(runs, tmp_path_factory) -> str:
    """The shared tiny BT run's encoder exported (the run copied first)."""
    run = str(tmp_path_factory.mktemp("errors") / "bt")
    shutil.copytree(runs["bt"], run)
    return export.export_run(run)


def _in_process(capsys, main, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def _start(prefix, module, argv) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", module, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _mount_tmpfs(path) -> bool:
    """A 64 KiB tmpfs at `path`, if this process may mount one (root in most containers)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _embed_inputs(tmp_path) -> dict[str, bytes]:
    """Name -> the bytes of an --input file with that mistake on its second line."""
    good = b'{"user_id": "u1", "item_ids": ["3", "4"]}\n'
    return {
        "malformed JSON line": good + b'{"user_id": "u2", "item_ids": [\n',
        "non-object line": good + b'["u2", ["3"]]\n',
        "null user_id": good + b'{"user_id": null, "item_ids": ["3"]}\n',
        "float user_id": good + b'{"user_id": 1.5, "item_ids": ["3"]}\n',
        "item_ids not a list": good + b'{"user_id": "u2", "item_ids": "3 4"}\n',
        "non-UTF-8 bytes": good + b'{"user_id": "u\xff2", "item_ids": ["3"]}\n',
        "empty input file": b"",
    }


def test_every_user_mistake_is_one_error_line_with_exit_code_2(
    tmp_path, capsys, saved_model, tiny_data
):
    table = []  # (mistake, command, exit code, stderr)

    def row(mistake, command, code, stderr):
        table.append((mistake, command, code, stderr))

    train = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", "--no-probe", "--no-export"]
    run = f"--output_dir={tmp_path / 'run'}"

    # The rows that need processes of their own start first and run alongside the rest.
    started = {}  # mistake -> (command, process, cleanup)
    # An unreadable file and directory: root without its permission override.
    if os.geteuid() != 0 or shutil.which("setpriv"):
        prefix = NO_OVERRIDE if os.geteuid() == 0 else []
        for what in ("file", "directory"):
            locked = tmp_path / f"unreadable_{what}"
            locked.mkdir()
            (locked / "log.csv").write_text("u,i,t\na,b,1700000000\n")
            target = locked / "log.csv" if what == "file" else locked
            os.chmod(target, 0)
            argv = [*OWN_LOG, f"--data_dir={target}", f"--output_dir={tmp_path}/d"]
            proc = _start(prefix, "pipelines.preprocess", argv)
            started[f"an unreadable {what}"] = ("pipelines.preprocess", proc, target)
    # A full disk under the run directory.
    mount = tmp_path / "full"
    mount.mkdir()
    mounted = _mount_tmpfs(mount)
    if mounted:
        argv = [*train, "--max_epochs=1", f"--output_dir={mount / 'run'}"]
        started["a full disk (64 KiB tmpfs)"] = (
            "bt_tf.train",
            _start([], "bt_tf.train", argv),
            None,
        )

    try:
        # Files the pipeline reads.
        log = tmp_path / "log"
        log.mkdir()
        (log / "log.parquet").write_text("u,i,t\na,b,1700000000\n")  # CSV named .parquet
        argv = [*OWN_LOG, f"--data_dir={log}", f"--output_dir={tmp_path}/d"]
        code, err = _in_process(capsys, preprocess.main, argv)
        row("a log.parquet that is CSV", "pipelines.preprocess", code, err)

        # Output directories that are files.
        (tmp_path / "a_file").write_text("x")
        for flag in ("--output_dir", "--data_output_dir"):
            argv = [*train, run, f"{flag}={tmp_path / 'a_file'}"]
            row(f"{flag} is a file", "bt_tf.train", *_in_process(capsys, bt_train.main, argv))

        # Model flags, checked before anything is built.
        for flags in (
            ["--dim=0"],
            ["--dropout=1.5"],
            ["--dim=15", "--num_heads=4"],
            ["--lambd=-1"],
            ["--learning_rate=-1"],
        ):
            code, err = _in_process(capsys, bt_train.main, [*train, run, *flags])
            row(" ".join(flags), "bt_tf.train", code, err)
        assert not (tmp_path / "run" / "config.json").exists()  # nothing trained

        # bt_tf.embed --input files.
        for n, (mistake, content) in enumerate(_embed_inputs(tmp_path).items()):
            path = tmp_path / "users.jsonl"
            path.write_bytes(content)
            argv = [f"--saved_model={saved_model}", f"--input={path}"]
            argv += [f"--output_dir={tmp_path / 'emb' / str(n)}", "--no-progress"]
            row(f"--input: {mistake}", "bt_tf.embed", *_in_process(capsys, bt_embed.main, argv))
    finally:
        for mistake, (command, proc, target) in started.items():
            _, err = proc.communicate(timeout=900)
            row(mistake, command, proc.returncode, err)
            if target is not None:
                os.chmod(target, 0o755)
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)

    width = max(len(r[0]) for r in table)
    print(
        "\n"
        + "\n".join(
            f"{m:{width}}  {c:21} {code}  {e.strip().splitlines()[-1]}" for m, c, code, e in table
        )
    )
    for mistake, _, code, err in table:
        assert code == 2, (mistake, err[-3000:])
        # One error line, the last; a command that had started work may have logged before.
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.endswith(errors[0] + "\n"), (mistake, err[-3000:])
        assert "Traceback" not in err
        if mistake not in started:  # found before any work: nothing else is printed
            assert err.count("\n") == 1, (mistake, err[-3000:])
    messages = {m: e for m, _, _, e in table}
    assert "log.parquet is not a readable Parquet file" in messages["a log.parquet that is CSV"]
    assert "a_file as an output directory: it is a file" in messages["--output_dir is a file"]
    assert "a_file is a file" in messages["--data_output_dir is a file"]
    assert "--dim=0: expected an integer >= 1" in messages["--dim=0"]
    assert "--dropout=1.5: expected 0 <= dropout < 1" in messages["--dropout=1.5"]
    assert "not divisible by --num_heads=4" in messages["--dim=15 --num_heads=4"]
    assert "--lambd=-1.0" in messages["--lambd=-1"]
    assert "--learning_rate=-1.0" in messages["--learning_rate=-1"]
    for mistake in _embed_inputs(tmp_path):
        if mistake != "empty input file":
            assert messages[f"--input: {mistake}"].rstrip().endswith("users.jsonl:2)"), mistake
    assert "holds no user" in messages["--input: empty input file"]
    if "an unreadable file" in messages:
        assert "log.csv: Permission denied" in messages["an unreadable file"]
        assert "unreadable_directory; Permission denied" in messages["an unreadable directory"]
    if mounted:
        assert "No space left on device" in messages["a full disk (64 KiB tmpfs)"]


def test_overlong_ids_and_lines_go_to_bad_records(tmp_path):
    """Well-formed CSV rows whose item id is 5,000 characters or 2 MB (the issue's was
    200 MB) are bad records with their reasons, not numpy arrays that wide per row."""
    log = tmp_path / "log"
    log.mkdir()
    rows = ["u,i,t"] + [f"user{n % 100},item{n % 37},{1_700_000_000 + n}" for n in range(2_000)]
    rows.insert(700, "user1," + "x" * 2_000_000 + ",1700000000")  # line 701
    rows.insert(900, "user2," + "y" * 5_000 + ",1700000000")  # line 901
    (log / "log.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "data"
    argv = [*OWN_LOG, f"--data_dir={log}", f"--output_dir={out}", "--max_bad_fraction=0.01"]
    version = preprocess.main(argv)
    meta = json.loads(open(os.path.join(version, "metadata.json")).read())
    assert meta["bad_records"]["total"] == 2
    path = os.path.join(version, "bad_records", "log.csv.jsonl")
    long_line, long_id = [json.loads(line) for line in open(path)]
    assert long_line["line"] == 701 and long_line["reason"].startswith("line of 2,000,0")
    assert long_line["reason"].endswith("bytes (at most 1,048,576 are parsed)")
    assert long_id["line"] == 901
    assert long_id["reason"].startswith("i is 5,000 characters long (at most 1,024): 'yyy")
