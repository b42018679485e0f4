"""One command from data to the paper's comparison: `python -m bt_tf.reproduce`.

    python -m bt_tf.reproduce --dataset=synthetic
    python -m bt_tf.reproduce --dataset=ml-1m --epochs=50 --batch_size=256
    python -m bt_tf.reproduce --dataset=synthetic --batch_sizes=32,64,128,256,512

Trains BT, DE and BT+DE (``--models``) at an EQUAL budget: the same encoder
(every training flag of `bt_tf.train` is passed to all three unchanged), the
same batch size, epochs and steps per epoch, hence the same number of users
seen. Runs go to ``<output_dir>/<model>`` (default output dir
``runs/reproduce_<dataset>``). Then every run and the floors are evaluated
(`bt_tf.evaluate`; its flags, e.g. ``--label_fractions``, ``--seeds``,
``--probe_max_epochs``, apply) and the report is written to
``<output_dir>/report/`` (``report.md``, ``results.json``, PNGs).

``--batch_sizes=...`` adds the batch-size ablation: ``--ablation_models``
(BT and DE) are trained at each batch size ``b`` with
``steps_per_epoch = round(E / b)`` where ``E = steps_per_epoch × batch_size``
of the main runs, so every ablation run sees the same number of users
(``--ablation_epochs`` epochs, default ``--epochs``); runs go to
``<output_dir>/batch_size/<model>_b<b>`` (a main run is reused where its
settings coincide). They are evaluated on ``--ablation_tasks`` at
``--ablation_fractions`` (default: the smallest and the largest label
fraction); the table is appended to ``report.md`` and each (task, metric,
fraction) is plotted against batch size (``batch_size_*.png``).

Resumable: a finished run is reused (`bt_tf.train` returns it untouched), an
interrupted one continues from its last checkpoint, and probe results are
cached per (model, task, fraction, seed) in ``report/cache/``. Run the same
command again after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Sequence

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import config as cfg
from bt_tf import evaluate as ev
from bt_tf import input as bt_input
from bt_tf import report, train
from pipelines import preprocess as pp

__all__ = ["equal_budget_steps", "main_configs", "ablation_configs", "reproduce", "main"]

REPORT_DIR = "report"
ABLATION_DIR = "batch_size"
ABLATION_JSON = "batch_size_ablation.json"


# --------------------------------------------------------------------------
# Run configurations


def main_configs(
    base: cfg.TrainConfig, output_dir: str, models: Sequence[str]
) -> dict[str, cfg.TrainConfig]:
    """model -> its config: ``base`` with only ``model`` and ``run_dir`` changed."""
    unknown = [m for m in models if m not in cfg.MODELS]
    if unknown or not models:
        raise ValueError(f"--models={','.join(models)}: expected a subset of {cfg.MODELS}")
    return {
        m: dataclasses.replace(base, model=m, run_dir=os.path.join(output_dir, m)) for m in models
    }


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
    main: dict[str, cfg.TrainConfig] | None = None,
) -> list[tuple[str, int, cfg.TrainConfig]]:
    """(model, batch size, config) of every ablation run, at an equal number of users seen.

    ``E = (base.steps_per_epoch or num_train_users // base.batch_size) ×
    base.batch_size`` users per epoch; batch size ``b`` trains
    `equal_budget_steps(E, b)` steps per epoch for ``epochs`` (default
    ``base.epochs``). Where a main run (``main``) has exactly these settings
    its config (and run dir) is returned instead, so it is trained only once.
    """
    base_steps = base.steps_per_epoch or max(1, num_train_users // base.batch_size)
    examples = base_steps * base.batch_size
    epochs = epochs or base.epochs
    too_big = [b for b in batch_sizes if b > num_train_users]
    if too_big:
        raise ValueError(
            f"--batch_sizes {too_big} exceed the {num_train_users} train users; drop them."
        )
    out = []
    for m in models:
        for b in batch_sizes:
            steps = equal_budget_steps(examples, b)
            reuse = (main or {}).get(m)
            if reuse is not None and b == base.batch_size and steps == base_steps:
                if epochs == base.epochs:
                    out.append((m, b, reuse))
                    continue
            run_dir = os.path.join(output_dir, ABLATION_DIR, f"{m}_b{b}")
            config = dataclasses.replace(
                base, model=m, batch_size=b, steps_per_epoch=steps, epochs=epochs, run_dir=run_dir
            )
            out.append((m, b, config))
    return out


# --------------------------------------------------------------------------
# Report sections


def _run_table(
    configs: Sequence[cfg.TrainConfig],
    results: Sequence[dict],
    heading: str = "## Training runs",
    note: str = "Equal budget: same encoder, batch size, epochs and steps per epoch, so "
    "every model sees the same number of users.",
) -> list[str]:
    lines = [
        heading,
        "",
        note,
        "",
        "| model | run dir | batch size | epochs | steps/epoch | users seen | final loss "
        "| train seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, r in zip(configs, results):
        steps = int(r.get("steps_per_epoch", 0))
        loss = r.get("final", {}).get("loss")
        lines.append(
            f"| {c.model} | `{c.run_dir}` | {c.batch_size} | {r.get('epochs_completed')} | "
            f"{steps} | {c.batch_size * steps * int(r.get('epochs_completed') or 0)} | "
            f"{'n/a' if loss is None else f'{loss:.4g}'} | {r.get('train_seconds', 'n/a')} |"
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
    label_fractions: Sequence[float] = (0.01, 0.05, 0.1, 0.25, 1.0),
    seeds: int = 3,
    tasks: Sequence[str] | None = None,
    include_floors: bool = True,
    settings: ev.EvalSettings = ev.EvalSettings(),
    cache: bool = True,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    batch_sizes: Sequence[int] = (),
    ablation_models: Sequence[str] = ("bt", "de"),
    ablation_epochs: int | None = None,
    ablation_fractions: Sequence[float] | None = None,
    ablation_tasks: Sequence[str] = (ev.FAVORITE_GENRE, ev.NEXT_ITEM),
) -> dict:
    """Trains (or reuses) every run, evaluates, writes ``<output_dir>/report/``.

    ``base`` carries every training setting; only ``model``, ``run_dir`` (and,
    for the ablation, ``batch_size``/``steps_per_epoch``/``epochs``) change.
    Returns ``{"report": path of report.md, "rows": main rows, "ablation_rows": [...]}``.
    """
    report_dir = os.path.join(output_dir, REPORT_DIR)
    configs = main_configs(base, output_dir, models)
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
    sections = _run_table(list(configs.values()), results)

    ablation_rows: list[dict] = []
    if batch_sizes:
        artifact_dir = pp.preprocess(base.data)
        n_train = int(bt_input.load_metadata(artifact_dir)["num_users"]["train"])
        runs = ablation_configs(
            base,
            output_dir,
            batch_sizes=batch_sizes,
            models=ablation_models,
            num_train_users=n_train,
            epochs=ablation_epochs,
            main=configs,
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
        sections += _run_table(
            [c for _, _, c in runs],
            ablation_results,
            heading="### Ablation runs",
            note="Users seen = batch size × steps per epoch × epochs, equal up to rounding.",
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


def parse(argv: Sequence[str] | None):
    """(reproduce args, training config) from one command line.

    The tool's own flags are parsed first (exact names only: no abbreviations,
    so ``--seed`` stays a training flag and ``--seeds`` an evaluation one);
    everything else goes to `bt_tf.config.parse` (training and Beam flags).
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Every other flag is a bt_tf.train flag, passed to all trainings.",
    )
    parser.add_argument(
        "--output_dir",
        default="",
        help="root of the runs and the report (runs/reproduce_<dataset>)",
    )
    parser.add_argument("--models", type=_names, default=list(cfg.MODELS))
    parser.add_argument(
        "--batch_sizes", type=_ints, default=[], help="batch-size ablation, e.g. 32,128,512"
    )
    parser.add_argument("--ablation_models", type=_names, default=["bt", "de"])
    parser.add_argument(
        "--ablation_epochs", type=int, default=0, help="epochs of ablation runs (0: --epochs)"
    )
    parser.add_argument(
        "--ablation_fractions",
        type=ev.float_list,
        default=None,
        help="label fractions of the ablation (default: smallest and largest)",
    )
    parser.add_argument("--ablation_tasks", type=_names, default=[ev.FAVORITE_GENRE, ev.NEXT_ITEM])
    ev.add_flags(parser)
    args, rest = parser.parse_known_args(argv)
    if any(a == "--model" or a.startswith("--model=") for a in rest):
        raise ValueError("--model is set by bt_tf.reproduce for each run; use --models=bt,de,...")
    base = cfg.parse(rest, description="bt_tf.reproduce training flags")
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
        label_fractions=args.label_fractions,
        seeds=args.seeds,
        tasks=ev.tasks_from_flags(args),
        include_floors=args.floors,
        settings=ev.settings_from_flags(args),
        cache=args.cache,
        baseline=args.baseline,
        compare=_names(args.compare),
        batch_sizes=args.batch_sizes,
        ablation_models=args.ablation_models,
        ablation_epochs=args.ablation_epochs or None,
        ablation_fractions=args.ablation_fractions,
        ablation_tasks=args.ablation_tasks,
    )
    print(out["report"])
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
