"""Evaluates trained runs and the floors on every task, and writes the report (`evaluate_runs`).

The steps: read and check the runs' configs (`read_runs`: one artifact dir,
one width; a name may repeat across pretraining seeds), load the data once
(`eval_data.load_eval_data`), pool the evaluated users and fold them
(`protocol.Protocol`), probe each run's frozen embeddings and every floor
(`probing.probe_records`, embeddings cached by `embedding_cache`), then write
``scores.parquet`` (per-user scores), the intervals, ``report.md``,
``results.json``, plots and ``timings.json`` (`write_outputs`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import threadpoolctl

from bt_tf import atomic, runs
from bt_tf.evaluation import floors, probing, report, scores, selection
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.embedding_cache import (
    cached_embeddings,
    checkpoint_fingerprint,
    data_fingerprint,
    embed_users,
    restore_run,
)
from bt_tf.evaluation.eval_data import EvalData, load_eval_data
from bt_tf.evaluation.intervals import CLAIM_FRACTIONS
from bt_tf.evaluation.labels import item_counts
from bt_tf.evaluation.probing import EvalPlan, Record, probe_job, probe_records, record_rows
from bt_tf.evaluation.progress import Progress
from bt_tf.evaluation.protocol import Population, Protocol
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.evaluation.tasks import ProbeContext
from bt_tf.evaluation.timing import StageClock

__all__ = [
    "CACHE_DIR",
    "CLAIM_USERS_ALL",
    "claim_populations",
    "TIMINGS_FILE",
    "Run",
    "read_runs",
    "run_names",
    "run_contender",
    "Evaluation",
    "evaluate_records",
    "evaluate_runs",
    "write_outputs",
]

CACHE_DIR = "cache"
CLAIM_USERS_ALL = "all"  # --claim_users: the claim on every scored user
TIMINGS_FILE = "timings.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run to evaluate: its directory, ``config.json`` and name in the rows."""

    run_dir: str
    config: Mapping[str, Any]
    name: str

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def row_fields(self) -> dict:
        """What every row of the run carries besides the probe's columns."""
        config = self.config
        return dict(
            run_dir=self.run_dir,
            model_type=config.get("model", "bt"),
            batch_size=int(config["batch_size"]),
            epochs=int(config["epochs"]),
            steps_per_epoch=int(config.get("steps_per_epoch") or 0),
        )


def _without_seed(config: Mapping[str, Any]) -> str:
    """The config's settings other than ``seed``, ``run_dir`` and ``init_from`` (a
    fine-tune's seed s starts from its pretraining's seed s), canonical."""
    skip = ("seed", "run_dir", "init_from")
    return json.dumps({k: v for k, v in config.items() if k not in skip},
                      sort_keys=True, default=str)  # fmt: skip


