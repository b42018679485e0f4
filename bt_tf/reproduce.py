"""One command from data to the paper's comparison: `python -m bt_tf.reproduce`.

    python -m bt_tf.reproduce --dataset=synthetic
    python -m bt_tf.reproduce --dataset=ml-1m --max_epochs=50 --batch_size=256
    python -m bt_tf.reproduce --dataset=ml-1m --hparams_bt=tuning_runs/bt/best_hparams.json \\
        --hparams_de=tuning_runs/de/best_hparams.json
    python -m bt_tf.reproduce --dataset=synthetic --no-ablation     # main comparison only

Trains BT, DE and BT+DE (``--models``) on the same encoder: every training
flag of `bt_tf.train` is passed to all of them. A dataset's defaults may hold a
model's own recipe (``DATASET_DEFAULTS[dataset]["models"]`` in
`bt_tf.training.flags`, e.g. the DE's batch size, temperature, learning rate
and pooling): each model's run gets its own on top of the shared defaults, but
a flag given on the command line applies to every model (``--help`` shows the
shared defaults; ``python -m bt_tf.train --dataset=NAME --model=de --help`` a
model's). ``--hparams_bt=FILE``, ``--hparams_de=FILE``, ``--hparams_joint=FILE``
(for bt+de) apply a model's own best settings on top of all that (the JSON of
`bt_tf.train --hparams`, e.g. a tuner's ``best_hparams.json``: keys are flag
names).

Equal budget, trained to convergence: every run, main and ablation, stops when
its val_loss has not improved by ``--min_delta`` for
``--early_stopping_patience`` epochs, keeps its best epoch, and has the same
cap: ``--max_epochs`` epochs of ``E`` users, ``E = steps_per_epoch ×
batch_size`` of the shared flags (one pass over the train users, at least
``--min_steps_per_epoch`` steps). A run at another batch size ``b`` (a
per-model file's ``batch_size``, or the ablation) trains ``round(E / b)``
steps per epoch, so the cap in users seen is the same for all. The budget
flags (``max_epochs``/``epochs``, ``steps_per_epoch``, ``min_steps_per_epoch``,
``early_stopping_patience``, ``min_delta``) are shared: in a per-model file
they are ignored, with a warning. Data flags (e.g. ``--max_len``) must be
shared too. The run tables list what each run actually used: epochs, best
epoch, optimizer steps, users seen, training seconds and the settings that
differ between models.

Runs go to ``<output_dir>/<model>`` (default output dir
``runs/reproduce_<dataset>``). ``--pretrain_seeds=N`` trains every model N
times, with seeds ``--seed`` + k for k = 0..N-1, the runs k >= 1 in
``<output_dir>/<model>_seed<k>``; the rows of a model pool its seeds (each row
carries its ``pretrain_seed``) and the run table lists every seeded run. The
batch-size ablation trains the first seed only. Then every run and the floors are evaluated
(`bt_tf.evaluate`; its flags, e.g. ``--label_fractions``, ``--seeds``,
``--probe_max_epochs``, apply) and the report is written to
``<output_dir>/report/`` (``report.md``, ``results.json``, PNGs).

The batch-size ablation runs by default (``--batch_sizes``, default
32,64,128,256,512; ``--no-ablation`` or ``--batch_sizes=`` turns it off):
``--ablation_models`` (BT and DE), each with its own settings, are trained at
each batch size under the budget above (``--ablation_epochs`` replaces the cap
of the ablation runs if given); runs go to
``<output_dir>/batch_size/<model>_b<b>`` (a main run is reused where its
settings coincide). Default batch sizes larger than the train users are
skipped (given explicitly, they are an error). The runs are evaluated on
``--ablation_tasks`` at ``--ablation_fractions`` (default: the smallest and
the largest label fraction); the table is appended to ``report.md`` and each
(task, metric, fraction) is plotted against batch size (``batch_size_*.png``).

Resumable: a finished run is reused (`bt_tf.train` returns it untouched), an
interrupted one continues from its last epoch, and probe results are cached
per (model, task, fraction, seed) in ``report/cache/``. Run the same command
again after an interruption.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import of this module
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import evaluate, locks
from bt_tf.errors import UserError
from bt_tf.evaluation.reproduction import (
    CONTENDERS,
    DEFAULT_BATCH_SIZES,
    DEFAULT_PRETRAIN_SEEDS,
    FINE_TUNE,
    Ablation,
    EvalRequest,
    reproduce,
    time_summary,
)
from bt_tf.evaluation.tasks import FAVORITE_GENRE, NEXT_ITEM
from bt_tf.training import flags
from bt_tf.training.config import MODELS

__all__ = ["HPARAMS_FLAGS", "build_parser", "parse", "main"]

# --hparams_<name> flag -> model.
HPARAMS_FLAGS = {"bt": "bt", "de": "de", "joint": "bt+de"}


# --------------------------------------------------------------------------
# CLI


def _tuple_or_none(values):
    return None if values is None else tuple(values)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _pretrain_seeds(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count of seeds >= 1")
    return count


# argparse types of the comma-separated flags (errors name the flag).
_models = cli.comma_list(str, f"models ({', '.join(CONTENDERS)})", lambda m: m in CONTENDERS)
_ablation_models = cli.comma_list(str, f"models ({', '.join(MODELS)})", lambda m: m in MODELS)
_batch_sizes = cli.comma_list(int, "batch sizes >= 2", lambda b: b >= 2)
TRAINING_GROUP = "training flags (passed to bt_tf.train, for every run)"
EVALUATION_GROUP = "evaluation flags (passed to bt_tf.evaluate)"
_PASSED = "bt_tf.reproduce training flags"  # the description of the passed flags' parser


def build_parser(argv: Sequence[str] | None = None, *, passed: bool = True):
    """The command line of `bt_tf.reproduce`; with `passed`, the training flags too.

    The tool's own flags are exact names only (no abbreviations, so ``--seed``
    stays a training flag and ``--seeds`` an evaluation one).
    """
    parser = cli.ArgumentParser(
        "bt_tf.reproduce",
        description=cli.summary(__doc__),
        usage="%(prog)s [--flag=VALUE ...]",
        epilog="Any other --flag is passed to Beam (preprocessing), e.g. --runner=...",
    )
    add = parser.add_argument
    add(
        "--output_dir",
        default="",
        help="root of the runs and the report (empty: runs/reproduce_<dataset>)",
    )
    add(
        "--models",
        type=_models,
        default=list(CONTENDERS),
        help=f"models of the comparison ({FINE_TUNE}: the bt runs fine-tuned as the DE)",
    )
    add(
        "--pretrain_seeds",
        type=_pretrain_seeds,
        default=DEFAULT_PRETRAIN_SEEDS,
        help="pretraining seeds per model: --seed + 0..N-1, runs <model> and <model>_seed<k>",
    )
    for name, model in HPARAMS_FLAGS.items():
        add(
            f"--hparams_{name}",
            type=flags.flag_type(flags.check_hparams_file),
            default=None,
            metavar="FILE",
            help=f"JSON of {model}'s own flag values (e.g. a tuner's best_hparams.json)",
        )
    add(
        "--batch_sizes",
        type=_batch_sizes,
        default=None,
        help=f"batch-size ablation (none: {','.join(map(str, DEFAULT_BATCH_SIZES))} without "
        "those above the train users; empty: no ablation)",
    )
    add(
        "--ablation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the batch-size ablation (--no-ablation: only the main comparison)",
    )
    add(
        "--ablation_models",
        type=_ablation_models,
        default=["bt", "de"],
        help="models of the ablation",
    )
    add("--ablation_epochs", type=int, default=0, help="cap of the ablation runs (0: --max_epochs)")
    add(
        "--ablation_fractions",
        type=evaluate.fraction_list,
        default=None,
        help="label fractions of the ablation (none: the smallest and largest)",
    )
    add(
        "--ablation_tasks",
        type=_names,
        default=[FAVORITE_GENRE, NEXT_ITEM],
        help="tasks of the ablation",
    )
    evaluate.add_flags(parser.add_argument_group(EVALUATION_GROUP))
    if passed:
        cli.add_passed_flags(parser, TRAINING_GROUP, flags.add_flags, exclude=("--model",))
        flags.apply_dataset_defaults(parser, argv, shared_only=True)
    return parser


def _own_config(rest: Sequence[str], model: str, path: str | None, flag: str):
    """``model``'s config: the dataset's defaults for it, the shared flags given
    (``rest``), then its hparams file ``path`` (given as ``flag``), if any."""
    if path:
        named = flags.read_hparams(path).get("model", model)
        if named != model:
            raise UserError(f"{path}: sets model={named!r}, but it is {flag} ({model})")
    own = flags.parse(rest, description=_PASSED, hparams=[path] if path else [], model=model)
    return dataclasses.replace(own, model=model)


def parse(argv: Sequence[str] | None):
    """(reproduce args, shared training config) from one command line.

    Every flag's value is checked first, training flags included (`UserError`
    naming the flag). The tool's own and the evaluation flags are then parsed;
    everything else goes to `bt_tf.config.parse` (training and Beam flags).
    ``args.model_configs``: model -> its config where it has settings of its own:
    the dataset's defaults for that model, then the shared flags given, then its
    ``--hparams_*`` file (as `bt_tf.train --model=MODEL --hparams` would).
    ``args.skip_too_big``: the batch sizes are the defaults (too big ones are skipped).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser(argv).parse_known_args(argv)  # --help; a bad value stops here
    args, rest = build_parser(argv, passed=False).parse_known_args(argv)
    if any(a == "--model" or a.startswith("--model=") for a in rest):
        raise UserError("--model is set by bt_tf.reproduce for each run; use --models=bt,de,...")
    if not args.models:
        raise UserError(f"--models names no model; expected a subset of {CONTENDERS}")
    base = flags.parse(rest, description=_PASSED, shared_only=True)
    args.model_configs = {}
    for name, model in HPARAMS_FLAGS.items():
        own = _own_config(rest, model, getattr(args, f"hparams_{name}"), f"--hparams_{name}")
        if own != dataclasses.replace(base, model=model, run_dir=own.run_dir):
            args.model_configs[model] = own
    if args.probe_folds >= 2 and not _given(argv, "--train_users") and not base.leave_one_out:
        # Cross-fitted: every user is scored, so every user's history is pretrained on
        # (labels are futures, which no encoder reads).
        base = dataclasses.replace(base, train_users="all")
        args.model_configs = {
            m: dataclasses.replace(c, train_users="all") for m, c in args.model_configs.items()
        }
    args.skip_too_big = args.batch_sizes is None
    if args.batch_sizes is None:
        args.batch_sizes = list(DEFAULT_BATCH_SIZES)
    if not args.ablation:
        args.batch_sizes = []
    if not args.output_dir:
        args.output_dir = os.path.join("runs", f"reproduce_{base.data.dataset}")
    return args, base


