"""One contender through every task, fraction and seed, with a resumable on-disk cache.

`EvalPlan` is what every contender of one evaluation is probed on (the probe
context, the label fractions and seeds, the tasks, the cache dir, the clock);
`probe_records` probes one contender with it (`tasks.probe_contender`) and
returns one `Record` per (task, fraction, seed): the per-unit scores of every
scored user and the fit of every fold. Each record is stored in
``<cache_dir>/units/<contender>/<task>|<fraction>|<seed>.npz`` under a
fingerprint of the features, the settings its task reads and the protocol, so an
interrupted evaluation resumes where it stopped and a rerun recomputes
nothing.

At fraction 1.0 every seed would label the same users, so only the first
seed is probed there; and label seeds are repeated only where they decide the
claim: its tasks (`tasks.CLAIM_METRICS`) at its fractions (`EvalPlan.repeated`,
default `intervals.CLAIM_FRACTIONS`). Elsewhere (e.g. 25%, user attributes) the
first seed alone: more seeds would not change the verdict, and the probes at
large fractions cost the most.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import threadpoolctl

from bt_tf.evaluation.caching import cache_file, fingerprint_key, write_atomically
from bt_tf.evaluation.contenders import PRIOR_CONTENDER, Contender
from bt_tf.evaluation.intervals import CLAIM_FRACTIONS
from bt_tf.evaluation.tasks import CLAIM_METRICS, ProbeContext, Units, get_task, probe_contender
from bt_tf.evaluation.timing import StageClock

__all__ = [
    "EvalPlan",
    "Record",
    "record_weight",
    "plan_steps",
    "probe_records",
    "worker_init",
    "probe_job",
    "record_rows",
    "seeds_at",
]

UNITS_DIR = "units"


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What every contender of one evaluation is probed on.

    Attributes:
        ctx: the population, labels, folds, settings and protocol.
        fractions, seeds: label fractions and label-sampling seeds.
        tasks: subset of ``ctx.labels``.
        cache_dir: where finished records are stored and reused (None: no cache).
        fingerprint: identifies the data (users, width) in the cache.
        clock: records the time of each stage.
        repeated: the fractions at which the claim's tasks are probed with every
            seed (`seeds_at`; None: every task at every fraction below 1).
    """

    ctx: ProbeContext
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    cache_dir: str | None = None
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    clock: StageClock = dataclasses.field(default_factory=StageClock)
    repeated: tuple[float, ...] | None = CLAIM_FRACTIONS

    def seeds_at(self, task: str, fraction: float) -> tuple[int, ...]:
        return seeds_at(fraction, self.seeds, self.repeated, task=task)


def seeds_at(
    fraction: float,
    seeds: Sequence[int],
    repeated: Sequence[float] | None = None,
    *,
    task: str | None = None,
) -> tuple[int, ...]:
    """The seeds probed at ``fraction``: the first only at 1.0 (every seed labels
    everyone), and, unless ``repeated`` is None, at fractions not in ``repeated`` and
    for a ``task`` that is not one of the claim's."""
    if fraction >= 1.0:
        return tuple(seeds[:1])
    if repeated is not None and (
        not _among(fraction, repeated) or (task is not None and task not in CLAIM_METRICS)
    ):
        return tuple(seeds[:1])
    return tuple(seeds)


def _among(fraction: float, fractions: Sequence[float]) -> bool:
    return any(abs(float(fraction) - float(f)) < 1e-12 for f in fractions)


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One contender's probes of one task at one (fraction, seed), every fold."""

    model: str
    pretrain_seed: int
    task: str
    fraction: float
    seed: int
    units: Units
    fits: tuple[dict, ...]
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cpu_s: float | None = None  # CPU seconds of its probes (None: read from the cache)


def _model_name(contender: Contender, task: str) -> str:
    if contender.name == PRIOR_CONTENDER:
        return get_task(task).prior_name
    return contender.name


def _fingerprint(plan: EvalPlan, contender: Contender, task: str) -> str:
    """The cache key of ``contender``'s records of ``task``: its features, the settings
    the task reads (`tasks.Task.settings_read`: a flag of another task leaves its
    cache valid), the protocol and the data."""
    ctx = plan.ctx
    settings = dataclasses.asdict(ctx.settings)
    return fingerprint_key(
        {
            "features": dict(contender.fingerprint),
            "settings": {name: settings[name] for name in get_task(task).settings_read},
            "protocol": dataclasses.asdict(ctx.protocol),
            "data": dict(plan.fingerprint),
        }
    )


def _load(path: str, key: str) -> tuple[Units, tuple[dict, ...]] | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != key:
                return None
            units = Units.from_arrays({f: z[f] for f in Units.FIELDS})
            return units, tuple(json.loads(str(z["fits"])))
    except (OSError, ValueError, KeyError) as err:  # unreadable: recompute
        logging.warning("ignoring cached units %s: %s", path, err)
        return None


def _store(path: str, key: str, units: Units, fits: Sequence[dict]) -> None:
    arrays = units.arrays()
    write_atomically(
        path,
        "wb",
        lambda f: np.savez(f, fingerprint=np.array(key), fits=np.array(json.dumps(fits)), **arrays),
    )


