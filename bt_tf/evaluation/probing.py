"""One contender through every task, fraction and seed, with a resumable on-disk cache.

`EvalPlan` is what every contender of one evaluation is probed on (the probe
context, the label fractions and seeds, the tasks, the cache dir, the clock);
`probe_records` probes one contender with it (`tasks.probe_contender`) and
returns one `Record` per (task, fraction, seed): the per-unit scores of every
scored user and the fit of every fold. Each record is stored in
``<cache_dir>/units/<contender>/<task>|<fraction>|<seed>.npz`` under a
fingerprint of the features, the settings and the protocol, so an
interrupted evaluation resumes where it stopped and a rerun recomputes
nothing.

At fraction 1.0 every seed would label the same users, so only the first
seed is probed there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import threadpoolctl

from bt_tf.evaluation.caching import cache_file, fingerprint_key, write_atomically
from bt_tf.evaluation.contenders import PRIOR_CONTENDER, Contender
from bt_tf.evaluation.tasks import ProbeContext, Units, get_task, probe_contender
from bt_tf.evaluation.timing import StageClock

__all__ = ["EvalPlan", "Record", "probe_records", "probe_job", "record_rows", "seeds_at"]

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
    """

    ctx: ProbeContext
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    cache_dir: str | None = None
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    clock: StageClock = dataclasses.field(default_factory=StageClock)


def seeds_at(fraction: float, seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds probed at ``fraction``: the first only at 1.0 (every seed labels everyone)."""
    return tuple(seeds[:1]) if fraction >= 1.0 else tuple(seeds)


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


def _model_name(contender: Contender, task: str) -> str:
    if contender.name == PRIOR_CONTENDER:
        return get_task(task).prior_name
    return contender.name


def _fingerprint(plan: EvalPlan, contender: Contender) -> str:
    ctx = plan.ctx
    return fingerprint_key(
        {
            "features": dict(contender.fingerprint),
            "settings": dataclasses.asdict(ctx.settings),
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


def probe_records(
    plan: EvalPlan, contender: Contender, *, extra: Mapping[str, Any] | None = None
) -> list[Record]:
    """Every (task, fraction, seed) of ``plan`` for ``contender``, from the cache where it
    holds them. ``extra`` is carried by every record (e.g. the run's directory)."""
    key = _fingerprint(plan, contender)
    directory = None
    if plan.cache_dir is not None:
        directory = cache_file(os.path.join(plan.cache_dir, UNITS_DIR), contender.key, "")
    out = []
    for task in plan.tasks:
        if contender.tasks is not None and task not in contender.tasks:
            continue
        name = _model_name(contender, task)
        with plan.clock(f"{contender.key}: {task}"):
            for fraction in plan.fractions:
                for seed in seeds_at(fraction, plan.seeds):
                    path = None
                    if directory is not None:
                        path = cache_file(directory, f"{task}|{fraction!r}|{seed}", ".npz")
                    cached = _load(path, key) if path else None
                    if cached is None:
                        units, fits = probe_contender(plan.ctx, contender, task, fraction, seed)
                        if path:
                            _store(path, key, units, fits)
                    else:
                        units, fits = cached
                    out.append(Record(name, contender.pretrain_seed, task, fraction, seed,
                                      units, tuple(fits), dict(extra or {})))  # fmt: skip
                    _log(out[-1], plan.ctx.settings.k, cached is not None)
    return out


def probe_job(plan: EvalPlan, contender: Contender, extra=None) -> tuple[list[Record], list]:
    """A worker process's job: `probe_records` with one BLAS thread, and the times of
    its stages (a spawned process starts without the parent's logging set-up)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        records = probe_records(plan, contender, extra=extra)
    return records, plan.clock.records


def _log(record: Record, k: int, cached: bool) -> None:
    values = get_task(record.task).metric_values(record.units, k)
    text = ", ".join(f"{m}={v:.4f}" for m, v in values.items())
    logging.info(
        "%s seed%d %s fraction=%g seed=%d: %s%s", record.model, record.pretrain_seed,
        record.task, record.fraction, record.seed, text, " (cached)" if cached else "",
    )  # fmt: skip


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
