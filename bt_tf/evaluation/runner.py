"""Evaluates trained runs and the floors on every task, and writes the report (`evaluate_runs`).

The steps: read and check the runs' configs (`read_runs`: one artifact dir,
one width, names unique but across the pretraining seeds of one model), load
the data once (`eval_data.load_eval_data`), probe each run's frozen embeddings
(`run_rows`, embeddings cached by `embedding_cache`), the floors (`floors`),
then write ``report.md``, ``results.json``, plots and ``timings.json``
(`write_outputs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf import runs
from bt_tf.evaluation import report
from bt_tf.evaluation.embedding_cache import (
    cached_embeddings,
    checkpoint_fingerprint,
    data_fingerprint,
    embed_users,
    restore_run,
)
from bt_tf.evaluation.eval_data import load_eval_data
from bt_tf.evaluation.floors import floor_rows, untrained_floor_rows
from bt_tf.evaluation.probing import EvalPlan, evaluate_features
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, EvalSettings
from bt_tf.evaluation.timing import StageClock

__all__ = [
    "CACHE_DIR",
    "TIMINGS_FILE",
    "Run",
    "read_runs",
    "run_names",
    "run_rows",
    "evaluate_runs",
    "write_outputs",
]

CACHE_DIR = "cache"
TIMINGS_FILE = "timings.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run to evaluate: its directory, ``config.json`` and name in the rows.

    Runs that differ only in their (pretraining) ``seed`` share one ``name``, so
    the report aggregates over their seeds; ``cache_name`` keeps their caches
    apart (`read_runs`; empty: ``name``).
    """

    run_dir: str
    config: Mapping[str, Any]
    name: str
    cache_name: str = ""

    def row_fields(self) -> dict:
        """What every row of the run carries besides the probe's columns."""
        config = self.config
        return dict(
            run_dir=self.run_dir,
            model_type=config.get("model", "bt"),
            batch_size=int(config["batch_size"]),
            epochs=int(config["epochs"]),
            steps_per_epoch=int(config.get("steps_per_epoch") or 0),
            pretrain_seed=int(config.get("seed", 0)),
        )


# config.json keys in which the pretraining seeds of one model differ.
_SEED_KEYS = ("seed", "run_dir")


