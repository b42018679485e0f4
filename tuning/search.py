"""KerasTuner search over lambda, projector size (and augmentation): `python -m tuning.search`.

    python -m tuning.search --dataset=ml-1m --tuner=bayesian --max_trials=30 \\
        --output_dir=tuning_runs/ml1m
    python -m tuning.search --dataset=ml-1m --tuner=hyperband --max_epochs=50
    python -m tuning.search --dataset=yelp --tuner=random --max_trials=20 --distributed_workers=4
    python -m bt_tf.train --dataset=ml-1m --hparams=tuning_runs/ml1m/best_hparams.json
    python -m tuning.search --dataset=ml-1m --model=de --objective=next_item \\
        --output_dir=tuning_runs/ml1m_de      # the dual encoder: temperature, learning rate
    python -m bt_tf.train --dataset=ml-1m --model=de --hparams=tuning_runs/ml1m_de/best_hparams.json

Every `bt_tf.train` flag works and sets the training of every trial
(`--epochs` per trial for random/bayesian; Hyperband's budgets go up to
`--max_epochs`). `--output_dir` here is the SEARCH directory (trials live
under `<output_dir>/search/trial_<id>/run/`); set the preprocessing output
with `--data_output_dir` as in `bt_tf.train`.

Searched (see `tuning.space`), by `--model`:
- bt (default): lambda log-uniform over `--lambd_range`, projector width from
  `--projector_widths` times depth from `--projector_depths`; with
  `--search_augment` also mask gamma, reorder beta, crop eta and the learning
  rate (`--learning_rate_range`).
- de: the temperature (log-uniform over `--temperature_range`) and the
  learning rate (log-uniform over `--learning_rate_range`); nothing of BT.
- bt+de: all of bt's, plus temperature, learning rate and `bt_weight`
  (log-uniform over `--bt_weight_range`).
- any model: with `--search_pooling` also the pooling (mean or last), with
  `--search_item_init` also the item table's init (random or svd).
Pinning: `--pin=lambd=0.005` (repeatable, only names the model has), and any
of `--lambd`, `--projector`, `--augment`, `--learning_rate`, `--temperature`,
`--bt_weight`, `--pooling`, `--item_init` that applies to the model and is
given explicitly on the command line (or in `--hparams`) is pinned as well;
pinned values are recorded with every trial and written to best_hparams.json.

Objective (`--objective`, see `tuning.objective`): favorite_genre (default),
next_item (HR@10) or liked_item (AUC), on EVAL users; or `claim`: all three
tasks of the paper's claim at scarce labels (`--objective_fractions`, default
5% and 10%), cross-fitted over the train and eval users, as the mean ratio to
the `svd` floor with its 95% interval in trials.md (`--objective_stat=lower`
maximizes the interval's low end). The test split is never read during a
search.

Resume: run the same command again. KerasTuner reloads its state from
`<output_dir>/search/`; a trial that was running when the search died is
retried in its directory, where training resumes from its last epoch
checkpoint. Raise `--max_trials` to extend a finished search; other
changes are refused (use `--overwrite` or another `--output_dir`).

Distributed (KerasTuner's chief/worker mode): `--distributed_workers=N`
preprocesses once, then starts a chief (`KERASTUNER_TUNER_ID=chief`, runs the
oracle as a gRPC server, runs no trials) and N workers (`tuner0`..) on this
machine, logging to `<output_dir>/logs/<id>.log`. To use other machines, run
the same command (without `--distributed_workers`) with
`KERASTUNER_ORACLE_IP`/`KERASTUNER_ORACLE_PORT` set to the chief's address and
`KERASTUNER_TUNER_ID=chief` on one machine, `tuner<i>` on the others;
Hyperband needs `--output_dir` on a filesystem shared by all of them (a
continued trial copies its parent's run directory).

Outputs in `--output_dir`: best_hparams.json, trials.md,
objective_vs_lambda.png, trial_events.jsonl (which tuner ran which trial),
search_config.json; `--export_best` retrains the best configuration in
`<output_dir>/best_run` and exports its encoder there.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import (--objective=claim)
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

import bt_tf  # noqa: F401  (One Keras: before TensorFlow and KerasTuner)
from bt_tf import atomic, locks, runs
from bt_tf.errors import UserError
from bt_tf.training import flags
from bt_tf.training.config import RESUMABLE_CHANGES, TrainConfig, comparable_settings
from bt_tf.training.trainer import train
from pipelines import preprocess
from tuning import report, space
from tuning.objective import OBJECTIVES, STATS, CrossfitSpec, objective_name
from tuning.tuner import BarlowTwinsTuner

TUNERS = ("random", "bayesian", "hyperband")
PROJECT_NAME = "search"
SEARCH_CONFIG = "search_config.json"
EVENTS = "trial_events.jsonl"
BEST_RUN = "best_run"
LAUNCHER_PID = "TUNING_LAUNCHER_PID"  # set for the chief and workers that launch_local starts
# Settings a rerun may change without invalidating the search.
_RERUN_CHANGES = ("max_trials", "distributed_workers", "oracle_ip", "oracle_port", "export_best")
_RERUN_TRAIN_CHANGES = ("run_dir", "probe", "export", "strategy", "data")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The tuner's own settings (the training settings are a `TrainConfig`)."""

    output_dir: str
    tuner: str = "bayesian"
    objective: str = "favorite_genre"
    max_trials: int = 20  # random / bayesian
    max_epochs: int = 27  # hyperband: the largest per-trial budget
    hyperband_factor: int = 3
    hyperband_iterations: int = 1
    num_initial_points: int | None = None  # bayesian; None: KerasTuner's 3 x dimensions
    tuner_seed: int = 1
    space: space.SearchSpace = space.SearchSpace()
    crossfit: CrossfitSpec = CrossfitSpec()  # how --objective=claim probes a trial
    distributed_workers: int = 0
    oracle_ip: str = "127.0.0.1"
    oracle_port: int = 0  # 0: a free port
    export_best: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.tuner not in TUNERS:
            raise ValueError(f"--tuner={self.tuner!r}: expected one of {TUNERS}")
        objective_name(self.objective)
        if self.max_trials < 1 or self.max_epochs < 1:
            raise ValueError("--max_trials and --max_epochs must be >= 1")
        if self.tuner_seed < 1:
            raise ValueError("--tuner_seed must be >= 1 (KerasTuner treats 0 as 'random')")
        if self.distributed_workers < 0:
            raise ValueError("--distributed_workers must be >= 0")

    @property
    def project_dir(self) -> str:
        return os.path.join(self.output_dir, PROJECT_NAME)

    @property
    def events_path(self) -> str:
        return os.path.join(self.output_dir, EVENTS)

    @property
    def objective_name(self) -> str:
        return objective_name(self.objective)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["space"] = self.space.to_json()
        return out


