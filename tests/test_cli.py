"""A command line that explains itself: help, flag checks before any work, one-line errors.

The commands run as subprocesses (`python -m ...`, and the console scripts
`bt-train`, ... when this checkout is pip-installed), started side by side
because TensorFlow's import dominates each one's time. In-process tests cover
what needs no subprocess: every flag of every parser has a help and shows its
default, and `bt_tf.cli.run_main` maps user errors to exit code 2.
"""

import argparse
import csv
import importlib
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap
import tomllib

import pytest

from bt_tf import cli, console, embed, evaluate, export, reproduce, train
from bt_tf.errors import UserError
from bt_tf.training import flags
from pipelines import preprocess
from tuning import compare, search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {
    "bt_tf.train": train.build_parser,
    "bt_tf.evaluate": evaluate.build_parser,
    "bt_tf.export": export.build_parser,
    "bt_tf.reproduce": reproduce.build_parser,
    "bt_tf.embed": embed.build_parser,
    "pipelines.preprocess": preprocess.build_parser,
    "tuning.search": search.build_parser,
}


def _pyproject_scripts() -> dict[str, str]:
    """pyproject.toml's console scripts: name -> "module:function"."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _installed() -> importlib.metadata.Distribution | None:
    """bt_tf's distribution in this interpreter's site-packages (not the checkout's egg-info)."""
    where = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    return next(iter(importlib.metadata.distributions(name="bt_tf", path=where)), None)


def _scripts_dir() -> str | None:
    """Where pip put the console scripts, if bt_tf is installed from this checkout
    (`pip install -e .`); None if it is not installed or installed from elsewhere."""
    dist = _installed()
    url = json.loads((dist and dist.read_text("direct_url.json")) or "{}").get("url")
    return sysconfig.get_path("scripts") if url == pathlib.Path(REPO).as_uri() else None


def _need_scripts() -> str:
    where = _scripts_dir()
    if where is None:
        pytest.skip("bt_tf is not pip-installed from this checkout: no console scripts to test")
    return where


def _start(module: str, *args: str, cwd: str = REPO) -> subprocess.Popen:
    """`python -m module args`; a console script's name (`bt-train`) runs that script."""
    command = [sys.executable, "-m", module]
    if module in cli.CONSOLE_SCRIPTS:
        command = [os.path.join(_need_scripts(), module)]
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG"):
        env.pop(name, None)  # the entry point decides
    return subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def _finish(procs: dict) -> dict:
    """name -> (exit code, stdout, stderr) of processes started side by side."""
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        out[name] = (proc.returncode, stdout, stderr)
    return out


# --------------------------------------------------------------------------
# In process


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_flag_has_a_help_and_shows_its_default(module):
    parser = ENTRY_POINTS[module]()
    assert parser.prog == f"python -m {module}"
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 1
    for action in options:
        assert action.help, f"{module} {action.option_strings[0]} has no help"
        assert "default" in formatter._get_help_string(action), action.option_strings
    text = parser.format_help()
    assert f"usage: python -m {module}" in text and "--verbose" in text


def test_commands_that_pass_flags_on_list_them():
    groups = {
        module: {g.title: g for g in ENTRY_POINTS[module]()._action_groups}
        for module in ("bt_tf.reproduce", "tuning.search", "bt_tf.evaluate")
    }
    training = groups["bt_tf.reproduce"][reproduce.TRAINING_GROUP]
    passed = {s for a in training._group_actions for s in a.option_strings}
    assert {"--lambd", "--projector", "--augment", "--batch_size", "--dataset"} <= passed
    assert "--model" not in passed  # set by reproduce for each run
    assert "--label_fractions" in {
        s
        for a in groups["bt_tf.reproduce"][reproduce.EVALUATION_GROUP]._group_actions
        for s in a.option_strings
    }
    # tuning.search has its own --max_epochs (Hyperband) and --output_dir: the
    # training group keeps --epochs only and leaves them to the tuner.
    training = groups["tuning.search"][search.TRAINING_GROUP]
    passed = {s for a in training._group_actions for s in a.option_strings}
    assert "--epochs" in passed and "--lambd" in passed
    assert "--max_epochs" not in passed and "--output_dir" not in passed
    assert any(title.startswith("evaluation flags") for title in groups["bt_tf.evaluate"])


def test_per_dataset_defaults_show_in_help():
    shown = f"(default: {flags.dataset_defaults('ml-100k')['projector']})"
    for build in (train.build_parser, reproduce.build_parser, search.build_parser):
        text = " ".join(build(["--dataset=ml-100k"]).format_help().split())
        assert shown in text and "(default: 1024-1024-1024)" not in text, build


def test_structured_flags_are_checked_while_parsing(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"lambd": 0.01,\n "projector": }\n')
    cases = {
        "--projector=abc": "argument --projector: Projector spec 'abc'",
        "--projector=512-0": "argument --projector:",
        "--augment=blur:0.3": "argument --augment: Augmentation policy 'blur:0.3': unknown name",
        "--augment=mask:2": "argument --augment:",
        f"--hparams={tmp_path / 'no.json'}": "argument --hparams: .*no.json: no such file",
        f"--hparams={bad_json}": r"argument --hparams: .*bad.json, line 2 column 15: not valid",
        "--strategy=gpu": "argument --strategy: invalid choice",
        "--item_init=pca": "argument --item_init: invalid choice: 'pca'",
    }
    for flag, message in cases.items():
        with pytest.raises(UserError, match=message):
            flags.parse([flag])
    for flag, message in {
        "--label_fractions=0,0.5": r"argument --label_fractions: '0,0.5': 0.0 are not fractions",
        "--label_fractions=a": "argument --label_fractions: 'a' is not a comma-separated list",
        "--batch_sizes=64,1": "argument --batch_sizes: '64,1': 1 are not batch sizes >= 2",
        "--models=bt,xx": "argument --models:",
        "--lambd=abc": "argument --lambd: invalid float value",  # a training flag
    }.items():
        with pytest.raises(UserError, match=message):
            reproduce.parse([flag])
    with pytest.raises(UserError, match="argument --lambd_range: '1' is not LOW,HIGH"):
        search.parse(["--lambd_range=1"])
    with pytest.raises(UserError, match="argument --projector:"):
        search.parse(["--projector=1-x"])


def test_hparams_values_are_checked_and_name_the_file_and_key(tmp_path):
    path = tmp_path / "h.json"
    for values, message in [
        ({"batch_size": "64"}, "'batch_size' must be an integer"),
        ({"lambd": "a"}, "'lambd' must be a number"),
        ({"probe": 1}, "'probe' must be true or false"),
        ({"projector": "64-x"}, "'projector': Projector spec '64-x'"),
        ({"augment": "mask"}, "'augment': Augmentation policy 'mask'"),
        ({"verbose": True}, r"unknown flags \['verbose'\]"),
    ]:
        path.write_text(json.dumps(values))
        with pytest.raises(UserError, match=f"{path}: {message}"):
            flags.parse([f"--hparams={path}"])
    path.write_text(json.dumps({"batch_size": 64.0, "lambd": 1, "jit_compile": True}))
    config = flags.parse([f"--hparams={path}"])
    assert (config.batch_size, config.lambd, config.jit_compile) == (64, 1.0, True)


def test_item_table_flags_parse_and_a_bad_value_is_one_error_line(capsys):
    config = flags.parse(["--item_init=svd", "--freeze_item_embeddings"])
    assert (config.item_init, config.freeze_item_embeddings) == ("svd", True)
    config = flags.parse([])
    assert (config.item_init, config.freeze_item_embeddings) == ("random", False)
    assert config.to_json()["item_init"] == "random"
    text = " ".join(train.build_parser([]).format_help().split())
    assert "--item_init {random,svd}" in text and "(default: random)" in text
    assert "--freeze_item_embeddings, --no-freeze_item_embeddings" in text
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(train.main, ["--item_init=pca"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --item_init: invalid choice: 'pca'")


def test_run_main_exit_codes(capsys):
    def fails(error):
        def main(argv):
            raise error

        return main

    for error in [UserError("--x=1 is wrong"), FileNotFoundError("no such run: r")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(fails(error), [])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err == f"error: {error}\n"  # one line, no traceback
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(fails(UserError("multi\nline")), ["--verbose"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" in err and err.endswith("error: multi line\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.run_main(fails(ZeroDivisionError("bug")), [])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda argv: 3, [])
    assert exit_info.value.code == 3
    parser = cli.ArgumentParser("x.y")
    parser.add_argument("--n", type=int, default=1, help="n")
    with pytest.raises(UserError, match=r"argument --n: invalid int value: 'a' \(see python -m x"):
        parser.parse_args(["--n=a"])
    assert isinstance(parser.parse_args([]), argparse.Namespace)


def test_the_environments_refusals_are_user_errors_and_bugs_keep_their_traceback(tmp_path, capsys):
    """OSErrors of permissions, paths and full disks, and TensorFlow's file-system errors,
    are one error line (exit 2; --verbose adds the traceback); other errors are bugs."""
    import errno

    import tensorflow as tf

    def failing(make):
        def main(argv):
            raise make()

        return main

    (tmp_path / "a_file").write_text("x")

    def os_makedirs_on_a_file():
        os.makedirs(tmp_path / "a_file" / "run")

    def tf_write_into_a_missing_dir():
        with tf.io.gfile.GFile(str(tmp_path / "no" / "such" / "dir" / "x.json"), "w") as f:
            f.write("x")

    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    for cause, expected in (
        (os_makedirs_on_a_file, f"error: {tmp_path / 'a_file' / 'run'}: Not a directory"),
        (tf_write_into_a_missing_dir, f"error: {tmp_path / 'no'}"),
        (full_disk, f"error: {tmp_path / 'x'}: No space left on device"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(lambda argv, cause=cause: cause(), [])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(expected), err
    with pytest.raises(SystemExit):
        cli.run_main(lambda argv: full_disk(), ["--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].endswith("No space left on device")
    # Bugs: an OSError without a user's errno, TensorFlow's invalid argument, a KeyError.
    for bug in (
        lambda: OSError("socket closed"),
        lambda: tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"),
        lambda: KeyError("x"),
    ):
        with pytest.raises((OSError, tf.errors.InvalidArgumentError, KeyError)):
            cli.run_main(failing(bug), [])


def test_console_scripts_run_the_entry_points_under_their_own_name(monkeypatch):
    scripts = _pyproject_scripts()
    assert set(scripts) == set(cli.CONSOLE_SCRIPTS)
    assert set(cli.CONSOLE_SCRIPTS.values()) == set(ENTRY_POINTS)
    ran = []
    monkeypatch.setattr(cli, "console", ran.append)
    for target in scripts.values():
        module, function = target.split(":")
        assert module == console.__name__
        getattr(console, function)()
    assert ran == list(scripts)
    monkeypatch.setitem(cli._console_progs, "python -m bt_tf.train", "bt-train")
    assert train.build_parser().format_usage().startswith("usage: bt-train ")
    with pytest.raises(UserError, match=r"\(see bt-train --help\)"):
        train.build_parser().parse_args(["--lambd=x"])
    assert evaluate.build_parser().prog == "python -m bt_tf.evaluate"


def test_console_module_imports_neither_tensorflow_nor_beam():
    """A console script imports `bt_tf.console` before `cli.startup` can quiet anything."""
    code = (
        "import sys, bt_tf.console; "
        "print(sorted(m for m in ('tensorflow', 'apache_beam', 'keras_tuner') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout == "[]\n"


def test_console_scripts_are_installed():
    where = _need_scripts()
    entry_points = _installed().entry_points
    installed = {e.name: e.value for e in entry_points if e.group == "console_scripts"}
    assert installed == _pyproject_scripts()
    for name in installed:
        assert os.access(os.path.join(where, name), os.X_OK), name


def test_start_up_output_is_held_back_unless_the_start_fails():
    """What libraries print while they are imported (C++ code writes to file descriptor 2)
    is dropped once `run_main` starts, and shown if the program dies before."""
    env = dict(os.environ, PYTHONPATH=REPO)
    start = "import os; from bt_tf import cli; cli.startup([]); os.write(2, b'import noise\\n'); "
    runs = {
        "ok": start + "cli.run_main(lambda argv: print('ran'), [])",
        "dies": start + "raise SystemExit('start-up failed')",
        "verbose": "import os; from bt_tf import cli; cli.startup(['--verbose']); "
        "os.write(2, b'import noise\\n'); cli.run_main(lambda argv: 0, ['--verbose'])",
    }
    done = {
        name: subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
        )
        for name, code in runs.items()
    }
    assert (done["ok"].returncode, done["ok"].stdout, done["ok"].stderr) == (0, "ran\n", "")
    assert done["dies"].returncode == 1
    assert done["dies"].stderr == "import noise\nstart-up failed\n"
    assert (done["verbose"].returncode, done["verbose"].stderr) == (0, "import noise\n")


# --------------------------------------------------------------------------
# As subprocesses


@pytest.mark.slow  # 7 TensorFlow start-ups, 14 with the console scripts (~45 s per 7 on 2 cores)
def test_help_of_every_entry_point():
    commands = {m: f"python -m {m}" for m in ENTRY_POINTS}
    if _scripts_dir() is not None:
        commands.update({script: script for script in cli.CONSOLE_SCRIPTS})
    results = _finish({m: _start(m, "--help") for m in commands})
    for module, (code, stdout, stderr) in results.items():
        assert code == 0, (module, stderr[-2000:])
        assert stdout.startswith(f"usage: {commands[module]}"), module
        assert "(default: " in stdout and "--verbose" in stdout, module
        assert stderr == "", (module, stderr[-2000:])  # no start-up noise
    assert "(default: 1024-1024-1024)" in " ".join(results["bt_tf.train"][1].split())
    assert reproduce.TRAINING_GROUP in results["bt_tf.reproduce"][1]
    assert "--lambd LAMBD" in results["tuning.search"][1]


def test_a_console_script_helps_and_fails_like_python_m(tmp_path):
    """`bt-train`: the same quiet start-up, help, and one-line user error (exit code 2)."""
    results = _finish(
        {
            "help": _start("bt-train", "--help"),
            "error": _start("bt-train", f"--output_dir={tmp_path / 'run'}", "--projector=abc"),
        }
    )
    code, stdout, stderr = results["help"]
    assert code == 0 and stderr == "", stderr[-2000:]
    assert stdout.startswith("usage: bt-train ") and "--verbose" in stdout
    assert "(default: 1024-1024-1024)" in " ".join(stdout.split())
    code, _, stderr = results["error"]
    assert code == 2 and stderr.count("\n") == 1, stderr[-2000:]
    assert stderr.startswith("error: argument --projector: Projector spec 'abc' is not")
    assert stderr.endswith("(see bt-train --help)\n") and not (tmp_path / "run").exists()


def test_user_errors_exit_2_with_one_line_before_any_work(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"lambd": 0.01,\n "projector": }\n')
    log = tmp_path / "log"
    log.mkdir()
    (log / "purchases.csv").write_text("customer,sku,ts\nc1,s1,2023-11-14\n")
    data = str(tmp_path / "data")
    train_dirs = [f"--data_output_dir={data}", f"--output_dir={tmp_path / 'run'}"]
    cases = {
        "projector": ("bt_tf.train", *train_dirs, "--projector=abc"),
        "augment": ("bt_tf.reproduce", *train_dirs, "--augment=blur:0.3"),
        "hparams": ("bt_tf.train", *train_dirs, f"--hparams={bad_json}"),
        "label_fractions": ("bt_tf.evaluate", "--runs=r", "--label_fractions=0.1,1.5"),
        "column": (
            "pipelines.preprocess",
            "--dataset=interactions",
            f"--data_dir={log}",
            f"--output_dir={data}",
            "--item_col=sku",
            "--time_col=ts",
        ),
        "verbose": ("bt_tf.train", *train_dirs, "--projector=abc", "--verbose"),
    }
    results = _finish({name: _start(*args) for name, args in cases.items()})
    expected = {
        "projector": "error: argument --projector: Projector spec 'abc' is not",
        "augment": "error: argument --augment: Augmentation policy 'blur:0.3'",
        "hparams": f"error: argument --hparams: {bad_json}, line 2 column 15: not valid JSON",
        "label_fractions": "error: argument --label_fractions: '0.1,1.5': 1.5 are not fractions",
        "column": f"error: {log / 'purchases.csv'}: no column 'user_id' (--user_col)",
    }
    for name, start in expected.items():
        code, _, stderr = results[name]
        assert code == 2, (name, stderr[-2000:])
        assert stderr.count("\n") == 1 and stderr.startswith(start), (name, stderr[-2000:])
    code, _, stderr = results["verbose"]
    assert code == 2 and "Traceback (most recent call last)" in stderr
    assert stderr.splitlines()[-1].startswith(expected["projector"])
    # Nothing was preprocessed or trained: the flags were checked first.
    assert not os.path.exists(data) and not (tmp_path / "run").exists()


def _purchases_with_bad_rows(log_dir) -> str:
    """The issue's log: 1,800 purchases (90 customers x 20) in the README's "Your own data"
    columns, 4 of them with a timestamp that is not one: 4 / 1,800 > --max_bad_fraction."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "purchases.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer", "sku", "ts", "stars"])
        for row in range(1800):
            customer, k = divmod(row, 20)
            ts = "yesterday" if row in (100, 500, 900, 1300) else 1_700_000_000 + k * 86_400
            writer.writerow([f"cust-{customer}", f"sku-{(customer + 7 * k) % 60}", ts, 1 + k % 5])
    return path


def _assert_one_error_line(results: dict, expected: dict) -> None:
    for module, start in expected.items():
        code, _, stderr = results[module]
        assert code == 2, (module, stderr[-3000:])
        assert stderr.count("\n") == 1 and stderr.startswith(start), (module, stderr[-3000:])


def _own_purchases(tmp_path) -> list[str]:
    """The flags that read `_purchases_with_bad_rows`'s log (written into ``tmp_path/log``)."""
    log = os.path.dirname(_purchases_with_bad_rows(tmp_path / "log"))
    return [
        "--dataset=interactions",
        f"--data_dir={log}",
        "--user_col=customer",
        "--item_col=sku",
        "--time_col=ts",
        "--rating_col=stars",
    ]


def test_pipeline_and_tuning_user_errors_are_one_line_in_process(tmp_path, capsys):
    """The cases of the slow test below through `cli.run_main` in this process (the entry
    points' own ``main``, as ``python -m`` runs them): the pipeline's bad-record check under
    bt_tf.train, a config check of tuning.search, the flags of a tuning.compare recipe."""
    own, data = _own_purchases(tmp_path), str(tmp_path / "data")
    cases = {
        "bt_tf.train": (
            train.main,
            [*own, f"--data_output_dir={data}/train", f"--output_dir={tmp_path}/run"],
            "error: 4 of 1800 input records (0.2222%) could not be parsed (purchases.csv: 4)",
        ),
        "tuning.search": (
            search.main,
            ["--dataset=interactions", f"--output_dir={tmp_path}/search"],
            "error: --dataset=interactions needs --data_dir",
        ),
        "tuning.compare": (
            compare.main,
            [
                f"--output_dir={tmp_path}/compare",
                "--variants=big:lambd=abc",
                f"--data_output_dir={data}/compare",
            ],
            "error: argument --lambd: invalid float value: 'abc'",
        ),
    }
    for module, (main, argv, start) in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(main, argv)
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 2, (module, stderr[-3000:])
        assert stderr.count("\n") == 1 and stderr.startswith(start), (module, stderr[-3000:])
    assert not os.path.exists(f"{data}/compare")  # every recipe is checked before the data


@pytest.mark.slow  # four TensorFlow start-ups (~20 s on 2 quiet cores); the test above in process
def test_pipeline_and_tuning_user_errors_are_one_line(tmp_path):
    """One ``error:`` line and exit code 2 whichever layer finds the error: the pipeline's
    bad-record check (the issue's log, alone and under bt_tf.train), a config check, the
    flags of a recipe."""
    own = _own_purchases(tmp_path)
    data = str(tmp_path / "data")
    cases = {
        "pipelines.preprocess": (*own, f"--output_dir={data}/preprocess"),
        "bt_tf.train": (*own, f"--data_output_dir={data}/train", f"--output_dir={tmp_path}/run"),
        "tuning.search": ("--dataset=interactions", f"--output_dir={tmp_path}/search"),
        "tuning.compare": (
            f"--output_dir={tmp_path}/compare",
            "--variants=big:lambd=abc",
            f"--data_output_dir={data}/compare",
        ),
    }
    bad_records = "error: 4 of 1800 input records (0.2222%) could not be parsed (purchases.csv: 4)"
    results = _finish({module: _start(module, *args) for module, args in cases.items()})
    _assert_one_error_line(
        results,
        {
            "pipelines.preprocess": bad_records,
            "bt_tf.train": bad_records,
            "tuning.search": "error: --dataset=interactions needs --data_dir",
            "tuning.compare": "error: argument --lambd: invalid float value: 'abc'",
        },
    )
    assert not os.path.exists(f"{data}/compare")  # every recipe is checked before the data


@pytest.mark.slow  # seven TensorFlow start-ups (~45 s on 2 cores)
def test_export_embed_and_benchmark_user_errors_are_one_line(tmp_path):
    no_run = f"--run_dir={tmp_path}/no_run"
    cases = {
        "bt_tf.export": (no_run,),
        "bt_tf.embed": (no_run, f"--output_dir={tmp_path}/embeddings"),
        "benchmarks.evaluate": ("--seeds=many", f"--work_dir={tmp_path}/bench"),
        "benchmarks.input_throughput": (f"--artifact_dir={tmp_path}/none",),
        "benchmarks.preprocess": ("--mean_len=long", f"--work_dir={tmp_path}/bench"),
        "benchmarks.probe_agreement": (f"--runs={tmp_path}/no_run",),
        "benchmarks.train_throughput": ("--lengths=ml-20m",),
    }
    results = _finish({module: _start(module, *args) for module, args in cases.items()})
    _assert_one_error_line(
        results,
        {
            "bt_tf.export": f"error: No config.json in '{tmp_path}/no_run'",
            "bt_tf.embed": f"error: No config.json in '{tmp_path}/no_run'",
            "benchmarks.evaluate": "error: argument --seeds: invalid int value: 'many'",
            "benchmarks.input_throughput": f"error: No metadata.json in '{tmp_path}/none'",
            "benchmarks.preprocess": "error: argument --mean_len: invalid float value: 'long'",
            "benchmarks.probe_agreement": f"error: No config.json in '{tmp_path}/no_run'",
            "benchmarks.train_throughput": "error: argument --lengths: invalid choice: 'ml-20m'",
        },
    )
    assert not (tmp_path / "bench").exists()  # the flags are checked before any data is made
    assert not (tmp_path / "embeddings").exists()


# ~12 s on 2 quiet cores (a preprocessing in a process of its own). In the default suite: a
# console script's quiet start-up (test_a_console_script_helps_and_fails_like_python_m).
@pytest.mark.slow
def test_preprocessing_is_quiet_unless_verbose(tmp_path):
    """The default job's preprocessing (synthetic data, made small) prints its result on
    stdout and no warning on stderr: no library banner, no Beam type-hint warning
    (`test_transforms` checks the hints themselves). With --verbose the libraries speak as
    usual."""
    small = ["--synthetic_users=300", "--synthetic_items=100", "--num_shards=2"]
    results = _finish(
        {
            "quiet": _start("pipelines.preprocess", *small, f"--output_dir={tmp_path}"),
            "verbose": _start("pipelines.preprocess", "--verbose", "--help"),  # imports only
        }
    )
    code, stdout, stderr = results["quiet"]
    assert code == 0 and stdout.startswith("wrote "), stderr[-3000:]
    assert not [line for line in stderr.splitlines() if "WARNING" in line], stderr[-3000:]
    assert "type hint" not in stderr and "type-checking" not in stderr, stderr[-3000:]
    code, stdout, stderr = results["verbose"]
    assert code == 0 and stdout.startswith("usage:")
    assert stderr, "--verbose shows what the libraries print while they are imported"


def test_spawned_workers_start_as_quietly_as_their_parent(tmp_path):
    """A "spawn" child imports its parent's main module again (as ``__mp_main__``, with
    its argv): an entry point that starts such workers is quiet in them too, and the
    workers' own log lines show (`bt_tf.evaluate`'s probe workers)."""
    (tmp_path / "spawner.py").write_text(
        textwrap.dedent(
            """
            import logging, multiprocessing, os, sys
            from bt_tf import cli

            if __name__ in cli.MAIN_NAMES:
                cli.startup(sys.argv[1:])
            os.write(2, b"import noise\\n")  # what TensorFlow's C++ code writes on import

            def work(x):
                logging.info("worker line %d", x)
                return x

            def main(argv):
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    print(pool.map(work, [7]))

            if __name__ == "__main__":
                cli.run_main(main)
            elif __name__ == cli.SPAWNED_MAIN:
                cli.end_startup()
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}")
    done = {
        argv: subprocess.run(
            [sys.executable, "-m", "spawner", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        for argv in ((), ("--verbose",))
    }
    quiet, verbose = done[()], done[("--verbose",)]
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "[7]\n", "worker line 7\n")
    assert verbose.returncode == 0 and verbose.stderr.count("import noise") == 2  # both
