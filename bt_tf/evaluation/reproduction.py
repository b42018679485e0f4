"""The paper's comparison from data to report: equal-budget runs, evaluation, batch-size ablation.

`reproduce` trains (or reuses) BT, DE and BT+DE on the same data and budget
(`main_configs`), each with its pretraining seeds (`seed_configs`), evaluates
them with the floors (`runner.evaluate_runs`), runs the batch-size ablation
(`ablation_configs`, `run_ablation`) and appends the run tables and the
ablation to ``<output_dir>/report/report.md``. The command
line is `bt_tf.reproduce`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from bt_tf import atomic, runs
from bt_tf.data import dataset
from bt_tf.errors import UserError
from bt_tf.evaluation import report, scores
from bt_tf.evaluation.eval_data import unavailable_tasks
from bt_tf.evaluation.intervals import CLAIM_FRACTIONS
from bt_tf.evaluation.probing import record_rows
from bt_tf.evaluation.progress import format_seconds
from bt_tf.evaluation.protocol import Protocol
from bt_tf.evaluation.runner import evaluate_records, evaluate_runs
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.evaluation.tasks import FAVORITE_GENRE, NEXT_ITEM
from bt_tf.runs import read_config
from bt_tf.training import trainer
from bt_tf.training.config import MODELS, TrainConfig
from pipelines import preprocess

__all__ = [
    "REPORT_DIR",
    "ABLATION_DIR",
    "ABLATION_JSON",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_PRETRAIN_SEEDS",
    "BUDGET_KEYS",
    "EvalRequest",
    "Ablation",
    "equal_budget_steps",
    "main_configs",
    "seed_configs",
    "ablation_configs",
    "differing_settings",
    "budget_note",
    "run_ablation",
    "reproduce",
    "run_times",
    "time_summary",
]

# The contender pretrained with BT and then fine-tuned as the DE (`--init_from`): the
# paper's "pretrain on unlabelled sequences" use. Its runs are DE runs.
FINE_TUNE = "bt_ft"
CONTENDERS = (*MODELS, FINE_TUNE)
REPORT_DIR = "report"
ABLATION_DIR = "batch_size"
ABLATION_JSON = "batch_size_ablation.json"
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512)
# Pretraining seeds of every model of the comparison (`seed_configs`): the encoder's
# seed moves the probes' results as much as the label seed does, and 3 seeds keep
# `bt_tf.reproduce --dataset=ml-100k` (9 runs, every user scored) within 60 minutes
# on 2 CPU cores, the batch-size ablation included (README, "Results").
DEFAULT_PRETRAIN_SEEDS = 3
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
    base: TrainConfig,
    output_dir: str,
    models: Sequence[str],
    *,
    own: Mapping[str, TrainConfig] | None = None,
    num_train_users: int | None = None,
) -> dict[str, TrainConfig]:
    """model -> its config: ``own[model]`` (its own settings; default ``base``)
    with ``model``, ``run_dir`` and the budget of ``base``.

    The budget (`BUDGET_KEYS`) and the data settings are ``base``'s. A model
    whose own ``batch_size`` differs trains `equal_budget_steps` per epoch, so
    that its epoch is as many users as ``base``'s (needs ``num_train_users``).
    """
    unknown = [m for m in models if m not in CONTENDERS]
    if unknown or not models:
        raise UserError(f"--models={','.join(models)}: expected a subset of {CONTENDERS}")
    if FINE_TUNE in models and "bt" not in models:
        raise UserError(f"--models: {FINE_TUNE} fine-tunes the bt runs; add bt")
    out = {}
    # BT first: the fine-tune starts from its runs.
    for m in sorted(models, key=CONTENDERS.index):
        kind = "de" if m == FINE_TUNE else m
        c = (own or {}).get(kind, base)
        if c.model != kind and c is not base:
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
            model=kind,
            run_dir=os.path.join(output_dir, m),
            init_from=os.path.join(output_dir, "bt") if m == FINE_TUNE else c.init_from,
            **{k: getattr(base, k) for k in BUDGET_KEYS},
        )
        if c.batch_size != base.batch_size:
            if not base.steps_per_epoch and num_train_users is None:
                raise ValueError(f"{m} has its own batch size: num_train_users is needed")
            examples = base.steps_for(num_train_users or 0) * base.batch_size
            c = dataclasses.replace(c, steps_per_epoch=equal_budget_steps(examples, c.batch_size))
        out[m] = c
    return out


def seed_configs(
    configs: Mapping[str, TrainConfig], pretrain_seeds: int
) -> list[tuple[str, TrainConfig]]:
    """(model, config) of every pretraining seed of every model of `main_configs`.

    Seed ``k`` of ``0 .. pretrain_seeds - 1`` trains with the model's ``seed + k``
    in ``<run_dir>_seed<k>``; seed 0 is the config itself (its run dir
    ``<output_dir>/<model>``, so a comparison run with one seed is reused).
    A fine-tune's seed k starts from the run of seed k it starts from.
    Model by model, seeds in order.
    """
    if pretrain_seeds < 1:
        raise UserError(f"--pretrain_seeds={pretrain_seeds}: need at least 1")

    def seeded(m: str, c: TrainConfig, k: int) -> TrainConfig:
        init = f"{c.init_from}_seed{k}" if m == FINE_TUNE else c.init_from
        return dataclasses.replace(
            c, seed=c.seed + k, run_dir=f"{c.run_dir}_seed{k}", init_from=init
        )

    return [
        (m, c if k == 0 else seeded(m, c, k))
        for m, c in configs.items()
        for k in range(pretrain_seeds)
    ]


def equal_budget_steps(examples_per_epoch: int, batch_size: int) -> int:
    """Steps per epoch so that ``steps × batch_size ≈ examples_per_epoch`` (nearest, >= 1)."""
    return max(1, int(math.floor(examples_per_epoch / batch_size + 0.5)))


def ablation_configs(
    base: TrainConfig,
    output_dir: str,
    *,
    batch_sizes: Sequence[int],
    models: Sequence[str],
    num_train_users: int,
    epochs: int | None = None,
    main: Mapping[str, TrainConfig] | None = None,
    own: Mapping[str, TrainConfig] | None = None,
    skip_too_big: bool = False,
) -> list[tuple[str, int, TrainConfig]]:
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


def differing_settings(configs: Sequence[TrainConfig]) -> list[str]:
    """Names of the settings (other than the table's columns) that differ between runs."""
    rows = [json.loads(json.dumps(c.to_json())) for c in configs]
    keys = [k for k in rows[0] if k not in _TABLE_KEYS] if rows else []
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def budget_note(base: TrainConfig, num_train_users: int | None) -> str:
    """How the runs' budgets compare, for the report."""
    steps = base.steps_for(num_train_users) if num_train_users else base.steps_per_epoch
    epoch = (
        f"{steps} steps × {base.batch_size} = {steps * base.batch_size} users"
        if steps
        else (f"one pass over the train users, >= {base.min_steps_per_epoch} steps")
    )
    stop = (
        f"stops once its validation figure (column \"judged by\": val_ndcg@10 of the "
        "validation item for runs with an item side, else val_loss) has not improved by "
        f"{base.min_delta:g} (relative) for {base.early_stopping_patience} epochs"
        if base.early_stopping_patience
        else "early stopping off: trains the full cap"
    )
    return (
        f"Equal budget, trained to convergence: every run has the same cap, {base.epochs} "
        f"epochs of {epoch} (another batch size b trains E/b steps per epoch), {stop}, "
        "and keeps the weights of its best epoch by that figure (evaluated below; a run "
        "with nothing to validate it keeps its last epoch). Users seen = optimizer steps × "
        "batch size, as trained."
    )


def _cell(value, fmt: str = "{}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _run_table(
    configs: Sequence[TrainConfig],
    results: Sequence[dict],
    heading: str = "## Training runs",
    note: str = "",
) -> list[str]:
    """One row per run: its budget as trained and the settings in which runs differ."""
    differ = differing_settings(configs)
    lines = [heading, ""] + ([note, ""] if note else [])
    lines += [
        "| model | run dir | batch size | steps/epoch | max epochs | epochs | best epoch | "
        "stopped by | optimizer steps | users seen | judged by | best value | train seconds | "
        "differing settings |",
        "|---" * 14 + "|",
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
            f"{optimizer_steps} | {users} | {_cell(r.get('monitor'))} | "
            f"{_cell(r.get('best_value', r.get('best_val_loss')), '{:.4g}')} | "
            f"{_cell(r.get('train_seconds'))} | {settings} |"
        )
    lines.append("")
    return lines


def _ablation_ratios(records, rows, evaluation: EvalRequest) -> dict:
    """(task, metric, fraction, batch size) -> BT / DE `intervals.Comparison` at that batch
    size: the paired bootstrap of `scores.analyse` on the two runs' per-user scores."""
    size = {r["run_name"]: int(r["batch_size"]) for r in rows}
    kind = {r["run_name"]: r["model"] for r in rows}
    out = {}
    for b in sorted(set(size.values())):
        pair = [dataclasses.replace(r, model=kind[r.model]) for r in records
                if size.get(r.model) == b and kind.get(r.model) in ("bt", "de")]  # fmt: skip
        if {r.model for r in pair} != {"bt", "de"}:
            continue
        kwargs = (
            {"n_resamples": evaluation.bootstrap_resamples}
            if evaluation.bootstrap_resamples
            else {}
        )
        analysis = scores.analyse(pair, evaluation.settings.k, baseline="de", **kwargs)
        for c in analysis["comparisons"]:
            out[(c["task"], c["metric"], c["fraction"], b)] = c
    return out


def _ablation_section(rows: Sequence[dict], images: Sequence[str], ratios=None) -> list[str]:
    """Per (task, metric, fraction): models × batch sizes, mean ± std over seeds, then
    BT / DE − 1 with its 95% paired interval (``ratios``, `_ablation_ratios`)."""
    ratios = ratios or {}
    lines = [
        "## Batch-size ablation",
        "",
        "Each model pretrained at each batch size with the same number of users seen "
        "(steps per epoch scaled by 1/batch size; one pretraining seed), then probed as "
        "above. Mean ± std over label-sampling seeds; `bt vs de`: BT / DE − 1 with its 95% "
        "paired bootstrap interval over users.",
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
                c = ratios.get((task, metric, fraction, b))
                cells.append("n/a" if c is None else report.ratio_cell(c["ratio"], c["ratio_ci"]))
            lines.append("| bt vs de | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in images] + [""]
    return lines


def _append_sections(path: str, sections: list[str]) -> None:
    """Appends ``sections`` to the report written by `report.write_report`."""
    with open(path) as f:
        text = f.read()
    atomic.write_text(path, text.rstrip("\n") + "\n\n" + "\n".join(sections))


# --------------------------------------------------------------------------
# The driver


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """How the runs are evaluated (the `bt_tf.evaluate` flags of `bt_tf.reproduce`)."""

    label_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    seeds: int = 3
    tasks: tuple[str, ...] | None = None
    include_floors: bool = True
    settings: EvalSettings = EvalSettings()
    protocol: Protocol = Protocol()
    cache: bool = True
    baseline: str = "de"
    compare: tuple[str, ...] = ("bt", "bt+de", FINE_TUNE)
    bootstrap_resamples: int | None = None
    progress: bool = True
    repeated_fractions: tuple[float, ...] | None = CLAIM_FRACTIONS
    claim_models: tuple[str, str] = ("bt", "de")
    claim_users: str = "all"


@dataclasses.dataclass(frozen=True)
class Ablation:
    """The batch-size ablation: ``models`` trained at each of ``batch_sizes``
    (none: no ablation; ``skip_too_big``: drop those above the train users),
    capped at ``epochs`` (None: the main cap), evaluated on ``tasks`` at
    ``fractions`` (None: the smallest and largest main label fraction)."""

    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    skip_too_big: bool = False
    models: tuple[str, ...] = ("bt", "de")
    epochs: int | None = None
    fractions: tuple[float, ...] | None = None
    tasks: tuple[str, ...] = (FAVORITE_GENRE, NEXT_ITEM)


def _train_all(configs: Sequence[TrainConfig], what: str) -> list[dict]:
    """Trains (or reuses: `bt_tf.train` returns a finished run untouched) every config."""
    results = []
    for c in configs:
        logging.info(
            "== %s %s (seed %d) at batch size %d in %s",
            what,
            c.model,
            c.seed,
            c.batch_size,
            c.run_dir,
        )
        results.append(trainer.train(c))
    return results


def reproduce(
    base: TrainConfig,
    output_dir: str,
    *,
    models: Sequence[str] = MODELS,
    model_configs: Mapping[str, TrainConfig] | None = None,
    evaluation: EvalRequest = EvalRequest(),
    ablation: Ablation = Ablation(),
    pretrain_seeds: int = DEFAULT_PRETRAIN_SEEDS,
) -> dict:
    """Trains (or reuses) every run, evaluates, writes ``<output_dir>/report/``.

    ``base`` carries every shared training setting; ``model_configs`` a
    model's own settings (default ``base``), see `main_configs`. Only
    ``model``, ``run_dir`` (and, for the ablation, ``batch_size`` /
    ``steps_per_epoch`` / ``epochs``) change. Every model is trained with
    ``pretrain_seeds`` seeds (`seed_configs`); its runs share the model's name
    in the rows (``pretrain_seed`` tells them apart), so the report pools them.
    The ablation trains the first seed only. ``ablation.batch_sizes=()``: no ablation.
    Returns ``{"report": path of report.md, "rows": main rows, "ablation_rows": [...],
    "times": `run_times` (+ ``ablation_wall_s``)}``.
    """
    report_dir = os.path.join(output_dir, REPORT_DIR)
    artifact_dir = preprocess.preprocess(base.data)
    # The users an epoch passes over: the train split's, or every split's (--train_users=all).
    n_train = base.num_train_users(dataset.load_metadata(artifact_dir)["num_users"])
    configs = main_configs(base, output_dir, models, own=model_configs, num_train_users=n_train)
    seeded = seed_configs(configs, pretrain_seeds)
    start = time.perf_counter()
    results = _train_all([c for _, c in seeded], "training")
    wall = {"training": time.perf_counter() - start}
    if base.leave_one_out:  # the field's protocol: the contenders as recommenders
        start = time.perf_counter()
        md = recommend_and_compare(seeded, report_dir, baseline=evaluation.baseline)
        wall["evaluation"] = time.perf_counter() - start
        times = run_times(results, wall)
        _append_sections(md, _run_table([c for _, c in seeded], results,
                                        note=budget_note(base, n_train)))  # fmt: skip
        logging.info("report: %s", md)
        return {"report": md, "rows": [], "ablation_rows": [], "times": times}
    ev = evaluation
    start = time.perf_counter()
    rows = evaluate_runs(
        [c.run_dir for _, c in seeded],
        report_dir,
        names=[m for m, _ in seeded],
        label_fractions=ev.label_fractions,
        seeds=ev.seeds,
        tasks=ev.tasks,
        include_floors=ev.include_floors,
        settings=ev.settings,
        protocol=ev.protocol,
        cache=ev.cache,
        baseline=ev.baseline,
        compare=ev.compare,
        title=f"Downstream evaluation: {base.data.dataset}",
        bootstrap_resamples=ev.bootstrap_resamples,
        progress=ev.progress,
        repeated_fractions=ev.repeated_fractions,
        claim_models=ev.claim_models,
        claim_users=ev.claim_users,
    )
    wall["evaluation"] = time.perf_counter() - start
    md = os.path.join(report_dir, "report.md")
    times = run_times(results, wall)
    sections = _time_lines(times)
    sections += _run_table([c for _, c in seeded], results, note=budget_note(base, n_train))
    ablation_rows: list[dict] = []
    if ablation.batch_sizes:
        start = time.perf_counter()
        own = main_configs(
            base, output_dir, ablation.models, own=model_configs, num_train_users=n_train
        )
        ablation_rows, more = run_ablation(
            base,
            output_dir,
            ablation,
            main=configs,
            own=own,
            num_train_users=n_train,
            evaluation=evaluation,
        )
        sections += more
        times["ablation_wall_s"] = round(time.perf_counter() - start, 1)
    _append_sections(md, sections)
    logging.info("report: %s", md)
    return {"report": md, "rows": rows, "ablation_rows": ablation_rows, "times": times}


def run_times(results: Sequence[Mapping], wall: Mapping[str, float]) -> dict:
    """How long the main comparison took: ``training_s`` (the runs' own training time,
    `bt_tf.train`'s ``train_seconds``, also for runs this invocation reused),
    ``training_wall_s`` / ``evaluation_wall_s`` (this invocation's)."""
    trained = [float(r.get("train_seconds") or 0.0) for r in results]
    return {
        "training_s": round(sum(trained), 1),
        "runs": len(trained),
        "training_wall_s": round(wall["training"], 1),
        "evaluation_wall_s": round(wall["evaluation"], 1),
    }


def time_summary(times: Mapping[str, float]) -> str:
    """One line: the runs' training time and this invocation's evaluation time."""
    line = (
        f"training: {format_seconds(times['training_s'])} ({times['runs']} runs; this "
        f"invocation {format_seconds(times['training_wall_s'])}), evaluation: "
        f"{format_seconds(times['evaluation_wall_s'])}"
    )
    if "ablation_wall_s" in times:
        line += f", batch-size ablation: {format_seconds(times['ablation_wall_s'])}"
    return line


def _time_lines(times: Mapping[str, float]) -> list[str]:
    return [
        "## Time",
        "",
        f"Training {times['training_s']:.0f} s (the {times['runs']} runs' own training time, "
        f"as `bt_tf.train` measured it), evaluation {times['evaluation_wall_s']:.0f} s (wall, "
        f"this invocation: embeddings, every probe, intervals and report; training here "
        f"took {times['training_wall_s']:.0f} s of wall time).",
        "",
    ]


# The figures the leave-one-out comparison reports, primary first: (ranking, metric).
RECOMMENDER_FIGURES = (("full", "ndcg@10"), ("full", "hr@10"), ("sampled", "ndcg@10"),
                       ("sampled", "hr@10"))  # fmt: skip


def recommend_and_compare(
    seeded: Sequence[tuple[str, TrainConfig]],
    report_dir: str,
    *,
    baseline: str = "de",
    seed: int = 0,
    stage: str = "test",
) -> str:
    """Leave-one-out: every contender with an item side (not BT alone) and the popularity
    ranking scored on the test item (`recommender.score_run`; ``stage="val"``: on the
    validation item, as `tuning.compare` chooses recipes), each contender's mean over
    its pretraining seeds and its ratio to ``baseline`` with paired intervals over users
    and seeds (`recommender.compare_contenders`). Writes ``recommender.json`` and
    ``report.md`` to ``report_dir``; returns the report's path."""
    from bt_tf.evaluation import recommender

    os.makedirs(report_dir, exist_ok=True)
    cache: dict = {}
    rows, ranks = [], {}
    cases, config = None, None
    for m, c in seeded:
        if not c.uses_de:
            logging.info("%s (%s): no item side, not a recommender; skipped", m, c.run_dir)
            continue
        row = recommender.score_run(c.run_dir, cache, seed=seed, keep_ranks=True, stage=stage)
        scored = row.pop("ranks")
        if cases is not None and not np.array_equal(cases.targets, scored["cases"].targets):
            raise UserError(f"{c.run_dir}: scored on other users than the runs before it")
        cases, config = scored.pop("cases"), runs.read_config(c.run_dir)
        ranks.setdefault(m, []).append(scored)
        rows.append({"model": m, "pretrain_seed": c.seed, **row})
    if cases is None:
        raise UserError("leave_one_out compares runs with an item side: add de, bt+de or bt_ft")
    num_items = int(config["encoder"]["vocab_size"])
    counts = recommender.popularity_counts(config, cache, num_items)
    popular = recommender.score_popularity(cases, counts, seed=seed, keep_ranks=True)
    scored = popular.pop("ranks")
    scored.pop("cases")
    ranks["popularity"] = [scored]
    rows.append({"model": "popularity", "pretrain_seed": None, "stage": stage, **popular})
    comparisons = {}
    for ranking, metric in RECOMMENDER_FIGURES:
        k = int(metric.split("@")[1])
        gains = recommender.hits_at_k if metric.startswith("hr") else recommender.ndcg_gains_at_k
        per_model = {m: np.stack([gains(r[ranking], k) for r in rs]) for m, rs in ranks.items()}
        comparisons[f"{ranking} {metric}"] = recommender.compare_contenders(
            per_model, baseline, seed=seed
        )
    out = {
        "protocol": recommender.protocol_text("leave_one_out"),
        "stage": stage,
        "baseline": baseline,
        "runs": rows,
        "contenders": comparisons,
        "reference": recommender.SASREC_REFERENCES,
    }
    atomic.write_json(
        os.path.join(report_dir, recommender.JSON_FILE),
        report.json_safe(out),
        indent=1,
        allow_nan=False,
    )
    md = os.path.join(report_dir, "report.md")
    atomic.write_text(md, "\n".join(_recommender_section(out)))
    return md


def _recommender_section(out: Mapping) -> list[str]:
    """The leave-one-out report: one table per figure, contenders as rows."""
    baseline = out["baseline"]
    lines = ["# The contenders as recommenders (leave-one-out)", "", out["protocol"], ""]
    if out.get("stage") == "val":
        lines += ["Scored on the VALIDATION item (item n-1 after the history), not the test "
                  "item: the figures a recipe is chosen on.", ""]  # fmt: skip
    for figure, block in out["contenders"].items():
        lines += [
            f"## {figure}" + (" (primary)" if figure.startswith("full ndcg") else ""),
            "",
            f"| model | mean [95% CI] | per seed | / {baseline} [95% CI] | per-seed ratios |",
            "|---|---|---|---|---|",
        ]
        for m, cell in block["models"].items():
            c = block["comparisons"].get(m)
            ratio = (
                report.ratio_cell(c["ratio"], c["ci95"]) if c else ("-" if m == baseline else "")
            )
            seeds = " / ".join(f"{v:.4f}" for v in cell["per_seed"])
            per = " / ".join(f"{v:.3f}" for v in c["per_seed_ratios"]) if c else ""
            mean = report.value_cell(cell["mean"], cell["ci95"], ".4f")
            lines.append(f"| {m} | {mean} | {seeds} | {ratio} | {per} |")
        lines.append("")
    lines += [
        "Intervals: 95% percentile bootstrap, 2000 resamples of users and, for each model, "
        "of its pretraining seeds (paired over users). References (another setup, for "
        "orientation): "
        + "; ".join(
            f"{r['name']}: sampled HR@10 {r['sampled']['hr@10']}"
            + (f", full NDCG@10 {r['full']['ndcg@10']}" if "full" in r else "")
            for r in out["reference"]
        ),
        "",
    ]
    return lines


def run_ablation(
    base: TrainConfig,
    output_dir: str,
    ablation: Ablation,
    *,
    main: Mapping[str, TrainConfig],
    own: Mapping[str, TrainConfig],
    num_train_users: int,
    evaluation: EvalRequest,
) -> tuple[list[dict], list[str]]:
    """Trains and evaluates the ablation runs; writes its JSON and plots.

    Returns (its rows, its report sections).
    """
    report_dir = os.path.join(output_dir, REPORT_DIR)
    runs = ablation_configs(
        base,
        output_dir,
        batch_sizes=ablation.batch_sizes,
        models=ablation.models,
        num_train_users=num_train_users,
        epochs=ablation.epochs,
        main=main,
        own=own,
        skip_too_big=ablation.skip_too_big,
    )
    results = _train_all([c for _, _, c in runs], "ablation: training")
    fractions = ablation.fractions or sorted(
        {min(evaluation.label_fractions), max(evaluation.label_fractions)}
    )
    main_names = {c.run_dir: m for m, c in main.items()}
    # A log without item categories has no favorite_genre: the ablation runs without it.
    missing = unavailable_tasks(read_config(runs[0][2].run_dir)["artifact_dir"])
    tasks = [t for t in ablation.tasks if t not in missing]
    for t in ablation.tasks:
        if t in missing:
            logging.warning("ablation: %s not scored: %s", t, missing[t])
    if not tasks:
        why = "; ".join(f"{t}: {missing[t]}" for t in ablation.tasks)
        return [], ["## Batch-size ablation", "", f"Not evaluated: no task to score ({why}).", ""]
    # Same out_dir as the main report: its cache serves reused main runs.
    records = evaluate_records(
        [c.run_dir for _, _, c in runs],
        report_dir,
        names=[main_names.get(c.run_dir, f"{m}@b{b}") for m, b, c in runs],
        label_fractions=fractions,
        seeds=evaluation.seeds,
        tasks=tasks,
        include_floors=False,
        settings=evaluation.settings,
        protocol=evaluation.protocol,
        cache=evaluation.cache,
        progress=evaluation.progress,
        repeated_fractions=evaluation.repeated_fractions,
    ).records
    rows = record_rows(records, evaluation.settings.k)
    for r in rows:  # model type + batch size: what the plot and table group by
        r["run_name"], r["model"] = r["model"], r["model_type"]
    ratios = _ablation_ratios(records, rows, evaluation)
    images = _ablation_plots(rows, report_dir, fractions)
    atomic.write_json(
        os.path.join(report_dir, ABLATION_JSON), report.json_safe(rows), indent=1, allow_nan=False
    )
    cap = f"{ablation.epochs} epochs (--ablation_epochs)" if ablation.epochs else "the same"
    sections = _ablation_section(rows, images, ratios) + _run_table(
        [c for _, _, c in runs],
        results,
        heading="### Ablation runs",
        note="Cap: "
        + cap
        + ", in epochs of the same number of users (steps per epoch scaled by 1/batch "
        "size); each run stops on its own val_loss. Users seen = optimizer steps × "
        "batch size, as trained.",
    )
    return rows, sections


def _ablation_plots(rows: Sequence[dict], report_dir: str, fractions) -> list[str]:
    """One plot per (task, metric, fraction): the metric against batch size."""
    images = []
    for task, metric in dict.fromkeys((r["task"], r["metric"]) for r in rows):
        for f in fractions:
            name = f"batch_size_{task}_{metric.replace('@', '')}_{100 * f:g}pct.png"
            images.append(
                report.plot_batch_size_ablation(
                    rows, os.path.join(report_dir, name), task=task, metric=metric, fraction=f
                )
            )
    return images