# --------------------------------------------------------------------------
# Library: oracle, tuner, search (plain arguments, no flags or environment)


def make_oracle(search: SearchConfig):
    """The KerasTuner oracle `--tuner` names, maximizing the eval objective."""
    import keras_tuner

    common = dict(
        objective=keras_tuner.Objective(search.objective_name, direction="max"),
        hyperparameters=search.space.hyperparameters(),
        seed=search.tuner_seed,
    )
    if search.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=search.max_trials, **common)
    if search.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=search.max_trials, num_initial_points=search.num_initial_points, **common
        )
    return keras_tuner.oracles.HyperbandOracle(
        max_epochs=search.max_epochs,
        factor=search.hyperband_factor,
        hyperband_iterations=search.hyperband_iterations,
        **common,
    )


def make_tuner(search: SearchConfig, base: TrainConfig):
    """A `BarlowTwinsTuner` on the search's project dir (reloads its state if any).

    Its role (single process, chief, worker) is KerasTuner's: the
    ``KERASTUNER_*`` environment variables of this process.
    """
    return BarlowTwinsTuner(
        make_oracle(search),
        base,
        search.objective,
        crossfit=search.crossfit,
        directory=search.output_dir,
        project_name=PROJECT_NAME,
        events_path=search.events_path,
    )