def _seeds_of_one_model(configs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``configs`` differ only in ``seed`` (each its own) and ``run_dir``."""
    rest = {
        json.dumps({k: v for k, v in c.items() if k not in _SEED_KEYS}, sort_keys=True)
        for c in configs
    }
    seeds = [int(c.get("seed", 0)) for c in configs]
    return len(rest) == 1 and len(set(seeds)) == len(seeds)


def _cache_names(configs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """``name`` for the lowest seed of the runs of a name, ``name@seed<k>`` for the others
    (so a single run's caches keep their former names)."""
    seeds = [int(c.get("seed", 0)) for c in configs]
    lowest = {n: min(s for s, m in zip(seeds, names) if m == n) for n in names}
    return [n if s == lowest[n] else f"{n}@seed{s}" for s, n in zip(seeds, names)]


def run_names(configs: Sequence[Mapping[str, Any]], run_dirs: Sequence[str]) -> list[str]:
    """One name per run: its ``model`` ("bt", "de", "bt+de") when it is the only run
    of its model type or when the runs of that type differ only in ``seed`` (its
    pretraining seeds share the name); otherwise their run-dir basenames (made
    unique with ``-2``, ``-3``... if those collide too)."""
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
    """The runs of ``run_dirs``, checked to be evaluable together: one artifact
    dir and one ``max_len`` (the same users, labels and histories), and names
    (default `run_names`) unique except across runs that differ only in their
    pretraining ``seed``, whose caches are then named ``<name>@seed<k>`` (all
    but the lowest seed)."""
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
            "runs that differ in their seed alone)."
        )
    caches = _cache_names(configs, names)
    return [Run(*run) for run in zip(run_dirs, configs, names, caches)]


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds={seeds}: need at least one seed.")
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def run_rows(plan: EvalPlan, run: Run, data_fp: Mapping[str, Any]) -> list[dict]:
    """One run's rows: its frozen embeddings (cached under its checkpoint and
    ``data_fp``) through every task of ``plan``."""
    if not os.path.exists(os.path.join(run.run_dir, "metrics.json")):
        logging.warning(
            "%s has no metrics.json (unfinished?); using its best epoch so far", run.run_dir
        )
    checkpoint = checkpoint_fingerprint(run.run_dir)
    cache_name = run.cache_name or run.name

    def embed_run():
        encoder, item_emb, _ = restore_run(run.run_dir)
        return embed_users(encoder, plan.data, batch_size=plan.settings.embed_batch_size), item_emb

    with plan.clock(f"{cache_name}: embed"):
        emb, item_emb, hit = cached_embeddings(
            plan.cache_dir, cache_name, {"run": checkpoint, "data": data_fp}, embed_run
        )
    logging.info("%s: embeddings %s", cache_name, "cached" if hit else "computed")
    return evaluate_features(
        plan,
        run.name,
        emb,
        item_emb=item_emb,
        fingerprint=checkpoint,
        extra=run.row_fields(),
        cache_name=cache_name,
    )


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
    cache: bool = True,
    write: bool = True,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    title: str = "Downstream evaluation",
    timings: list | None = None,
) -> list[dict]:
    """Evaluates trained runs (and the floors) on every task; writes the report.

    Args:
        run_dirs: training run dirs (`bt_tf.train` output), all on one artifact dir.
        out_dir: report and cache directory (None: no cache, nothing written).
        label_fractions: fractions of train users whose labels the probes see.
        seeds: a count n (seeds 0..n-1) or explicit seeds.
        tasks: subset of `eval_data.available_tasks` (default: all).
        include_floors: add majority / popularity / bag-of-items / untrained.
        names: model names (default `run_names`); a name repeats only across runs
            that differ in their pretraining seed alone (their rows then pool).
        settings: probe and task settings.
        cache: reuse the user embeddings of every run and floor encoder
            (``out_dir/cache/embeddings/``, keyed by the checkpoint and the
            data) and finished (model, task, fraction, seed) results
            (``out_dir/cache/<model>.json``).
        write: write ``report.md``, ``results.json``, ``timings.json`` and
            plots to ``out_dir``.
        baseline, compare: the relative-improvement table of the report.
        title: the report's title.
        timings: if given, a list that gets one ``{"stage", "wall_s",
            "cpu_s"}`` per stage (loading, each model's embedding, each
            model's and floor's tasks, the report); every stage is also logged.

    Returns:
        Result rows (`tasks.evaluate_embeddings` layout); rows of runs also
        carry ``run_dir``, ``model_type``, ``batch_size``, ``epochs``,
        ``steps_per_epoch``, ``pretrain_seed``.
    """
    runs = read_runs(run_dirs, names)
    seeds = _seed_list(seeds)
    clock = StageClock(timings)
    with clock("load data"):
        data = load_eval_data(
            runs[0].config["artifact_dir"],
            width=int(runs[0].config["max_len"]),
            tasks=tasks,
            liked_threshold=settings.liked_threshold,
        )
        data_fp = data_fingerprint(data)
    plan = EvalPlan.make(
        data,
        fractions=[float(f) for f in label_fractions],
        seeds=seeds,
        settings=settings,
        cache_dir=os.path.join(out_dir, CACHE_DIR) if (cache and out_dir) else None,
        clock=clock,
    )
    rows: list[dict] = []
    for run in runs:
        rows += run_rows(plan, run, data_fp)
    if include_floors:
        rows += floor_rows(plan)
        configs, names = [r.config for r in runs], [r.name for r in runs]
        rows += untrained_floor_rows(plan, configs, names, data_fp)
    if write:
        write_outputs(
            rows, out_dir, clock, baseline=baseline, compare=compare, title=title, settings=settings
        )
    return rows


def write_outputs(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | None,
    clock: StageClock,
    *,
    baseline: str,
    compare: Sequence[str],
    title: str,
    settings: EvalSettings,
) -> None:
    """The report (`report.write_report`) and ``timings.json`` (every stage of ``clock``)."""
    if out_dir is None:
        raise ValueError("write=True needs an out_dir.")
    with clock("report"):
        paths = report.write_report(
            rows,
            out_dir,
            baseline=baseline,
            compare=compare,
            title=title,
            protocol=settings.protocol(),
        )
    with open(os.path.join(out_dir, TIMINGS_FILE), "w") as f:
        json.dump({"stages": clock.records, "cpu_count": os.cpu_count()}, f, indent=1)
    logging.info("wrote %s", paths["markdown"])