def _given(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    args, base = parse(argv)
    logging.getLogger().setLevel(evaluate.log_level(args))
    evaluation = EvalRequest(
        label_fractions=tuple(args.label_fractions),
        seeds=args.seeds,
        tasks=_tuple_or_none(evaluate.tasks_from_flags(args)),
        include_floors=args.floors,
        settings=evaluate.settings_from_flags(args),
        protocol=evaluate.protocol_from_flags(args),
        cache=args.cache,
        baseline=args.baseline,
        compare=tuple(_names(args.compare)),
        bootstrap_resamples=args.bootstrap_resamples,
        claim_models=tuple(args.claim_models),
        claim_users=args.claim_users,
        progress=not args.quiet,
        repeated_fractions=evaluate.repeated_fractions(args),
    )
    ablation = Ablation(
        batch_sizes=tuple(args.batch_sizes),
        skip_too_big=args.skip_too_big,
        models=tuple(args.ablation_models),
        epochs=args.ablation_epochs or None,
        fractions=_tuple_or_none(args.ablation_fractions),
        tasks=tuple(args.ablation_tasks),
    )
    # One reproduction per output directory (`bt_tf.locks`); each run inside it and the
    # report are locked again by the training and the evaluation.
    with locks.hold_dir(args.output_dir, hint=" or choose another --output_dir"):
        out = reproduce(
            base,
            args.output_dir,
            models=args.models,
            model_configs=args.model_configs,
            evaluation=evaluation,
            ablation=ablation,
            pretrain_seeds=args.pretrain_seeds,
        )
    print(time_summary(out["times"]))
    print(out["report"])
    return out


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker: its log lines show