def _seeds_of_one_model(configs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``configs`` differ only in ``seed`` (each its own) and ``run_dir``."""
    seeds = [int(c.get("seed", 0)) for c in configs]
    return len({_without_seed(c) for c in configs}) == 1 and len(set(seeds)) == len(seeds)


def run_names(configs: Sequence[Mapping[str, Any]], run_dirs: Sequence[str]) -> list[str]:
    """One name per run: its ``model`` ("bt", "de", "bt+de") when it is the only run of
    its model type or when the runs of that type differ only in ``seed`` (they are
    its pretraining seeds and share the name); otherwise their run-dir basenames
    (made unique with ``-2``, ``-3``... if those collide too)."""
    types = [c.get("model", "bt") for c in configs]
    seeded = {
        t for t in types if _seeds_of_one_model([c for c in configs if c.get("model", "bt") == t])
    }
    names = [
        t if t in seeded else os.path.basename(os.path.normpath(d)) or t
        for t, d in zip(types, run_dirs)
    ]
    seen: dict[str, int] = {}
    out = []
    for n, t in zip(names, types):
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 or t in seeded else f"{n}-{seen[n]}")
    return out


def read_runs(run_dirs: Sequence[str], names: Sequence[str] | None = None) -> list[Run]:
    """The runs of ``run_dirs``, checked to be evaluable together: one artifact dir
    and one ``max_len`` (the same users, labels and histories); runs that share a
    name (default `run_names`) must have different seeds (pretraining seeds)."""
    if not run_dirs:
        raise ValueError("evaluate_runs needs at least one run directory.")
    configs = [runs.read_config(d) for d in run_dirs]
    artifacts = {os.path.normpath(c["artifact_dir"]) for c in configs}
    if len(artifacts) != 1:
        listing = "; ".join(f"{d}: {c['artifact_dir']}" for d, c in zip(run_dirs, configs))
        raise ValueError(
            "runs evaluated together must share one artifact dir (the same users and "
            f"labels), got {listing}. Evaluate them separately."
        )
    widths = {int(c["max_len"]) for c in configs}
    if len(widths) != 1:
        raise ValueError(f"runs have different max_len {sorted(widths)}; evaluate them apart.")
    names = list(names) if names is not None else run_names(configs, run_dirs)
    repeated = {n for n in names if names.count(n) > 1}
    if len(names) != len(run_dirs) or not all(
        _seeds_of_one_model([c for c, m in zip(configs, names) if m == n]) for n in repeated
    ):
        raise ValueError(
            f"names {names} must be unique, one per run dir (a name repeats only across "
            "runs that differ in their seed alone: that model's pretraining seeds)."
        )
    return [Run(d, c, n) for d, c, n in zip(run_dirs, configs, names)]


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds={seeds}: need at least one seed.")
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def run_contender(
    run: Run,
    data: EvalData,
    population: Population,
    *,
    data_fp: Mapping[str, Any],
    cache_dir: str | None,
    settings: EvalSettings,
    clock: StageClock,
) -> Contender:
    """A run's frozen embeddings (cached under its checkpoint and ``data_fp``) as a contender."""
    if not os.path.exists(os.path.join(run.run_dir, "metrics.json")):
        logging.warning(
            "%s has no metrics.json (unfinished?); using its best epoch so far", run.run_dir
        )
    checkpoint = checkpoint_fingerprint(run.run_dir)
    contender_key = Contender(run.name, run.seed, None).key

    def embed_run():
        encoder, item_emb, _ = restore_run(run.run_dir)
        return embed_users(encoder, data, batch_size=settings.embed_batch_size), item_emb

    with clock(f"{contender_key}: embed"):
        emb, items, hit = cached_embeddings(
            cache_dir, contender_key, {"run": checkpoint, "data": data_fp}, embed_run
        )
    logging.info("%s: embeddings %s", contender_key, "cached" if hit else "computed")
    return Contender(run.name, run.seed, population.stack(emb), items, None, checkpoint)


def _context(
    data: EvalData, protocol: Protocol, settings: EvalSettings, train_users: str, tasks
) -> ProbeContext:
    population = Population.make(data.user_ids, protocol.population_splits())
    history = population.stack(data.history)
    rows = floors.fit_rows(population, train_users)
    return ProbeContext(
        population=population,
        labels={t: population.stack_labels(data.labels[t]) for t in tasks},
        history=history,
        num_items=data.num_items,
        item_counts=item_counts(history[rows], data.num_items),
        folds=protocol.folds(population),
        settings=settings,
        protocol=protocol,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """What `evaluate_records` probed: every contender's records, on ``ctx``, the runs,
    and the default tasks the data could not support, and why
    (`eval_data.EvalData.not_scored`)."""

    records: list[Record]
    ctx: ProbeContext
    clock: StageClock
    runs: list[Run] = dataclasses.field(default_factory=list)
    not_scored: Mapping[str, str] = dataclasses.field(default_factory=dict)


def evaluate_records(
    run_dirs: Sequence[str],
    out_dir: str | None,
    *,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int | Sequence[int] = 3,
    tasks: Sequence[str] | None = None,
    include_floors: bool | Sequence[str] = True,
    names: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    protocol: Protocol = Protocol(),
    cache: bool = True,
    timings: list | None = None,
    workers: int | None = None,
    progress: bool = True,
    repeated_fractions: Sequence[float] | None = CLAIM_FRACTIONS,
) -> Evaluation:
    """Probes trained runs (and the floors) on every task; the records, not a report.

    Arguments as `evaluate_runs`'s; ``include_floors`` may also name the floors
    to probe (e.g. ``("svd",)``; the prior predictor is named ``majority`` /
    ``popularity`` per task, ``prior`` here).
    """
    runs_ = read_runs(run_dirs, names)
    workers = workers or min(4, os.cpu_count() or 1)
    clock = StageClock(timings)
    with clock("load data"):
        data = load_eval_data(
            runs_[0].config["artifact_dir"],
            width=int(runs_[0].config["max_len"]),
            tasks=tasks,
            liked_threshold=settings.liked_threshold,
            splits=protocol.population_splits(),
        )
        data_fp = data_fingerprint(data)
    task_names = tuple(data.labels)
    train_users = runs_[0].config.get("train_users", "train")
    ctx = _context(data, protocol, settings, train_users, task_names)
    cache_dir = os.path.join(out_dir, CACHE_DIR) if (cache and out_dir) else None
    plan = EvalPlan(
        ctx=ctx,
        fractions=tuple(float(f) for f in label_fractions),
        seeds=tuple(_seed_list(seeds)),
        tasks=task_names,
        cache_dir=cache_dir,
        fingerprint=dict(data_fp, train_users=train_users),
        clock=clock,
        repeated=None if repeated_fractions is None else tuple(repeated_fractions),
    )
    kw = dict(cache_dir=cache_dir, settings=settings, clock=clock)
    jobs = [
        (run_contender(run, data, ctx.population, data_fp=data_fp, **kw), run.row_fields())
        for run in runs_
    ]
    if include_floors:
        wanted = None if include_floors is True else set(include_floors)
        dim = int(runs_[0].config["encoder"]["dim"])
        rows = floors.fit_rows(ctx.population, train_users)
        extra = floors.history_floors(ctx.history, ctx.num_items, rows, dim=dim, settings=settings,
                                      clock=clock)  # fmt: skip
        extra = [c for c in extra if wanted is None or c.name in wanted]
        if wanted is None or "untrained" in wanted:
            extra += floors.untrained_floors(
                data, ctx.population, [r.config for r in runs_], [r.name for r in runs_],
                data_fp=data_fp, **kw,
            )  # fmt: skip
        jobs += [(contender, None) for contender in extra]
    for task, why in data.not_scored.items():
        logging.warning("%s: not scored: %s", task, why)
    return Evaluation(_probe_all(plan, jobs, workers, progress), ctx, clock, runs_,
                      data.not_scored)  # fmt: skip


def evaluate_runs(
    run_dirs: Sequence[str],
    out_dir: str | None,
    *,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int | Sequence[int] = 3,
    tasks: Sequence[str] | None = None,
    include_floors: bool = True,
    names: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    protocol: Protocol = Protocol(),
    cache: bool = True,
    write: bool = True,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    title: str = "Downstream evaluation",
    timings: list | None = None,
    bootstrap_resamples: int | None = None,
    workers: int | None = None,
    claim_models: tuple[str, str] = scores.CLAIM_MODELS,
    claim_users: str = CLAIM_USERS_ALL,
    progress: bool = True,
    repeated_fractions: Sequence[float] | None = CLAIM_FRACTIONS,
) -> list[dict]:
    """Evaluates trained runs (and the floors) on every task; writes the report.

    Args:
        run_dirs: training run dirs (`bt_tf.train` output), all on one artifact dir;
            runs of one model with different seeds are its pretraining seeds.
        out_dir: report and cache directory (None: no cache, nothing written).
        label_fractions: fractions of the labelled pool whose labels the probes see.
        seeds: label-sampling seeds: a count n (seeds 0..n-1) or explicit seeds.
        tasks: subset of `eval_data.available_tasks` (default: all).
        include_floors: add majority / popularity / bag-of-items / svd / untrained.
        names: model names (default `run_names`).
        settings: probe settings; protocol: who is labelled and who is scored.
        cache: reuse user embeddings (``out_dir/cache/embeddings/``, keyed by the
            checkpoint and the data) and finished (contender, task, fraction,
            seed) probes (``out_dir/cache/units/``).
        write: write ``scores.parquet``, ``report.md``, ``results.json``,
            ``timings.json`` and plots to ``out_dir`` (`write_outputs`).
        baseline, compare: the models the report compares (ratios over ``baseline``).
        claim_models: the claim's (model, baseline), whatever ``baseline`` is.
        claim_users: ``all`` (every scored user) or a split: the claim is scored on
            that split's users (and, beside it, on all); see `claim_populations`.
        title: the report's title.
        timings: if given, a list that gets one ``{"stage", "wall_s", "cpu_s"}``
            per stage; every stage is also logged.
        bootstrap_resamples: resamples of the intervals (default
            `intervals.DEFAULT_RESAMPLES`).
        workers: contenders probed at once (processes; default: the CPU count, at most 4).
        progress: print one updating progress line while probing (`progress.Progress`).
        repeated_fractions: the fractions probed with every label seed (default: the
            claim's; elsewhere the first seed alone: more cannot change the verdict);
            None: every fraction below 1.

    Returns:
        Result rows (`probing.record_rows`): one per (model, pretraining seed,
        task, metric, fraction, seed); rows of runs also carry ``run_dir``,
        ``model_type``, ``batch_size``, ``epochs``, ``steps_per_epoch``.
    """
    if claim_users != CLAIM_USERS_ALL and claim_users not in protocol.population_splits():
        raise ValueError(
            f"claim_users={claim_users!r}: the protocol evaluates the "
            f"{', '.join(protocol.population_splits())} split(s); use {CLAIM_USERS_ALL!r} or "
            "one of them."
        )
    evaluation = evaluate_records(
        run_dirs, out_dir, label_fractions=label_fractions, seeds=seeds, tasks=tasks,
        include_floors=include_floors, names=names, settings=settings, protocol=protocol,
        cache=cache, timings=timings, workers=workers, progress=progress,
        repeated_fractions=repeated_fractions,
    )  # fmt: skip
    rows = record_rows(evaluation.records, settings.k)
    if write:
        write_outputs(
            evaluation.records, rows, out_dir, evaluation.clock, ctx=evaluation.ctx,
            baseline=baseline, compare=compare, title=title,
            bootstrap_resamples=bootstrap_resamples, runs=evaluation.runs,
            claim_models=claim_models, claim_users=claim_users,
            not_scored=evaluation.not_scored,
        )  # fmt: skip
    return rows


def _probe_all(plan: EvalPlan, jobs, workers: int, progress: bool = True) -> list[Record]:
    """`probing.probe_records` of every (contender, extra fields) and task, in ``workers``
    processes, with one progress line (`progress.Progress`; ``progress`` False: none).

    The probes are numpy and scipy, one BLAS thread each; the workers are spawned
    (this process has TensorFlow's threads, which a fork would copy in whatever
    state they are), and their job (`probing.probe_job`) imports neither
    TensorFlow nor the encoders (a ``python -m`` entry point is imported again in
    the child, quietly: `bt_tf.cli`). One job is one contender's task; the costliest
    jobs start first (so no core idles at the end while one long job runs), and
    records come back in (contender, task) order, so the output does not depend on
    ``workers``. Each worker reports every finished record through a queue; this
    process prints it above the progress line.
    """
    units = [(c, extra, task) for c, extra in jobs for task in plan.tasks
             if c.tasks is None or task in c.tasks]  # fmt: skip
    steps = [probing.plan_steps(plan, (task,)) for _, _, task in units]
    line = Progress(
        "evaluation",
        sum(len(s) for s in steps),
        total_weight=sum(sum(s) for s in steps),
        unit="probes",
        enabled=progress,
    )
    with line:
        if workers <= 1 or len(units) <= 1:
            with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
                return [
                    r
                    for c, extra, task in units
                    for r in probe_records(plan, c, extra=extra, tasks=(task,), on_record=line.step)
                ]
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.SimpleQueue()
        worker_plan = dataclasses.replace(plan, clock=StageClock())
        costliest_first = sorted(range(len(units)), key=lambda i: (-_cost(units[i], steps[i]), i))
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=probing.worker_init, initargs=(queue,)
        ) as pool:
            futures = {}
            for i in costliest_first:
                c, extra, task = units[i]
                futures[i] = pool.submit(probe_job, worker_plan, c, extra, (task,))
            pending = set(futures.values())
            while pending:
                _, pending = concurrent.futures.wait(pending, timeout=0.25)
                while not queue.empty():
                    line.step(*queue.get())
            while not queue.empty():
                line.step(*queue.get())
            out = []
            for i in range(len(units)):
                records, stages = futures[i].result()
                out += records
                plan.clock.records.extend(stages)
    return out


def _cost(unit, steps: Sequence[float]) -> float:
    """A job's expected cost: its records' weights; the prior (no features) is cheap."""
    contender = unit[0]
    return sum(steps) * (0.1 if contender.users.shape[1] == 0 else 1.0)


def write_outputs(
    records: Sequence[Record],
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | None,
    clock: StageClock,
    *,
    ctx: ProbeContext,
    baseline: str,
    compare: Sequence[str],
    title: str,
    bootstrap_resamples: int | None = None,
    runs: Sequence[Run] = (),
    claim_models: tuple[str, str] = scores.CLAIM_MODELS,
    claim_users: str = CLAIM_USERS_ALL,
    not_scored: Mapping[str, str] | None = None,
) -> dict:
    """``scores.parquet``, the intervals and claim (`scores.analyse`), the report
    (`report.write_report`) and ``timings.json``. Returns the report's paths.

    ``runs``: the evaluated runs, whose configs say which defaults chosen on labels
    they used (`selection`: the claim's in-sample / out-of-sample). ``not_scored``:
    tasks the data could not support -> why; the report and ``results.json`` list
    them, and the claim is decided without them (`scores.claim_block`)."""
    if out_dir is None:
        raise ValueError("write=True needs an out_dir.")
    os.makedirs(out_dir, exist_ok=True)
    with clock("scores"):
        path = os.path.join(out_dir, scores.SCORES_FILE)
        scores.write_scores(records, ctx.population, path, ctx.settings.k)
    provenance = chosen = None
    if runs:
        provenance = selection.used_provenance([r.config for r in runs], [r.name for r in runs])
        dataset = (runs[0].config.get("data") or {}).get("dataset", "")
        chosen = selection.chosen_users(ctx.population.user_ids, dataset, provenance)
    with clock("intervals"):
        kwargs = {} if bootstrap_resamples is None else {"n_resamples": bootstrap_resamples}
        analysis = scores.analyse(
            records, ctx.settings.k, baseline=baseline, claim_models=tuple(claim_models),
            claim_users=claim_populations(ctx.population, claim_users), chosen=chosen,
            not_scored=not_scored, **kwargs,
        )  # fmt: skip
    with clock("report"):
        paths = report.write_report(
            rows, analysis, out_dir, baseline=baseline, compare=compare, title=title,
            protocol=ctx.protocol.describe(), population=_population_note(ctx),
            provenance=provenance,
        )  # fmt: skip
    atomic.write_json(
        os.path.join(out_dir, TIMINGS_FILE),
        {"stages": clock.records, "cpu_count": os.cpu_count()},
        indent=1,
    )
    logging.info("wrote %s", paths["markdown"])
    return paths


def claim_populations(
    population: Population, claim_users: str
) -> list[tuple[str, np.ndarray | None]]:
    """`scores.analyse`'s ``claim_users`` of ``--claim_users``: ``all`` -> every scored
    user; a split (e.g. ``test``) -> that split's users first (the claim), then every
    scored user beside it."""
    if claim_users == CLAIM_USERS_ALL:
        return [(CLAIM_USERS_ALL, None)]
    rows = np.flatnonzero(population.split_of == claim_users)
    if not rows.size:
        raise ValueError(
            f"claim_users={claim_users!r}: the evaluated users ({', '.join(population.splits)} "
            f"split(s)) have none of that split; use {CLAIM_USERS_ALL!r} or one of them."
        )
    return [(claim_users, rows), (CLAIM_USERS_ALL, None)]


def _population_note(ctx: ProbeContext) -> str:
    counts = collections.Counter(ctx.population.split_of)
    splits = ", ".join(f"{counts[s]} {s}" for s in ctx.population.splits)
    scored = sum(f.scored.size for f in ctx.folds)
    return f"{ctx.protocol.name}; {ctx.population.size} users ({splits}), {scored} scored"
