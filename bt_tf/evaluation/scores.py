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

from bt_tf import atomic
from bt_tf.evaluation import intervals, metrics
from bt_tf.evaluation.protocol import Population
from bt_tf.evaluation.tasks import CLAIM_METRICS, get_task

__all__ = [
    "SCORES_FILE",
    "FLOORS",
    "PRIOR_FLOORS",
    "is_floor",
    "write_scores",
    "read_scores",
    "unit_values",
    "CLAIM_MODELS",
    "analyse",
    "claim_block",
    "claim_objective",
]

SCORES_FILE = "scores.parquet"
CLAIM_MODELS = ("bt", "de")  # the paper's claim: BT (model) against the dual encoder (baseline)
# Floors (listed after the learned models); "untrained(<run>)" counts as "untrained".
# "bias": liked item's per-item bias alone (the item one-hot, no user feature).
FLOORS = ("untrained", "bag_of_items", "svd", "bias", "majority", "popularity")
PRIOR_FLOORS = ("majority", "popularity")  # the probes' prior predictor: no features


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

    cols = _columns(records, population, k)
    table = pa.table(
        {
            name: pa.array([_text(v) for v in values] if values.dtype == object else values)
            for name, values in cols.items()
        }
    )
    atomic.write_parquet(path, table, compression="zstd")
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
    claim_models: tuple[str, str] = CLAIM_MODELS,
    claim_fractions: Sequence[float] = intervals.CLAIM_FRACTIONS,
    claim_users: Sequence[tuple[str, np.ndarray | None]] = (("all", None),),
    chosen: np.ndarray | None = None,
    n_resamples: int = intervals.DEFAULT_RESAMPLES,
    seed: int = 0,
    resample_seeds: bool = True,
    not_scored: Mapping[str, str] | None = None,
) -> dict:
    """Every metric with its interval, the comparisons, the prior-selection shares and
    the claim, from the records' units (see the module docstring).

    Comparisons: every model against ``baseline``, every learned model against every
    floor. The claim (`claim_block`): ``claim_models`` = (model, its baseline) on
    each task of `tasks.CLAIM_METRICS`, the mean over ``claim_fractions`` (those
    evaluated), once per ``claim_users`` entry (name, population rows scored, None:
    all); the first is ``"claim"``, all are ``"claims"``. ``baseline`` sets the
    comparisons only, never the claim. ``chosen``: ``[N]`` bool, the population
    rows whose labels chose a default the runs used (`selection.chosen_users`;
    None: not recorded). ``resample_seeds=False``: intervals over users alone.
    ``not_scored``: tasks the data cannot support -> why (`eval_data.unavailable_tasks`):
    listed as ``"not_scored"``; the claim is decided without them (`claim_block`).
    """
    by_task = collections.defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    out = {"cells": [], "comparisons": [], "prior_selected": _prior_shares(records),
           "not_scored": dict(not_scored or {})}  # fmt: skip
    design = None
    for task, recs in by_task.items():
        cells, n_users, models = _cells(task, recs, k)
        pairs = [(m, baseline) for m in models if m != baseline]
        pairs += [(m, f) for m in models if not is_floor(m) for f in models if is_floor(f)]
        res = intervals.task_intervals(
            {key: cell for key, (cell, _) in cells.items()}, n_users, pairs,
            n_resamples=n_resamples, seed=seed, resample_seeds=resample_seeds,
        )  # fmt: skip
        design = design or res["design"]
        for (metric, fraction, model), (value, ci) in res["cells"].items():
            out["cells"].append(dict(
                task=task, metric=metric, fraction=fraction, model=model, value=value,
                ci95=list(ci), n_replicates=cells[(metric, fraction, model)][1], n_users=n_users,
            ))  # fmt: skip
        out["comparisons"] += [dict(task=task, **c.to_dict()) for c in res["comparisons"]]
    model, reference = claim_models
    claims = [
        claim_block(records, k, model=model, baseline=reference, fractions=claim_fractions,
                    users=rows, users_name=name, chosen=chosen, n_resamples=n_resamples,
                    seed=seed, resample_seeds=resample_seeds, not_scored=not_scored)
        for name, rows in claim_users
    ]  # fmt: skip
    out["claims"] = [c for c in claims if c is not None]
    out["claim"] = out["claims"][0] if out["claims"] else None
    out["bootstrap"] = {"resamples": n_resamples, "method": "percentile", "confidence": 0.95,
                        "unit": "user", "seed": seed,
                        "resampled": (design or {}).get("resampled", ["users"])}  # fmt: skip
    return out


