"""One command from data to the paper's comparison: `python -m bt_tf.reproduce`.

    python -m bt_tf.reproduce --dataset=synthetic
    python -m bt_tf.reproduce --dataset=ml-1m --max_epochs=50 --batch_size=256
    python -m bt_tf.reproduce --dataset=ml-1m --hparams_bt=tuning_runs/bt/best_hparams.json \\
        --hparams_de=tuning_runs/de/best_hparams.json
    python -m bt_tf.reproduce --dataset=synthetic --no-ablation     # main comparison only

Trains BT, DE and BT+DE (``--models``) on the same encoder: every training
flag of `bt_tf.train` is passed to all of them. ``--hparams_bt=FILE``,
``--hparams_de=FILE``, ``--hparams_joint=FILE`` (for bt+de) apply a model's
own best settings on top of the shared flags (the JSON of `bt_tf.train
--hparams`, e.g. a tuner's ``best_hparams.json``: keys are flag names).

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
``runs/reproduce_<dataset>``). Then every run and the floors are evaluated
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

if __name__ == "__main__":
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import config as cfg
from bt_tf import evaluate as ev
from bt_tf import input as bt_input
from bt_tf import report, train
from bt_tf.errors import UserError
from pipelines import preprocess as pp

__all__ = ["equal_budget_steps", "main_configs", "ablation_configs", "reproduce", "main"]

REPORT_DIR = "report"
ABLATION_DIR = "batch_size"
ABLATION_JSON = "batch_size_ablation.json"
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512)
# Settings that make the budget: shared by every run, never taken from a per-model file.
BUDGET_KEYS = (
    "epochs",
    "steps_per_epoch",
    "min_steps_per_epoch",
    "early_stopping_patience",
    "min_delta",
)
# --hparams_<name> flag -> model.
HPARAMS_FLAGS = {"bt": "bt", "de": "de", "joint": "bt+de"}


# --------------------------------------------------------------------------
# Run configurations


def main_configs(
    base: cfg.TrainConfig,
    output_dir: str,
    models: Sequence[str],
    *,
    own: Mapping[str, cfg.TrainConfig] | None = None,
    num_train_users: int | None = None,
) -> dict[str, cfg.TrainConfig]:
    """model -> its config: ``own[model]`` (its own settings; default ``base``)
    with ``model``, ``run_dir`` and the budget of ``base``.

    The budget (`BUDGET_KEYS`) and the data settings are ``base``'s. A model
    whose own ``batch_size`` differs trains `equal_budget_steps` per epoch, so
    that its epoch is as many users as ``base``'s (needs ``num_train_users``).
    """
    unknown = [m for m in models if m not in cfg.MODELS]
    if unknown or not models:
        raise UserError(f"--models={','.join(models)}: expected a subset of {cfg.MODELS}")
    out = {}
    for m in models:
        c = (own or {}).get(m, base)
        if c.model != m and c is not base:
            raise UserError(f"the settings given for {m} set model={c.model!r}")
        if c.data != base.data:
            raise UserError(
                f"the settings given for {m} change data settings; pass data flags "
                "(e.g. --max_len) to every model alike"
            )
        ignored = [k for k in BUDGET_KEYS if getattr(c, k) != getattr(base, k)]
        if ignored:
            logging.warning(
                "%s: ignoring its own %s: the budget is shared (set them as common flags)",
                m,
                ", ".join(f"{k}={getattr(c, k)}" for k in ignored),
            )
        c = dataclasses.replace(
            c,
            model=m,
            run_dir=os.path.join(output_dir, m),
            **{k: getattr(base, k) for k in BUDGET_KEYS},
        )
        if c.batch_size != base.batch_size:
            if not base.steps_per_epoch and num_train_users is None:
                raise ValueError(f"{m} has its own batch size: num_train_users is needed")
            examples = base.steps_for(num_train_users or 0) * base.batch_size
            c = dataclasses.replace(c, steps_per_epoch=equal_budget_steps(examples, c.batch_size))
        out[m] = c
    return out


def equal_budget_steps(examples_per_epoch: int, batch_size: int) -> int:
    """Steps per epoch so that ``steps × batch_size ≈ examples_per_epoch`` (nearest, >= 1)."""
    return max(1, int(math.floor(examples_per_epoch / batch_size + 0.5)))


def ablation_configs(
    base: cfg.TrainConfig,
    output_dir: str,
    *,
    batch_sizes: Sequence[int],
    models: Sequence[str],
    num_train_users: int,
    epochs: int | None = None,
    main: Mapping[str, cfg.TrainConfig] | None = None,
    own: Mapping[str, cfg.TrainConfig] | None = None,
    skip_too_big: bool = False,
) -> list[tuple[str, int, cfg.TrainConfig]]:
    """(model, batch size, config) of every ablation run, at an equal number of users seen.

    Each model starts from its main run's config (``main[model]``), else its
    own settings (``own[model]``, see `main_configs`), else ``base``. With
    ``E = steps × batch size`` users per epoch of that config (``steps`` from
    `TrainConfig.steps_for`), batch size ``b`` trains `equal_budget_steps(E, b)`
    steps per epoch, for at most ``epochs`` epochs (default: the config's cap),
    with the same early stopping. Where a main run has exactly these settings
    its config (and run dir) is returned instead, so it is trained only once.
    Batch sizes above ``num_train_users`` are an error, or skipped with
    ``skip_too_big``.
    """
    too_big = [b for b in batch_sizes if b > num_train_users]
    if too_big and not skip_too_big:
        raise UserError(
            f"--batch_sizes {too_big} exceed the {num_train_users} train users; drop them."
        )
    if too_big:
        logging.warning(
            "ablation: skipping batch sizes %s > %d train users", too_big, num_train_users
        )
    out = []
    for m in models:
        reuse = (main or {}).get(m)
        start = reuse or (own or {}).get(m) or dataclasses.replace(base, model=m)
        own_steps = start.steps_for(num_train_users)
        examples = own_steps * start.batch_size
        cap = epochs or start.epochs
        for b in batch_sizes:
            if b in too_big:
                continue
            steps = equal_budget_steps(examples, b)
            if reuse is not None and b == start.batch_size and steps == own_steps:
                if cap == start.epochs:
                    out.append((m, b, reuse))
                    continue
            run_dir = os.path.join(output_dir, ABLATION_DIR, f"{m}_b{b}")
            config = dataclasses.replace(
                start, model=m, batch_size=b, steps_per_epoch=steps, epochs=cap, run_dir=run_dir
            )
            out.append((m, b, config))
    return out


# --------------------------------------------------------------------------
# Report sections


# Columns of the run table (the other settings that differ go to its last column).
_TABLE_KEYS = ("model", "run_dir", "batch_size", "steps_per_epoch", "epochs", "data")


def differing_settings(configs: Sequence[cfg.TrainConfig]) -> list[str]:
    """Names of the settings (other than the table's columns) that differ between runs."""
    rows = [json.loads(json.dumps(c.to_json())) for c in configs]
    keys = [k for k in rows[0] if k not in _TABLE_KEYS] if rows else []
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def budget_note(base: cfg.TrainConfig, num_train_users: int | None) -> str:
    """How the runs' budgets compare, for the report."""
    steps = base.steps_for(num_train_users) if num_train_users else base.steps_per_epoch
    epoch = (
        f"{steps} steps × {base.batch_size} = {steps * base.batch_size} users"
        if steps
        else (f"one pass over the train users, >= {base.min_steps_per_epoch} steps")
    )
    stop = (
        f"stops once val_loss has not improved by {base.min_delta:g} (relative) for "
        f"{base.early_stopping_patience} epochs"
        if base.early_stopping_patience
        else "early stopping off: trains the full cap"
    )
    return (
        f"Equal budget, trained to convergence: every run has the same cap, {base.epochs} "
        f"epochs of {epoch} (another batch size b trains E/b steps per epoch), {stop}, "
        "and keeps the weights of its best val_loss epoch (evaluated below). Users seen "
        "= optimizer steps × batch size, as trained."
    )


def _cell(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _run_table(
    configs: Sequence[cfg.TrainConfig],
    results: Sequence[dict],
    heading: str = "## Training runs",
    note: str = "",
) -> list[str]:
    """One row per run: its budget as trained and the settings in which runs differ."""
    differ = differing_settings(configs)
    lines = [heading, ""] + ([note, ""] if note else [])
    lines += [
        "| model | run dir | batch size | steps/epoch | max epochs | epochs | best epoch | "
        "stopped by | optimizer steps | users seen | best val loss | train seconds | "
        "differing settings |",
        "|---" * 13 + "|",
    ]
    for c, r in zip(configs, results):
        steps = int(r.get("steps_per_epoch") or 0)
        epochs = int(r.get("epochs_completed") or 0)
        # Runs from before these fields: every epoch was a full one.
        optimizer_steps = r.get("optimizer_steps", steps * epochs)
        users = r.get("users_seen", optimizer_steps * c.batch_size)
        own = json.loads(json.dumps(c.to_json()))
        settings = ", ".join(f"{k}={own[k]}" for k in differ) or "-"
        lines.append(
            f"| {c.model} | `{c.run_dir}` | {c.batch_size} | {steps} | {c.epochs} | {epochs} | "
            f"{_cell(r.get('best_epoch'))} | {_cell(r.get('stop_reason'))} | "
            f"{optimizer_steps} | {users} | {_cell(r.get('best_val_loss'), '{:.4g}')} | "
            f"{_cell(r.get('train_seconds'))} | {settings} |"
        )
    lines.append("")
    return lines


def _ablation_section(rows: Sequence[dict], images: Sequence[str]) -> list[str]:
    """Per (task, metric, fraction): models × batch sizes, mean ± std, + BT vs DE."""
    lines = [
        "## Batch-size ablation",
        "",
        "Each model pretrained at each batch size with the same number of users seen "
        "(steps per epoch scaled by 1/batch size), then probed as above. Mean ± std over "
        "label-sampling seeds.",
        "",
    ]
    sizes = sorted({int(r["batch_size"]) for r in rows})
    by = {}
    for b in sizes:
        for a in report.aggregate([r for r in rows if int(r["batch_size"]) == b]):
            by[(a["task"], a["metric"], a["fraction"], a["model"], b)] = a
    panels = sorted({(k[0], k[1], k[2]) for k in by}, key=lambda k: (k[0], k[1], k[2]))
    models = sorted({k[3] for k in by})
    for task, metric, fraction in panels:
        lines += [
            f"### {task}: {metric} ({100 * fraction:g}% labels)",
            "",
            "| model | " + " | ".join(f"b={b}" for b in sizes) + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        for m in models:
            cells = []
            for b in sizes:
                a = by.get((task, metric, fraction, m, b))
                cells.append("" if a is None else f"{a['mean']:.3f} ± {a['std']:.3f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if "bt" in models and "de" in models:
            cells = []
            for b in sizes:
                x, y = (
                    by.get((task, metric, fraction, "bt", b)),
                    by.get((task, metric, fraction, "de", b)),
                )
                v = report.relative_improvement(
                    x["mean"] if x else float("nan"), y["mean"] if y else float("nan")
                )
                cells.append("n/a" if not math.isfinite(v) else f"{v:+.1f}%")
            lines.append("| bt vs de | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in images] + [""]
    return lines


def _json_rows(rows: Sequence[dict]) -> list[dict]:
    """NaN -> null (strict JSON)."""
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]


def _append_sections(path: str, sections: list[str]) -> None:
    """Appends ``sections`` to the report written by `report.write_report`."""
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n\n" + "\n".join(sections))


# --------------------------------------------------------------------------
# The driver


def reproduce(
    base: cfg.TrainConfig,
    output_dir: str,
    *,
    models: Sequence[str] = cfg.MODELS,
    model_configs: Mapping[str, cfg.TrainConfig] | None = None,
    label_fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 1.0),
    seeds: int = 3,
    tasks: Sequence[str] | None = None,
    include_floors: bool = True,
    settings: ev.EvalSettings = ev.EvalSettings(),
    cache: bool = True,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    skip_too_big: bool = False,
    ablation_models: Sequence[str] = ("bt", "de"),
    ablation_epochs: int | None = None,
    ablation_fractions: Sequence[float] | None = None,
    ablation_tasks: Sequence[str] = (ev.FAVORITE_GENRE, ev.NEXT_ITEM),
) -> dict:
    """Trains (or reuses) every run, evaluates, writes ``<output_dir>/report/``.

    ``base`` carries every shared training setting; ``model_configs`` a
    model's own settings (default ``base``), see `main_configs`. Only
    ``model``, ``run_dir`` (and, for the ablation, ``batch_size`` /
    ``steps_per_epoch`` / ``epochs``) change. ``batch_sizes=()``: no ablation;
    ``skip_too_big``: drop batch sizes above the train users instead of failing.
    Returns ``{"report": path of report.md, "rows": main rows, "ablation_rows": [...]}``.
    """
    report_dir = os.path.join(output_dir, REPORT_DIR)
    artifact_dir = pp.preprocess(base.data)
    n_train = int(bt_input.load_metadata(artifact_dir)["num_users"]["train"])
    configs = main_configs(base, output_dir, models, own=model_configs, num_train_users=n_train)
    results = []
    for m, c in configs.items():
        logging.info("== training %s in %s", m, c.run_dir)
        results.append(train.train(c))

    rows = ev.evaluate_runs(
        [c.run_dir for c in configs.values()],
        report_dir,
        names=list(configs),
        label_fractions=label_fractions,
        seeds=seeds,
        tasks=tasks,
        include_floors=include_floors,
        settings=settings,
        cache=cache,
        baseline=baseline,
        compare=compare,
        title=f"Downstream evaluation: {base.data.dataset}",
    )
    md = os.path.join(report_dir, "report.md")
    sections = _run_table(list(configs.values()), results, note=budget_note(base, n_train))

    ablation_rows: list[dict] = []
    if batch_sizes:
        runs = ablation_configs(
            base,
            output_dir,
            batch_sizes=batch_sizes,
            models=ablation_models,
            num_train_users=n_train,
            epochs=ablation_epochs,
            main=configs,
            own=main_configs(
                base, output_dir, ablation_models, own=model_configs, num_train_users=n_train
            ),
            skip_too_big=skip_too_big,
        )
        ablation_results = []
        for m, b, c in runs:
            logging.info("== ablation: training %s at batch size %d in %s", m, b, c.run_dir)
            ablation_results.append(train.train(c))
        fractions = ablation_fractions or sorted({min(label_fractions), max(label_fractions)})
        main_names = {c.run_dir: m for m, c in configs.items()}
        names = [main_names.get(c.run_dir, f"{m}@b{b}") for m, b, c in runs]
        # Same out_dir as the main report: its cache serves reused main runs.
        ablation_rows = ev.evaluate_runs(
            [c.run_dir for _, _, c in runs],
            report_dir,
            names=names,
            label_fractions=fractions,
            seeds=seeds,
            tasks=list(ablation_tasks),
            include_floors=False,
            settings=settings,
            cache=cache,
            write=False,
        )
        for r in ablation_rows:  # model type + batch size: what the plot and table group by
            r["run_name"], r["model"] = r["model"], r["model_type"]
        images = []
        for task, metric in dict.fromkeys((r["task"], r["metric"]) for r in ablation_rows):
            for f in fractions:
                name = f"batch_size_{task}_{metric.replace('@', '')}_{100 * f:g}pct.png"
                images.append(
                    report.plot_batch_size_ablation(
                        ablation_rows,
                        os.path.join(report_dir, name),
                        task=task,
                        metric=metric,
                        fraction=f,
                    )
                )
        with open(os.path.join(report_dir, ABLATION_JSON), "w") as f:
            json.dump(_json_rows(ablation_rows), f, indent=1, allow_nan=False)
        sections += _ablation_section(ablation_rows, images)
        cap = f"{ablation_epochs} epochs (--ablation_epochs)" if ablation_epochs else "the same"
        sections += _run_table(
            [c for _, _, c in runs],
            ablation_results,
            heading="### Ablation runs",
            note="Cap: "
            + cap
            + ", in epochs of the same number of users (steps per epoch scaled by 1/batch "
            "size); each run stops on its own val_loss. Users seen = optimizer steps × "
            "batch size, as trained.",
        )
    _append_sections(md, sections)
    logging.info("report: %s", md)
    return {"report": md, "rows": rows, "ablation_rows": ablation_rows}


# --------------------------------------------------------------------------
# CLI


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# argparse types of the comma-separated flags (errors name the flag).
_models = cli.comma_list(str, f"models ({', '.join(cfg.MODELS)})", lambda m: m in cfg.MODELS)
_batch_sizes = cli.comma_list(int, "batch sizes >= 2", lambda b: b >= 2)
TRAINING_GROUP = "training flags (passed to bt_tf.train, for every run)"
EVALUATION_GROUP = "evaluation flags (passed to bt_tf.evaluate)"


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
    add("--models", type=_models, default=list(cfg.MODELS), help="models of the comparison")
    for name, model in HPARAMS_FLAGS.items():
        add(
            f"--hparams_{name}",
            type=cfg.flag_type(cfg.check_hparams_file),
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
    add("--ablation_models", type=_models, default=["bt", "de"], help="models of the ablation")
    add("--ablation_epochs", type=int, default=0, help="cap of the ablation runs (0: --max_epochs)")
    add(
        "--ablation_fractions",
        type=ev.fraction_list,
        default=None,
        help="label fractions of the ablation (none: the smallest and largest)",
    )
    add(
        "--ablation_tasks",
        type=_names,
        default=[ev.FAVORITE_GENRE, ev.NEXT_ITEM],
        help="tasks of the ablation",
    )
    ev.add_flags(parser.add_argument_group(EVALUATION_GROUP))
    if passed:
        cli.add_passed_flags(parser, TRAINING_GROUP, cfg.add_flags, exclude=("--model",))
        cfg.apply_dataset_defaults(parser, argv)
    return parser


def parse(argv: Sequence[str] | None):
    """(reproduce args, shared training config) from one command line.

    Every flag's value is checked first, training flags included (`UserError`
    naming the flag). The tool's own and the evaluation flags are then parsed;
    everything else goes to `bt_tf.config.parse` (training and Beam flags).
    ``args.model_configs``: model -> its config with its ``--hparams_*`` file
    applied after the shared flags (as `bt_tf.train --hparams` would).
    ``args.skip_too_big``: the batch sizes are the defaults (too big ones are skipped).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser(argv).parse_known_args(argv)  # --help; a bad value stops here
    args, rest = build_parser(argv, passed=False).parse_known_args(argv)
    if any(a == "--model" or a.startswith("--model=") for a in rest):
        raise UserError("--model is set by bt_tf.reproduce for each run; use --models=bt,de,...")
    if not args.models:
        raise UserError(f"--models names no model; expected a subset of {cfg.MODELS}")
    description = "bt_tf.reproduce training flags"
    base = cfg.parse(rest, description=description)
    args.model_configs = {}
    for name, model in HPARAMS_FLAGS.items():
        path = getattr(args, f"hparams_{name}")
        if not path:
            continue
        named = cfg.read_hparams(path).get("model", model)
        if named != model:
            raise UserError(f"{path}: sets model={named!r}, but it is --hparams_{name} ({model})")
        own = cfg.parse(rest, description=description, hparams=[path])
        args.model_configs[model] = dataclasses.replace(own, model=model)
    args.skip_too_big = args.batch_sizes is None
    if args.batch_sizes is None:
        args.batch_sizes = list(DEFAULT_BATCH_SIZES)
    if not args.ablation:
        args.batch_sizes = []
    if not args.output_dir:
        args.output_dir = os.path.join("runs", f"reproduce_{base.data.dataset}")
    return args, base


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    args, base = parse(argv)
    out = reproduce(
        base,
        args.output_dir,
        models=args.models,
        model_configs=args.model_configs,
        label_fractions=args.label_fractions,
        seeds=args.seeds,
        tasks=ev.tasks_from_flags(args),
        include_floors=args.floors,
        settings=ev.settings_from_flags(args),
        cache=args.cache,
        baseline=args.baseline,
        compare=_names(args.compare),
        batch_sizes=args.batch_sizes,
        skip_too_big=args.skip_too_big,
        ablation_models=args.ablation_models,
        ablation_epochs=args.ablation_epochs or None,
        ablation_fractions=args.ablation_fractions,
        ablation_tasks=args.ablation_tasks,
    )
    print(out["report"])
    return out


if __name__ == "__main__":
    cli.run_main(main)