def _comparable(search: SearchConfig, base: TrainConfig) -> dict:
    skip = _RERUN_CHANGES + ("overwrite", "output_dir")
    s = {k: v for k, v in search.to_json().items() if k not in skip}
    t = {k: v for k, v in base.to_json().items() if k not in _RERUN_TRAIN_CHANGES}
    t["data"] = base.data.output_settings()  # where the data lives may change, not what it is
    return json.loads(json.dumps({"search": s, "train": t}))  # tuples -> lists, as on disk


def prepare(search: SearchConfig, base: TrainConfig) -> None:
    """Starts over (``overwrite``) or checks that a rerun continues the same search.

    Writes ``search_config.json``. Raises UserError (a ValueError) naming the differing
    settings when the directory holds a different search.
    """
    os.makedirs(search.output_dir, exist_ok=True)
    path = os.path.join(search.output_dir, SEARCH_CONFIG)
    if search.overwrite:
        outputs = (report.BEST_HPARAMS, report.TRIALS_MD, report.PLOT, "logs")
        for name in (PROJECT_NAME, BEST_RUN, EVENTS, SEARCH_CONFIG, *outputs):
            target = os.path.join(search.output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    new = _comparable(search, base)
    if os.path.exists(path) and os.path.isdir(search.project_dir):
        with open(path) as f:
            old = json.load(f)
        old = {k: old.get(k) for k in new}
        changed = [
            f"{part}.{key}"
            for part in new
            for key in sorted(set(new[part]) | set(old[part] or {}))
            if (old[part] or {}).get(key) != new[part].get(key)
        ]
        if changed:
            raise UserError(
                f"{search.output_dir} holds a search with different settings "
                f"({', '.join(changed)}); rerun with the same flags to continue it (only "
                f"{', '.join(_RERUN_CHANGES)} may change), or pass --overwrite or another "
                "--output_dir to start a new one."
            )
    full = {"search": search.to_json(), "train": base.to_json()}
    atomic.write_json(path, {**new, "full": full}, indent=2)


def write_reports(search: SearchConfig) -> dict:
    """best_hparams.json, trials.md and the plot from the trials on disk."""
    return report.write_reports(
        search.project_dir,
        search.output_dir,
        search.objective_name,
        include_epochs=search.tuner == "hyperband",
    )


def export_best(search: SearchConfig, base: TrainConfig, best: dict) -> dict:
    """Retrains the best trial's configuration in ``<output_dir>/best_run`` and exports it.

    A ``best_run`` of an earlier, different best configuration is replaced; one of
    the same configuration is resumed or reused (see `bt_tf.training.train`).
    """
    epochs = int(best["epochs"]) if best.get("epochs") else base.epochs
    run_dir = os.path.join(search.output_dir, BEST_RUN)
    config = space.trial_config(
        base, best["values"], run_dir, epochs=epochs, probe=True, export=True
    )
    recorded = runs.recorded_settings(run_dir)
    if recorded is not None:
        old = comparable_settings(recorded)
        new = comparable_settings(json.loads(json.dumps(config.to_json())))
        if any(old.get(k) != v for k, v in new.items() if k not in RESUMABLE_CHANGES):
            print(f"replacing {run_dir}: it holds an earlier best configuration")
            shutil.rmtree(run_dir)
    return train(config)


def run_search(search: SearchConfig, base: TrainConfig, *, role: str = "single") -> dict:
    """Runs this process's part of the search and returns its summary.

    Args:
      search, base: tuner and training settings.
      role: "single" (one process runs every trial), "chief" (serves the
        oracle until the workers are done, then writes the reports) or
        "worker" (runs trials it gets from the chief; writes no reports).
        KerasTuner reads the matching ``KERASTUNER_*`` variables itself.

    Returns:
      ``{"best_hparams", "best", "trials"}`` for single/chief (see
      `tuning.report.write_reports`), ``{}`` for a worker.
    """
    if role != "worker":
        prepare(search, base)
    preprocess.preprocess(base.data)  # once, before any trial (no-op when the artifacts exist)
    tuner = make_tuner(search, base)
    if role == "single":
        tuner.search_space_summary()
    tuner.search()
    if role == "worker":
        return {}
    summary = write_reports(search)
    _print_summary(search, summary)
    return summary


def _print_summary(search: SearchConfig, summary: dict) -> None:
    done = report.completed(summary["trials"])
    print(f"\n{len(done)} completed trials of {len(summary['trials'])} in {search.project_dir}")
    if summary["best"] is not None:
        best = summary["best"]
        print(f"best: trial {best['trial_id']}, {search.objective_name}={best['objective']:.4f}")
        print(f"      {json.dumps(summary['best_hparams'], sort_keys=True)}")
    for name in (report.BEST_HPARAMS, report.TRIALS_MD, report.PLOT):
        print(f"wrote {os.path.join(search.output_dir, name)}")


# --------------------------------------------------------------------------
# Local chief + workers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGKILL when ``parent_pid`` (the launcher) dies, so
    no orphaned chief or worker keeps running after the launcher is killed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent_pid:  # the launcher died before prctl
        os.kill(os.getpid(), signal.SIGKILL)


def launch_local(
    argv: Sequence[str], search: SearchConfig, env: dict, *, poll_seconds: float = 1.0
) -> None:
    """Starts a chief and ``search.distributed_workers`` workers as subprocesses
    running ``python -m tuning.search ARGV`` with KerasTuner's variables, and
    waits for all of them. If one fails, the others are killed and the error
    names its log file."""
    port = search.oracle_port or free_port(search.oracle_ip)
    log_dir = os.path.join(search.output_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    # The launcher already prepared the directory: the children must not start over.
    command = [sys.executable, "-m", "tuning.search", *argv, "--no-overwrite", "--no-export_best"]
    base_env = dict(
        env,
        KERASTUNER_ORACLE_IP=search.oracle_ip,
        KERASTUNER_ORACLE_PORT=str(port),
        **{LAUNCHER_PID: str(os.getpid())},
    )
    ids = ["chief"] + [f"tuner{i}" for i in range(search.distributed_workers)]
    procs: dict[str, subprocess.Popen] = {}
    print(f"oracle at {search.oracle_ip}:{port}; logs in {log_dir}/{{{','.join(ids)}}}.log")
    try:
        for tuner_id in ids:
            with open(os.path.join(log_dir, f"{tuner_id}.log"), "ab") as log:
                procs[tuner_id] = subprocess.Popen(
                    command,
                    env=dict(base_env, KERASTUNER_TUNER_ID=tuner_id),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        while True:
            codes = {tid: p.poll() for tid, p in procs.items()}
            failed = [tid for tid, code in codes.items() if code not in (None, 0)]
            if failed:
                tid = failed[0]
                raise RuntimeError(
                    f"{tid} exited with code {codes[tid]}; see {log_dir}/{tid}.log. "
                    "Rerun the same command to resume the search."
                )
            if all(code == 0 for code in codes.values()):
                return
            time.sleep(poll_seconds)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------
# Command line


def _csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x.strip())


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = _csv(float)(text)
    except ValueError:
        low = high = None
    if low is None or not 0 < low < high:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH with 0 < LOW < HIGH")
    return low, high


def _fractions(text: str) -> tuple[float, ...]:
    parse = cli.comma_list(float, "label fractions in (0, 1]", lambda v: 0 < v <= 1)
    return tuple(parse(text))


def _positive_ints(what: str):
    parse = cli.comma_list(int, f"{what} (integers >= 1)", lambda v: v >= 1)
    return lambda text: tuple(parse(text))


TRAINING_GROUP = "training flags (passed to bt_tf.train, for every trial)"


_BOOL = argparse.BooleanOptionalAction
# The tuner's own flags in help order: (flag name, argparse keywords). The default is the
# field of `SearchConfig` or `space.SearchSpace` that the flag sets (the name without
# dashes) unless the keywords give one.
_SEARCH_FLAGS = (
    ("--output_dir", {"default": None, "help": "search dir (none: tuning_runs/<dataset>)"}),
    ("--tuner", {"choices": TUNERS, "help": "KerasTuner oracle"}),
    ("--objective", {"choices": sorted(OBJECTIVES), "help": "probe metric on eval users that "
     "the search maximizes"}),
    ("--objective_fractions", {"type": _fractions, "default": CrossfitSpec.fractions,
     "help": "claim objective: label fractions (the mean over them)"}),
    ("--objective_seeds", {"type": int, "default": CrossfitSpec.seeds, "help": "claim "
     "objective: label seeds per fraction"}),
    ("--objective_stat", {"choices": STATS, "default": CrossfitSpec.stat, "help": "claim "
     "objective: the mean ratio to svd, or the low end of its 95%% interval"}),
    ("--max_trials", {"type": int, "help": "trials of random/bayesian"}),
    ("--max_epochs", {"type": int, "help": "hyperband: the largest per-trial budget in epochs "
     "(--epochs sets the epochs of a random/bayesian trial)"}),
    ("--hyperband_factor", {"type": int, "help": "hyperband reduction"}),
    ("--hyperband_iterations", {"type": int, "help": "hyperband brackets run"}),
    ("--num_initial_points", {"type": int, "help": "bayesian: random trials first (none: "
     "KerasTuner's 3 x dimensions)"}),
    ("--tuner_seed", {"type": int, "help": "seed of the oracle (>= 1)"}),
    ("--lambd_range", {"type": _range, "help": "lambda range LOW,HIGH (log)"}),
    *(
        (f"--{name}_range", {"type": _range, "help": f"{name} range LOW,HIGH (log; searched "
         "for the models that use it)"})
        for name in ("learning_rate", "temperature", "bt_weight")
    ),
    ("--projector_widths", {"type": _positive_ints("widths"), "help": "projector widths "
     "searched"}),
    ("--projector_depths", {"type": _positive_ints("depths"), "help": "projector depths "
     "(layers) searched"}),
    ("--search_augment", {"action": _BOOL, "help": "also search mask/reorder/crop strengths "
     "and the learning rate"}),
    ("--search_pooling", {"action": _BOOL, "help": "also search the encoder's pooling (mean "
     "or last; any model)"}),
    ("--search_item_init", {"action": _BOOL, "help": "also search the init of the encoder's "
     "input item table (random or svd, see --item_init; any model)"}),
    ("--pin", {"action": "append", "default": [], "metavar": "NAME=VALUE", "help": "fix a "
     f"dimension, repeatable; NAME in {', '.join(space.PIN_NAMES)}"}),
    ("--distributed_workers", {"type": int, "help": "tuner workers started on this machine "
     "(0: one process runs the search)"}),
    ("--oracle_ip", {"help": "chief address (--distributed_workers)"}),
    ("--oracle_port", {"type": int, "help": "chief port (0: a free port)"}),
    ("--export_best", {"action": _BOOL, "help": "retrain the best configuration in "
     "OUTPUT_DIR/best_run and export it"}),
    ("--overwrite", {"action": _BOOL, "help": "start the search over (delete the trials and "
     "reports in OUTPUT_DIR)"}),
)  # fmt: skip


def build_parser(argv: Sequence[str] | None = None, *, passed: bool = True):
    """The tuner's own flags; with `passed`, the training flags too (for --help and checks).

    Everything but the tuner's own flags goes to `bt_tf.training.config.parse`.
    """
    p = cli.ArgumentParser(
        "tuning.search",
        description=cli.summary(__doc__),
        usage="%(prog)s [--flag=VALUE ...]",
        epilog="Any other --flag is passed to Beam (preprocessing), e.g. --runner=...",
    )
    config, ranges = SearchConfig(output_dir=""), space.SearchSpace()
    defaults = {f.name: getattr(ranges, f.name) for f in dataclasses.fields(ranges)}
    defaults.update({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    for name, keywords in _SEARCH_FLAGS:
        if "default" not in keywords:
            keywords = {"default": defaults[name.lstrip("-")], **keywords}
        p.add_argument(name, **keywords)
    if passed:
        cli.add_passed_flags(p, TRAINING_GROUP, flags.add_flags)
        flags.apply_dataset_defaults(p, argv)
    return p


def _explicit_training_flags(argv: Sequence[str]) -> dict:
    """The training flags given on the command line, by dest (defaults suppressed)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    flags.add_flags(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return vars(given)


def parse(argv: Sequence[str]) -> tuple[SearchConfig, TrainConfig]:
    """Command line -> (search settings, base training config).

    Pins: every ``--pin``, plus the searchable training flags of the model
    (`space.searchable_flags`) given explicitly or through ``--hparams``.
    """
    build_parser(argv).parse_known_args(argv)  # --help; a bad value stops here
    args, rest = build_parser(argv, passed=False).parse_known_args(argv)
    base = flags.parse(rest)
    try:
        return _configs(args, rest, base)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(str(err)) from None


def _configs(args, rest: Sequence[str], base: TrainConfig):
    pins = dict(space.parse_pin(text) for text in args.pin)
    given = _explicit_training_flags(rest)
    from_file = {}
    if given.get("hparams"):
        with open(os.path.expanduser(given["hparams"])) as f:
            from_file = json.load(f)
    for name in space.searchable_flags(base.model):
        if (name in given or name in from_file) and name not in pins:
            pins[name] = base.to_json()[name]  # the flag's spelling: KerasTuner keeps it
    search_space = space.SearchSpace(
        model=base.model,
        lambd_range=args.lambd_range,
        learning_rate_range=args.learning_rate_range,
        temperature_range=args.temperature_range,
        bt_weight_range=args.bt_weight_range,
        projector_widths=args.projector_widths,
        projector_depths=args.projector_depths,
        search_augment=args.search_augment,
        search_pooling=args.search_pooling,
        search_item_init=args.search_item_init,
        pins=tuple(sorted(pins.items())),
    )
    search = SearchConfig(
        output_dir=args.output_dir or os.path.join("tuning_runs", base.data.dataset),
        tuner=args.tuner,
        objective=args.objective,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        hyperband_factor=args.hyperband_factor,
        hyperband_iterations=args.hyperband_iterations,
        num_initial_points=args.num_initial_points,
        tuner_seed=args.tuner_seed,
        space=search_space,
        crossfit=CrossfitSpec(
            fractions=args.objective_fractions,
            seeds=args.objective_seeds,
            stat=args.objective_stat,
        ),  # fmt: skip
        distributed_workers=args.distributed_workers,
        oracle_ip=args.oracle_ip,
        oracle_port=args.oracle_port,
        export_best=args.export_best,
        overwrite=args.overwrite,
    )
    return search, base


def role_from_env(env) -> str | None:
    """KerasTuner's role of this process: "chief", "worker", or None (not distributed)."""
    tuner_id = env.get("KERASTUNER_TUNER_ID")
    if tuner_id is None or "KERASTUNER_ORACLE_IP" not in env:
        return None
    return "chief" if "chief" in tuner_id else "worker"


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    search, base = parse(argv)
    role = role_from_env(os.environ)
    if os.environ.get(LAUNCHER_PID):
        die_with_parent(int(os.environ[LAUNCHER_PID]))
    if role is not None:  # a chief or worker that the launcher below started
        return run_search(search, base, role=role)
    # One search per output directory (`bt_tf.locks`); the launcher holds it for its workers.
    with locks.hold_dir(search.output_dir, hint=" or choose another --output_dir"):
        return _search(search, base, argv)


def _search(search: SearchConfig, base: TrainConfig, argv: Sequence[str]) -> dict:
    """The search of this process (``--distributed_workers=0``) or of the chief and workers
    it starts, then the best configuration retrained and exported."""
    if search.distributed_workers:
        prepare(search, base)
        preprocess.preprocess(base.data)  # once, so the workers do not race to write it
        launch_local(argv, search, dict(os.environ))
        summary = write_reports(search)  # the chief wrote them; re-read for the summary
    else:
        summary = run_search(search, base, role="single")
    if search.export_best:
        if summary["best"] is None:
            raise RuntimeError("no completed trial to export; see trials.md for the failures")
        result = export_best(search, base, summary["best"])
        best_run = os.path.join(search.output_dir, BEST_RUN)
        print(f"best configuration trained in {best_run}; exported to {result.get('export_dir')}")
        summary["best_run"] = result
    return summary


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker of the claim objective: its log lines show