def claim_block(
    records,
    k: int,
    *,
    model: str,
    baseline: str,
    fractions: Sequence[float] = intervals.CLAIM_FRACTIONS,
    users: np.ndarray | None = None,
    users_name: str = "all",
    chosen: np.ndarray | None = None,
    n_resamples: int = intervals.DEFAULT_RESAMPLES,
    seed: int = 0,
    resample_seeds: bool = True,
    not_scored: Mapping[str, str] | None = None,
) -> dict | None:
    """The claim ``model`` >= `intervals.CLAIM_THRESHOLD` x ``baseline``, decided per task
    of `tasks.CLAIM_METRICS` on its claim metric, the mean over ``fractions`` of
    model / baseline, with intervals from one hierarchical bootstrap (`intervals`) of
    the scored users of every task together; None when a model has no record.

    ``users``: the population rows the claim is scored on (None: every scored
    user); the probes are the same (cross-fitted: trained on the other folds'
    labels), only the scored units are restricted. ``chosen``: ``[N]`` bool, the
    rows whose labels chose a default the runs used (`selection`). ``not_scored``:
    claim tasks the data cannot support (a log without item categories or ratings)
    -> why: the claim is decided on the others (``decided_on``), reproduced (refuted)
    when a majority of them are (``needed``: 2 of 3 or 2, 1 of 1); a task merely
    absent from the records stays ``missing`` (inconclusive).

    Returns ``{"model", "baseline", "threshold", "users", "n_users", "fractions",
    "seeds", "interval", "selection", "in_sample_share", "tasks": [{"task",
    "metric", "ratio", "ci95", "verdict", "fractions", "n_users",
    "per_seed_ratios"}], "missing", "decided_on", "needed", "not_scored", "verdict",
    "note"}`` (docs/USAGE.md, "The claim").
    """
    if model == baseline:
        raise ValueError(f"the claim compares two models, got {model!r} twice")
    present = {r.model for r in records}
    if not {model, baseline} <= present:
        return None
    evaluated = {float(r.fraction) for r in records if r.model in (model, baseline)}
    wanted = [float(f) for f in fractions if float(f) in evaluated]
    recs = [r for r in records if r.task in CLAIM_METRICS and r.model in (model, baseline)
            and float(r.fraction) in wanted]  # fmt: skip
    keep = None if users is None else np.asarray(users, dtype=np.int64)
    scored = [r.units.user if keep is None else np.intersect1d(r.units.user, keep) for r in recs]
    everyone = np.unique(np.concatenate(scored)) if scored else np.zeros(0, np.int64)
    by_task = collections.defaultdict(list)
    for r in recs:
        by_task[r.task].append(r)
    unsupported = {t: why for t, why in (not_scored or {}).items() if t in CLAIM_METRICS}
    decided_on = [t for t in CLAIM_METRICS if t not in unsupported]
    needed = intervals.CLAIM_TASKS_NEEDED if not unsupported else len(decided_on) // 2 + 1
    groups, rows, missing = [], [], []
    for task, metric in CLAIM_METRICS.items():
        if task in unsupported:
            continue
        cells = _cells(task, by_task[task], k, users=everyone, keep=keep)[0] if (
            task in by_task and everyone.size) else {}  # fmt: skip
        have = [f for f in wanted if (metric, f, model) in cells and (metric, f, baseline) in cells]
        if not have:
            missing.append(task)
            continue
        missing += [f"{task}@{f:g}" for f in wanted if f not in have]
        pairs = [(cells[(metric, f, model)][0], cells[(metric, f, baseline)][0]) for f in have]
        groups.append(pairs)
        rows.append(dict(task=task, metric=metric, fractions=have,
                         n_users=int(np.unique(pairs[0][0].unit_user).size),
                         per_seed_ratios=_per_seed_ratios(pairs, model, baseline)))  # fmt: skip
    if groups:
        ratios = intervals.mean_ratios(groups, int(everyone.size), n_resamples=n_resamples,
                                       seed=seed, resample_seeds=resample_seeds)  # fmt: skip
        for row, (ratio, ci) in zip(rows, ratios):
            row.update(ratio=ratio, ci95=list(ci), verdict=intervals.task_verdict(ratio, ci))
    seeds = {m: len({r.pretrain_seed for r in recs if r.model == m}) for m in (model, baseline)}
    block = {
        "model": model,
        "baseline": baseline,
        "threshold": intervals.CLAIM_THRESHOLD,
        "users": users_name,
        "n_users": int(everyone.size),
        "fractions": wanted,
        "seeds": seeds,
        "interval": _interval_text(seeds, resample_seeds),
        **_selection(everyone, chosen),
        "tasks": [{key: row[key] for key in _TASK_KEYS} for row in rows],
        "missing": missing,
        "decided_on": decided_on,
        "needed": needed,
        "not_scored": unsupported,
        "verdict": intervals.claim_verdict(
            [row["verdict"] for row in rows], needed=needed, missing=len(missing)
        ),  # fmt: skip
    }
    block["note"] = _claim_note(block)
    return block