def record_weight(fraction: float) -> float:
    """The expected cost of one (task, fraction, seed) probe relative to the others, for
    the time left of `progress.Progress`: its fits grow with the labelled users
    (``fraction``), its scoring is the same at every fraction."""
    return float(fraction) + 0.02


def plan_steps(plan: EvalPlan, tasks: Sequence[str] | None = None) -> list[float]:
    """The `record_weight` of every record `probe_records` returns for one contender."""
    return [
        record_weight(fraction)
        for task in (plan.tasks if tasks is None else tasks)
        for fraction in plan.fractions
        for _ in plan.seeds_at(task, fraction)
    ]


# (weight, message) -> None: told after every record (`progress.Progress.step`).
OnRecord = Callable[[float, str], None]


def probe_records(
    plan: EvalPlan,
    contender: Contender,
    *,
    extra: Mapping[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    on_record: OnRecord | None = None,
) -> list[Record]:
    """Every (task, fraction, seed) of ``plan`` (or of ``tasks``) for ``contender``, from
    the cache where it holds them. ``extra`` is carried by every record (e.g. the run's
    directory); ``on_record(weight, line)`` is told after each (default: the line is
    logged)."""
    directory = None
    if plan.cache_dir is not None:
        directory = cache_file(os.path.join(plan.cache_dir, UNITS_DIR), contender.key, "")
    out = []
    for task in plan.tasks if tasks is None else tasks:
        if contender.tasks is not None and task not in contender.tasks:
            continue
        name = _model_name(contender, task)
        key = _fingerprint(plan, contender, task)
        with plan.clock(f"{contender.key}: {task}"):
            for fraction in plan.fractions:
                for seed in plan.seeds_at(task, fraction):
                    path = None
                    if directory is not None:
                        path = cache_file(directory, f"{task}|{fraction!r}|{seed}", ".npz")
                    cached = _load(path, key) if path else None
                    cpu = None
                    if cached is None:
                        start = time.process_time()
                        units, fits = probe_contender(plan.ctx, contender, task, fraction, seed)
                        cpu = time.process_time() - start
                        if path:
                            _store(path, key, units, fits)
                    else:
                        units, fits = cached
                    out.append(Record(name, contender.pretrain_seed, task, fraction, seed,
                                      units, tuple(fits), dict(extra or {}), cpu))  # fmt: skip
                    line = _line(out[-1], plan.ctx.settings.k, cached is not None)
                    if on_record is None:
                        logging.info(line)
                    else:
                        on_record(record_weight(fraction), line)
    return out


_QUEUE = None  # a worker's channel to the parent's progress line (`worker_init`)


def worker_init(queue) -> None:
    """A probe worker's start: its (weight, line) per record go to ``queue``; the parent
    prints them above its progress line. A spawned process starts without the
    parent's logging set-up: warnings still show."""
    global _QUEUE
    _QUEUE = queue
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)


def probe_job(
    plan: EvalPlan, contender: Contender, extra=None, tasks: Sequence[str] | None = None
) -> tuple[list[Record], list]:
    """A worker process's job: `probe_records` with one BLAS thread, and the times of
    its stages."""
    queue = _QUEUE
    on_record = None if queue is None else (lambda weight, line: queue.put((weight, line)))
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        records = probe_records(plan, contender, extra=extra, tasks=tasks, on_record=on_record)
    return records, plan.clock.records


def _line(record: Record, k: int, cached: bool) -> str:
    values = get_task(record.task).metric_values(record.units, k)
    text = ", ".join(f"{m}={v:.4f}" for m, v in values.items())
    return (
        f"{record.model} seed{record.pretrain_seed} {record.task} fraction={record.fraction:g} "
        f"seed={record.seed}: {text}{' (cached)' if cached else ''}"
    )


def record_rows(records: Sequence[Record], k: int) -> list[dict]:
    """One row per (record, metric): ``{"model", "pretrain_seed", "task", "metric",
    "fraction", "seed", "value", "n_test", "n_labelled", "prior_selected", "candidates",
    ...extra}`` (``n_test`` scored units, ``n_labelled`` mean labelled units per fold,
    ``prior_selected`` the share of folds whose selection kept the prior predictor)."""
    rows = []
    for r in records:
        values = get_task(r.task).metric_values(r.units, k)
        details = {
            "n_test": len(r.units),
            "n_labelled": float(np.mean([f["n_labelled"] for f in r.fits])) if r.fits else 0.0,
            "prior_selected": float(np.mean([f["prior_selected"] for f in r.fits]))
            if r.fits
            else float("nan"),
            "candidates": [f.get("candidate") for f in r.fits],
        }
        for metric, value in values.items():
            rows.append(
                {
                    "model": r.model,
                    "pretrain_seed": r.pretrain_seed,
                    "task": r.task,
                    "metric": metric,
                    "fraction": float(r.fraction),
                    "seed": int(r.seed),
                    "value": float(value),
                    **details,
                    **dict(r.extra),
                }
            )
    return rows
