"""Per-user scores: the ``scores.parquet`` table, and the intervals and claim computed from it.

Every probe's scored units (`tasks.Units`: one row per scored user, or per
scored (user, item) pair for liked item) are written with their model,
pretraining seed, task, label fraction, label seed and fold, so any figure of
the report can be recomputed from the table (`write_scores`, `read_scores`).
`analyse` turns the same units into every model's metric with a paired
bootstrap interval, the model-vs-baseline and model-vs-floor ratios and
differences, how often selection kept the prior predictor, and the claim
(`intervals`).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf.evaluation import intervals, metrics
from bt_tf.evaluation.protocol import Population
from bt_tf.evaluation.tasks import CLAIM_METRICS, get_task

__all__ = [
    "SCORES_FILE",
    "FLOORS",
    "is_floor",
    "write_scores",
    "read_scores",
    "unit_values",
    "analyse",
]

SCORES_FILE = "scores.parquet"
# Floors (listed after the learned models); "untrained(<run>)" counts as "untrained".
FLOORS = ("untrained", "bag_of_items", "svd", "majority", "popularity")


def is_floor(model: str) -> bool:
    """A floor: a name of `FLOORS`, or ``untrained(<run>)`` (one per architecture)."""
    return model in FLOORS or model.startswith("untrained(")


def _columns(records, population: Population, k: int) -> dict[str, np.ndarray]:
    cols = collections.defaultdict(list)
    for r in records:
        n = len(r.units)
        arrays = r.units.arrays()
        for name, value in (("model", r.model), ("task", r.task)):
            cols[name].append(np.full(n, value, dtype=object))
        for name, value in (("pretrain_seed", r.pretrain_seed), ("seed", r.seed)):
            cols[name].append(np.full(n, value, dtype=np.int64))
        cols["fraction"].append(np.full(n, r.fraction, dtype=np.float64))
        cols["user_id"].append(population.user_ids[arrays["user"]])
        cols["split"].append(population.split_of[arrays["user"]])
        for name in ("fold", "item", "label", "pred", "score", "rank"):
            cols[name].append(arrays[name])
        for name, values in _contributions(r.task, r.units, k).items():
            cols[name].append(values)
    return {name: np.concatenate(parts) for name, parts in cols.items()}


def _contributions(task: str, units, k: int) -> dict[str, np.ndarray]:
    """hit, ndcg, correct per unit (NaN where the task has none)."""
    n = len(units)
    out = {name: np.full(n, np.nan) for name in ("hit", "ndcg", "correct")}
    if units.rank is not None:
        out["hit"] = metrics.hits_at_k(units.rank, k)
        out["ndcg"] = metrics.ndcg_gains_at_k(units.rank, k)
    elif units.pred is not None:
        out["correct"] = (units.pred == units.label).astype(np.float64)
    elif units.score is not None:
        out["correct"] = ((units.score > 0).astype(np.int64) == units.label).astype(np.float64)
    return out


def write_scores(records, population: Population, path: str, k: int = 10) -> str:
    """Writes every record's units to a Parquet file ``path`` (one row per unit)."""
    import pyarrow as pa  # lazy: only writing the table needs it
    import pyarrow.parquet as pq

    cols = _columns(records, population, k)
    table = pa.table(
        {
            name: pa.array([_text(v) for v in values] if values.dtype == object else values)
            for name, values in cols.items()
        }
    )
    pq.write_table(table, path, compression="zstd")
    return path


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_scores(path: str) -> dict[str, np.ndarray]:
    """``scores.parquet`` as a dict of numpy columns."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def unit_values(task: str, metric: str, units, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(per-unit values, labels or None) of one metric, as `intervals.Cell` takes them."""
    kind = intervals.metric_kind(task, metric)
    if kind == "auc":
        return units.score.astype(np.float64), units.label
    if units.rank is not None:
        gains = metrics.hits_at_k if metric.startswith("hr@") else metrics.ndcg_gains_at_k
        return gains(units.rank, k), None
    correct = _contributions(task, units, k)["correct"]
    return correct, (units.label if kind == "balanced" else None)