_TASK_KEYS = ("task", "metric", "ratio", "ci95", "verdict", "fractions", "n_users",
              "per_seed_ratios")  # fmt: skip


def _per_seed_ratios(pairs, model: str, baseline: str) -> dict:
    """``{model: {seed: ratio}, baseline: {seed: ratio}}``: the claim ratio (mean over the
    fractions) with one of the model's pretraining seeds alone against all the
    baseline's, and all the model's against one of the baseline's: the spread the
    interval's seed level draws from."""
    out = {}
    for side, name in ((0, model), (1, baseline)):
        seeds = sorted({int(s) for pair in pairs for s in pair[side].seeds("pretrain")})
        ratios = {}
        for s in seeds:
            values = []
            for a, b in pairs:
                num = intervals.point_value(a, s if side == 0 else None)
                den = intervals.point_value(b, s if side == 1 else None)
                values.append(num / den if den else float("nan"))
            ratios[str(s)] = float(np.mean(values))
        out[name] = ratios
    return out


def _interval_text(seeds: Mapping[str, int], resample_seeds: bool) -> str:
    if not resample_seeds:
        return "users only (label and pretraining seeds averaged inside each resample)"
    text = "users, label seeds and each model's pretraining seeds resampled"
    one = [m for m, n in seeds.items() if n < 2]
    if one:
        text += (f"; {' and '.join(one)}: 1 pretraining seed, so the spread between "
                 "pretraining seeds is not in the interval")  # fmt: skip
    return text


def _selection(scored: np.ndarray, chosen: np.ndarray | None) -> dict:
    """``selection`` of the scored population rows: ``out_of_sample`` when no scored
    user's labels chose a default, else ``in_sample`` with their share."""
    if chosen is None:
        return {"selection": "not recorded", "in_sample_share": None}
    share = float(np.mean(np.asarray(chosen)[scored])) if scored.size else 0.0
    return {"selection": "in_sample" if share > 0 else "out_of_sample", "in_sample_share": share}


def _claim_note(block: Mapping[str, Any]) -> str:
    """What qualifies the verdict, in words ("" when nothing does)."""
    notes = []
    if block.get("not_scored"):
        why = "; ".join(f"{t} not scored ({w})" for t, w in block["not_scored"].items())
        notes.append(f"decided on {', '.join(block['decided_on']) or 'no task'} only: {why}")
    if block["missing"]:
        notes.append(f"missing {', '.join(block['missing'])}: inconclusive whatever the "
                     "other tasks say")  # fmt: skip
    undefined = [t["task"] for t in block["tasks"] if not np.all(np.isfinite(t["ci95"]))]
    if undefined:
        notes.append(f"no interval for {', '.join(undefined)}: the ratio is undefined in some "
                     "resamples (0 / 0: too few scored users with a hit)")  # fmt: skip
    if min(block["seeds"].values()) < 2 and block["verdict"] != "inconclusive":
        notes.append("1 pretraining seed: decided by the interval over users and label "
                     "seeds alone; the spread between pretraining seeds is unmeasured")  # fmt: skip
    if block["selection"] == "in_sample":
        notes.append(f"in-sample: {100 * block['in_sample_share']:.0f}% of the scored users' "
                     "labels chose defaults the runs used")  # fmt: skip
    return "; ".join(notes)


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


def _cells(task: str, recs, k: int, users: np.ndarray | None = None,
           keep: np.ndarray | None = None):  # fmt: skip
    """(metric, fraction, model) -> (Cell, replicates), the task's users, its models.

    ``users``: sorted ids the cells' ``unit_user`` index (default: the task's own);
    ``keep``: only the units of these users (population rows; default all).
    Replicates are ordered by (pretraining seed, label seed) and carry both.
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
    mask = slice(None) if keep is None else np.isin(ref.user, keep)
    if users is None:
        users, unit_user = np.unique(ref.user[mask], return_inverse=True)
    else:
        unit_user = np.searchsorted(users, ref.user[mask])
    groups = collections.defaultdict(list)
    for r in recs:
        groups[(r.fraction, r.model)].append(r)
    cells = {}
    t = get_task(task)
    for (fraction, model), group in groups.items():
        group = sorted(group, key=lambda r: (r.pretrain_seed, r.seed))
        for metric in t.metric_names(k):
            kind = intervals.metric_kind(task, metric)
            values = [unit_values(task, metric, r.units, k) for r in group]
            labels = values[0][1]
            cell = intervals.Cell(
                kind,
                np.stack([v[mask] for v, _ in values]),
                unit_user.reshape(-1),
                None if labels is None else labels[mask],
                group=ref.column("fold")[mask],
                model=model,
                pretrain_seed=np.array([r.pretrain_seed for r in group], np.int64),
                label_seed=np.array([r.seed for r in group], np.int64),
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