def analyse(
    records,
    k: int,
    *,
    baseline: str = "de",
    claim_model: str = "bt",
    claim_fractions: Sequence[float] = intervals.CLAIM_FRACTIONS,
    n_resamples: int = intervals.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Every metric with its interval, the comparisons, the prior-selection shares and
    the claim, from the records' units (see the module docstring).

    Comparisons: every model against ``baseline``, every learned model against every
    floor. The claim: ``claim_model`` / ``baseline`` on each task of
    `tasks.CLAIM_METRICS`, the mean over ``claim_fractions`` (those evaluated).
    """
    by_task = collections.defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    out = {"cells": [], "comparisons": [], "prior_selected": _prior_shares(records)}
    claim_tasks = []
    for task, recs in by_task.items():
        cells, n_users, models = _cells(task, recs, k)
        pairs = [(m, baseline) for m in models if m != baseline]
        pairs += [(m, f) for m in models if not is_floor(m) for f in models if is_floor(f)]
        claim = None
        if task in CLAIM_METRICS and {claim_model, baseline} <= set(models):
            claim = (CLAIM_METRICS[task], claim_model, baseline, tuple(claim_fractions))
        res = intervals.task_intervals(
            {key: cell for key, (cell, _) in cells.items()}, n_users, pairs, claim=claim,
            n_resamples=n_resamples, seed=seed,
        )  # fmt: skip
        for (metric, fraction, model), (value, ci) in res["cells"].items():
            out["cells"].append(dict(
                task=task, metric=metric, fraction=fraction, model=model, value=value,
                ci95=list(ci), n_replicates=cells[(metric, fraction, model)][1], n_users=n_users,
            ))  # fmt: skip
        out["comparisons"] += [dict(task=task, **c.to_dict()) for c in res["comparisons"]]
        if res["claim"] is not None:
            ratio, ci = res["claim"]
            fractions = sorted({f for (m, f, _) in cells if f in claim[3]})
            claim_tasks.append(dict(
                task=task, metric=claim[0], ratio=ratio, ci95=list(ci),
                verdict=intervals.task_verdict(ratio, ci), fractions=fractions,
            ))  # fmt: skip
    out["claim"] = _claim_block(claim_tasks, claim_model, baseline) if claim_tasks else None
    out["bootstrap"] = {"resamples": n_resamples, "method": "percentile", "confidence": 0.95,
                        "unit": "user", "seed": seed}  # fmt: skip
    return out


def claim_objective(
    records,
    k: int,
    *,
    model: str,
    reference: str,
    fractions: Sequence[float],
    n_resamples: int = intervals.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """``model`` / ``reference`` on every task of `tasks.CLAIM_METRICS` (its claim
    metric, the mean over ``fractions``) and the mean over the tasks, with 95%
    intervals from ONE paired bootstrap of the users of all tasks together.

    Returns ``{"tasks": {task: {"metric", "ratio", "ci95"}}, "ratio", "ci95"}``.
    """
    claim = [r for r in records if r.task in CLAIM_METRICS and r.fraction in set(fractions)]
    users = np.unique(np.concatenate([r.units.user for r in claim]))
    by_task = collections.defaultdict(list)
    for r in claim:
        by_task[r.task].append(r)
    groups, names = [], []
    for task, recs in by_task.items():
        cells, _, _ = _cells(task, recs, k, users=users)
        metric = CLAIM_METRICS[task]
        pairs = [
            (cells[(metric, f, model)][0], cells[(metric, f, reference)][0])
            for f in fractions
            if (metric, f, model) in cells and (metric, f, reference) in cells
        ]
        if pairs:
            groups.append(pairs)
            names.append(task)
    if not groups:
        raise ValueError(f"no claim task has both {model} and {reference} at {list(fractions)}")
    out = intervals.mean_ratios(groups, int(users.size), n_resamples=n_resamples, seed=seed)
    return {
        "tasks": {
            task: {"metric": CLAIM_METRICS[task], "ratio": v, "ci95": list(ci)}
            for task, (v, ci) in zip(names, out)
        },
        "ratio": out[-1][0],
        "ci95": list(out[-1][1]),
    }


def _cells(task: str, recs, k: int, users: np.ndarray | None = None):
    """(metric, fraction, model) -> (Cell, replicates), the task's users, its models.

    ``users``: sorted ids the cells' ``unit_user`` index (default: the task's own).
    """
    ref = recs[0].units
    for r in recs[1:]:
        if not (
            np.array_equal(r.units.user, ref.user) and np.array_equal(r.units.label, ref.label)
        ):
            raise ValueError(
                f"{task}: {r.model} fraction={r.fraction} seed={r.seed} was scored on other "
                "users than the other models; they must share the evaluated users."
            )
    if users is None:
        users, unit_user = np.unique(ref.user, return_inverse=True)
    else:
        unit_user = np.searchsorted(users, ref.user)
    groups = collections.defaultdict(list)
    for r in recs:
        groups[(r.fraction, r.model)].append(r)
    cells = {}
    t = get_task(task)
    for (fraction, model), group in groups.items():
        for metric in t.metric_names(k):
            kind = intervals.metric_kind(task, metric)
            values = [unit_values(task, metric, r.units, k) for r in group]
            cell = intervals.Cell(
                kind,
                np.stack([v for v, _ in values]),
                unit_user.reshape(-1),
                values[0][1],
                group=ref.column("fold"),
            )
            cells[(metric, fraction, model)] = (cell, len(group))
    models = sorted({m for (_, m) in groups})
    return cells, int(users.size), models


def _prior_shares(records) -> list[dict]:
    """Per (task, fraction, model): the share of probe fits (folds x seeds x pretraining
    seeds) whose selection kept the prior predictor."""
    fits = collections.defaultdict(list)
    for r in records:
        fits[(r.task, r.fraction, r.model)] += [bool(f["prior_selected"]) for f in r.fits]
    return [
        dict(task=t, fraction=f, model=m, share=float(np.mean(v)), fits=len(v))
        for (t, f, m), v in sorted(fits.items())
        if v
    ]


def _claim_block(tasks: Sequence[Mapping[str, Any]], model: str, baseline: str) -> dict:
    """The claim over the claim tasks that were scored (``decided_on``): reproduced
    (refuted) when a majority of them are, e.g. 2 of 3, or the one task left on a log
    without item categories or ratings (``needed``)."""
    fractions = sorted({f for t in tasks for f in t["fractions"]})
    needed = len(tasks) // 2 + 1
    return {
        "threshold": intervals.CLAIM_THRESHOLD,
        "fractions": fractions,
        "model": model,
        "baseline": baseline,
        "tasks": [{k: t[k] for k in ("task", "metric", "ratio", "ci95", "verdict")} for t in tasks],
        "decided_on": [t["task"] for t in tasks],
        "needed": needed,
        "verdict": intervals.claim_verdict([t["verdict"] for t in tasks], needed=needed),
    }
