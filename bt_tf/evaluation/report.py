"""Downstream report: the claim's verdict, metrics with paired intervals, Markdown, JSON, PNG.

Inputs: the result rows (`probing.record_rows`: ``{"model", "pretrain_seed",
"task", "metric", "fraction", "seed", "value", ...}``) and the analysis of the
per-user scores (`scores.analyse`: every cell's value with its 95% paired
bootstrap interval, the comparisons, the prior-selection shares, the claim).

``report.md`` opens with the claim's verdict in one table, then has per task
and metric a table of models (then floors) x label fractions, cells ``value
[lo, hi]``; `BELOW_FLOOR` marks a learned model below a floor with the
difference's interval excluding 0 (not merely a lower mean); then the ratios
against the baseline and against every floor, cells ``+25% [+3, +49]``, and
how often selection kept the prior predictor. ``results.json`` holds all of
it (NaN -> null).
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf import atomic
from bt_tf.evaluation.intervals import CLAIM_TASKS_NEEDED
from bt_tf.evaluation.scores import FLOORS, PRIOR_FLOORS, is_floor

__all__ = [
    "BELOW_FLOOR",
    "aggregate",
    "relative_improvement",
    "ratio_cell",
    "below_floors",
    "write_report",
    "json_safe",
    "plot_metric_vs_fraction",
    "plot_batch_size_ablation",
]

BELOW_FLOOR = "▼"  # a learned model below a floor, the difference's interval excluding 0


def _floor_rank(model: str) -> tuple[int, str]:
    base = "untrained" if model.startswith("untrained(") else model
    return FLOORS.index(base), model


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = _finite(values)
    if not vals:
        return float("nan"), float("nan"), 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """``[{"task", "metric", "model", "fraction", "mean", "std", "n_seeds"}]``, one per
    (task, metric, model, fraction): mean and std over the label and pretraining seeds."""
    groups = collections.defaultdict(list)
    for r in rows:
        missing = {"model", "task", "metric", "fraction", "value"} - set(r)
        if missing:
            raise ValueError(f"result row {r} lacks {sorted(missing)}.")
        groups[(r["task"], r["metric"], r["model"], float(r["fraction"]))].append(r["value"])
    out = []
    for (task, metric, model, fraction), values in sorted(groups.items()):
        mean, std, n = _mean_std(values)
        out.append(dict(task=task, metric=metric, model=model, fraction=fraction, mean=mean,
                        std=std, n_seeds=n))  # fmt: skip
    return out


def relative_improvement(model_mean: float, baseline_mean: float) -> float:
    """``100 * (m - b) / b``; NaN if either is missing or ``b == 0``."""
    if not (math.isfinite(model_mean) and math.isfinite(baseline_mean)) or baseline_mean == 0:
        return float("nan")
    return 100.0 * (model_mean - baseline_mean) / baseline_mean


def _model_order(models: Iterable[str], baseline: str, compare: Sequence[str]) -> list[str]:
    models = set(models)
    floors = sorted((m for m in models if is_floor(m)), key=_floor_rank)
    head = [m for m in (*compare, baseline) if m in models and not is_floor(m)]
    rest = sorted(models - set(head) - set(floors))
    return head + rest + floors


def below_floors(comparisons: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Learned-model cells below a floor with the difference's 95% interval below 0.

    Returns ``[{"task", "metric", "fraction", "model", "floors": {floor: difference}}]``.
    """
    out: dict[tuple, dict] = {}
    for c in comparisons:
        if is_floor(c["model"]) or not is_floor(c["reference"]):
            continue
        hi = c["difference_ci"][1]
        if hi is not None and math.isfinite(hi) and hi < 0:
            key = (c["task"], c["metric"], c["fraction"], c["model"])
            entry = out.setdefault(key, dict(task=key[0], metric=key[1], fraction=key[2],
                                             model=key[3], floors={}))  # fmt: skip
            entry["floors"][c["reference"]] = c["difference"]
    return list(out.values())


def _fraction_label(f: float) -> str:
    return f"{100 * f:g}%"


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def value_cell(value: float, ci: Sequence[float], spec: str = ".3f") -> str:
    """``"value [lo, hi]"`` (``n/a`` for a missing value or bound): every interval printed."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:{spec}} [{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]"


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * (v - 1):+.0f}"


def ratio_cell(ratio: float, ci: Sequence[float]) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "n/a"
    return f"{_pct(ratio)} % [{_pct(ci[0])}, {_pct(ci[1])}]"


def json_safe(x: Any) -> Any:
    """``x`` with NaN/inf -> None, numpy scalars -> Python ones, tuple keys joined, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {("|".join(map(str, k)) if isinstance(k, tuple) else k): json_safe(v)
                for k, v in x.items()}  # fmt: skip
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    return x


def _claim_lines(
    claims: Sequence[Mapping[str, Any]], provenance: Sequence[Mapping[str, Any]] | None = None
) -> list[str]:
    """The claim section: one table per claim block (the first decides), the rules, and
    the defaults chosen on labels (``provenance``)."""
    if not claims:
        return ["## The claim", "", "Not decided: it needs runs of both claim models "
                "(`--claim_models`, default bt,de).", ""]  # fmt: skip
    first = claims[0]
    lines = [f"## The claim: {first['model']} ≥ {first['threshold']:g} × {first['baseline']}", ""]
    if len(claims) > 1:
        lines += ["| scored users | selection | verdict |", "|---|---|---|"]
        lines += [f"| {_users_label(c)} | {_selection_label(c)} | {c['verdict']} |"
                  for c in claims]  # fmt: skip
        lines.append("")
    for claim in claims:
        lines += _claim_table(claim, heading=len(claims) > 1)
    th = first["threshold"]
    lines += [
        f"Per task: reproduced when the ratio is ≥ {th:g} and its interval's low end > 1; "
        f"refuted when the interval's high end < {th:g}; else inconclusive. Overall: "
        f"{_overall_rule(first)}; "
        "inconclusive whenever a task (or a fraction of one) is missing. The interval "
        "resamples the users, the label seeds (shared by every model: a label seed draws "
        "the same labelled users for all) and each model's pretraining seeds; the "
        "per-seed ratios show the spread it draws from.",
        "",
    ]
    return lines + _provenance_lines(provenance)


def _overall_rule(claim: Mapping[str, Any]) -> str:
    """The overall rule: at least 2 of the 3 tasks, or a majority of the tasks the claim
    was decided on when the data could not support all three."""
    if not claim.get("not_scored"):
        return f"reproduced (refuted) when at least {CLAIM_TASKS_NEEDED} of the 3 tasks are"
    decided = claim["decided_on"]
    return (
        f"reproduced (refuted) when at least {claim['needed']} of the {len(decided)} task(s) "
        f"the data supports are ({', '.join(decided) or 'none'}; not scored: "
        + "; ".join(f"{t}, {why}" for t, why in claim["not_scored"].items())
        + ")"
    )


def _users_label(claim: Mapping[str, Any]) -> str:
    who = "all scored users" if claim["users"] == "all" else f"{claim['users']} users only"
    return f"{who} ({claim['n_users']})"


def _selection_label(claim: Mapping[str, Any]) -> str:
    if claim["selection"] == "in_sample":
        return f"in-sample ({100 * claim['in_sample_share']:.0f}% chose defaults)"
    return claim["selection"].replace("_", "-")


def _seed_ratios(per_seed: Mapping[str, Mapping[str, float]]) -> str:
    return "; ".join(f"{m} " + " / ".join(_fmt(v, ".2f") for v in ratios.values())
                     for m, ratios in per_seed.items())  # fmt: skip


def _claim_table(claim: Mapping[str, Any], *, heading: bool) -> list[str]:
    model, base = claim["model"], claim["baseline"]
    fr = ", ".join(_fraction_label(f) for f in claim["fractions"]) or "no claim fraction"
    seeds = ", ".join(f"{m} {n}" for m, n in claim["seeds"].items())
    lines = [f"### Scored on {_users_label(claim)}", ""] if heading else []
    lines += [
        f"Scored users: {_users_label(claim)}; selection: **{_selection_label(claim)}**. "
        f"Pretraining seeds: {seeds}. Interval: {claim['interval']}.",
        "",
        f"| task | metric | {model} / {base} (mean over {fr} labels) | 95% interval "
        f"| per pretraining seed ({model} seeds vs all {base}; all {model} vs {base} seeds) "
        "| verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in claim["tasks"]:
        lo, hi = t["ci95"]
        own = "" if t["fractions"] == claim["fractions"] else (
            " (" + ", ".join(_fraction_label(f) for f in t["fractions"]) + ")")  # fmt: skip
        lines.append(f"| {t['task']}{own} | {t['metric']} | {_fmt(t['ratio'])} | "
                     f"[{_fmt(lo)}, {_fmt(hi)}] | {_seed_ratios(t['per_seed_ratios'])} | "
                     f"{t['verdict']} |")  # fmt: skip
    for m in claim["missing"]:
        lines.append(f"| {m} | missing | | | | |")
    for task, why in (claim.get("not_scored") or {}).items():
        lines.append(f"| {task} | not scored: {why} | | | | |")
    lines += ["", f"**Verdict: {claim['verdict']}.**"
              + (f" ({claim['note']}.)" if claim.get("note") else ""), ""]  # fmt: skip
    return lines


def _provenance_lines(provenance: Sequence[Mapping[str, Any]] | None) -> list[str]:
    if provenance is None:
        return []
    if not provenance:
        return ["Defaults chosen on labels: none of the runs' settings was chosen by "
                "reading labels (`DEFAULTS_PROVENANCE`).", ""]  # fmt: skip
    lines = ["Defaults the runs used that were chosen by reading labels "
             "(`bt_tf.training.flags.DEFAULTS_PROVENANCE`):", ""]  # fmt: skip
    for p in provenance:
        lines.append(f"- {p['chose']}: the {' + '.join(p['splits'])} users of {p['dataset']}, "
                     f"labels of {', '.join(p['labels'])}; {p['how']}. Used by "
                     f"{', '.join(p['runs'])}.")  # fmt: skip
    return lines + [""]


def _not_scored_lines(not_scored: Mapping[str, str]) -> list[str]:
    if not not_scored:
        return []
    return [
        "## Tasks not scored",
        "",
        *[f"- `{task}`: {why}." for task, why in not_scored.items()],
        "",
    ]


def write_report(
    rows: Sequence[Mapping[str, Any]],
    analysis: Mapping[str, Any],
    out_dir: str,
    *,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    title: str = "Downstream evaluation",
    protocol: str = "",
    population: str = "",
    provenance: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Writes ``report.md``, ``results.json`` and ``metrics_vs_fraction.png``.

    ``provenance``: the defaults the runs used that were chosen on labels
    (`selection.used_provenance`; None: not recorded), copied to results.json.

    Returns ``{"markdown": path, "json": path, "plot": path}``.
    """
    if not rows:
        raise ValueError("write_report got no rows; run the evaluation first.")
    os.makedirs(out_dir, exist_ok=True)
    flagged = below_floors(analysis["comparisons"])
    boot = analysis["bootstrap"]
    seeds = collections.Counter((r["model"], r["pretrain_seed"]) for r in rows)
    pretrain = sorted({len({s for (m, s) in seeds if m == model}) for model, _ in seeds
                       if not is_floor(model)})  # fmt: skip
    lines = [
        f"# {title}",
        "",
        f"Users: {population}." if population else "",
        "",
        protocol,
        "",
        f"Every figure: the metric on the scored users, averaged over label seeds and "
        f"pretraining seeds (learned models: {', '.join(map(str, pretrain)) or '-'} "
        "pretraining seed(s)), with its 95% paired bootstrap interval "
        f"({boot['resamples']} resamples; each draws {_resampled(boot)}; a user's pairs "
        "go with the user; every model on the same resampled users; percentile method). "
        "Per-user scores: `scores.parquet`.",
        "",
        *_claim_lines(_claims(analysis), provenance),
        *_not_scored_lines(analysis.get("not_scored") or {}),
    ]
    tables = _Tables(analysis, {(b["task"], b["metric"], b["fraction"], b["model"]): b
                                for b in flagged}, baseline, tuple(compare))  # fmt: skip
    for task in dict.fromkeys(c["task"] for c in analysis["cells"]):
        lines += [f"## {task}", ""]
        for metric in dict.fromkeys(c["metric"] for c in analysis["cells"] if c["task"] == task):
            lines += tables.metric(task, metric)
        lines += tables.prior_kept(task)
    paths = {
        "markdown": os.path.join(out_dir, "report.md"),
        "json": os.path.join(out_dir, "results.json"),
        "plot": os.path.join(out_dir, "metrics_vs_fraction.png"),
    }
    atomic.write_text(paths["markdown"], "\n".join(lines))
    results = {
        "claim": analysis.get("claim"),
        "claims": _claims(analysis),
        "provenance": provenance,
        "not_scored": dict(analysis.get("not_scored") or {}),
        "baseline": baseline,
        "compare": list(compare),
        "population": population,
        "protocol": protocol,
        "bootstrap": boot,
        "cells": analysis["cells"],
        "comparisons": analysis["comparisons"],
        "below_floor": flagged,
        "prior_selected": analysis["prior_selected"],
        "aggregates": aggregate(rows),
        "rows": [dict(r) for r in rows],
    }
    atomic.write_json(paths["json"], json_safe(results), indent=1, allow_nan=False)
    plot_metric_vs_fraction(analysis["cells"], paths["plot"], baseline=baseline, compare=compare)
    return paths


def _claims(analysis: Mapping[str, Any]) -> list:
    """Every claim block (`scores.analyse`'s ``claims``; older analyses: ``claim``)."""
    if "claims" in analysis:
        return list(analysis["claims"])
    return [analysis["claim"]] if analysis.get("claim") else []


def _resampled(boot: Mapping[str, Any]) -> str:
    parts = list(boot.get("resampled") or ["users"])
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _table_head(first: str, fractions: Sequence[float]) -> list[str]:
    return [
        f"| {first} | " + " | ".join(_fraction_label(f) for f in fractions) + " |",
        "|---" * (len(fractions) + 1) + "|",
    ]


class _Tables:
    """The Markdown tables of one report, from `scores.analyse`'s output."""

    def __init__(self, analysis, flags, baseline: str, compare: tuple[str, ...]):
        self.cells = {(c["task"], c["metric"], c["model"], c["fraction"]): c
                      for c in analysis["cells"]}  # fmt: skip
        self.comparisons = analysis["comparisons"]
        self.prior = analysis["prior_selected"]
        self.flags = flags
        self.baseline, self.compare = baseline, compare

    def metric(self, task: str, metric: str) -> list[str]:
        """Models x fractions, value [interval], `BELOW_FLOOR` marks; then the ratios."""
        keys = [k for k in self.cells if k[0] == task and k[1] == metric]
        fractions = sorted({k[3] for k in keys})
        models = _model_order({k[2] for k in keys}, self.baseline, self.compare)
        lines = [f"### {metric}", "", *_table_head("model", fractions)]
        notes = []
        for m in models:
            vals = []
            for f in fractions:
                c = self.cells.get((task, metric, m, f))
                cell = value_cell(c["value"], c["ci95"]) if c else ""
                b = self.flags.get((task, metric, f, m))
                if b:
                    cell += f" {BELOW_FLOOR}"
                    below = ", ".join(f"`{fl}` by {-d:.3f}" for fl, d in b["floors"].items())
                    notes.append(f"`{m}` at {_fraction_label(f)} below {below}")
                vals.append(cell)
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines.append("")
        if notes:
            lines += [f"{BELOW_FLOOR} below a floor (difference's 95% interval < 0): "
                      + "; ".join(notes) + ".", ""]  # fmt: skip
        return lines + self._ratios(task, metric, fractions, models)

    def _ratios(self, task, metric, fractions, models) -> list[str]:
        comps = {(c["model"], c["reference"], c["fraction"]): c for c in self.comparisons
                 if c["task"] == task and c["metric"] == metric}  # fmt: skip
        order = [(m, self.baseline) for m in models if m != self.baseline]
        order += [(m, fl) for m in models if not is_floor(m) for fl in models if is_floor(fl)]
        order = [p for p in order if any((*p, f) in comps for f in fractions)]
        if not order:
            return []
        lines = ["Ratio − 1 with its 95% interval (paired):", "",
                 *_table_head("model vs reference", fractions)]  # fmt: skip
        for m, ref in order:
            vals = [ratio_cell(c["ratio"], c["ratio_ci"]) if (c := comps.get((m, ref, f)))
                    else "" for f in fractions]  # fmt: skip
            lines.append(f"| {m} vs {ref} | " + " | ".join(vals) + " |")
        return lines + [""]

    def prior_kept(self, task: str) -> list[str]:
        """How often selection kept the prior predictor, per model and fraction."""
        rows = [p for p in self.prior if p["task"] == task and p["model"] not in PRIOR_FLOORS]
        if not rows:
            return []
        fractions = sorted({p["fraction"] for p in rows})
        by = {(p["model"], p["fraction"]): p for p in rows}
        models = _model_order({p["model"] for p in rows}, self.baseline, self.compare)
        lines = ["Selection kept the prior predictor (share of probe fits: folds × seeds):",
                 "", *_table_head("model", fractions)]  # fmt: skip
        for m in models:
            vals = [f"{by[(m, f)]['share']:.2f}" if (m, f) in by else "" for f in fractions]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        return lines + [""]


def _pyplot():
    """pyplot on the Agg backend, imported only when a plot is drawn (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_fraction(
    cells: Sequence[Mapping[str, Any]],
    out_path: str,
    *,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
) -> str:
    """One panel per (task, metric): the metric against label fraction (log x), one
    line per model with its 95% interval as error bars. Floors are dashed."""
    plt = _pyplot()
    panels = list(dict.fromkeys((c["task"], c["metric"]) for c in cells))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    all_models = _model_order({c["model"] for c in cells}, baseline, compare)
    colors = {m: f"C{i % 10}" for i, m in enumerate(all_models)}  # same colour in every panel
    for ax, (task, metric) in zip(axes.flat, panels):
        here = [c for c in cells if c["task"] == task and c["metric"] == metric]
        for m in _model_order({c["model"] for c in here}, baseline, compare):
            pts = sorted((c["fraction"], c["value"], *c["ci95"]) for c in here if c["model"] == m)
            x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            err = np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0))
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=3, label=m, color=colors[m],
                        linestyle="--" if is_floor(m) else "-")  # fmt: skip
        fractions = sorted({c["fraction"] for c in here})
        ax.set_xscale("log")
        ax.set_xticks(fractions, [_fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic.replacing(out_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_path


def plot_batch_size_ablation(
    rows: Sequence[Mapping[str, Any]],
    out_path: str,
    *,
    task: str,
    metric: str,
    fraction: float | None = None,
    x_key: str = "batch_size",
) -> str:
    """Metric against pretraining batch size (log2 x), one line per model.

    ``rows`` are result rows carrying ``x_key`` (the entry point adds the run's
    batch size to each row); only ``task``/``metric`` (and ``fraction`` when
    given) are drawn, mean ± std over seeds.
    """
    plt = _pyplot()
    groups = collections.defaultdict(list)
    for r in rows:
        if r["task"] != task or r["metric"] != metric or x_key not in r:
            continue
        if fraction is not None and not math.isclose(float(r["fraction"]), fraction):
            continue
        groups[(r["model"], float(r[x_key]))].append(r["value"])
    if not groups:
        raise ValueError(
            f"no rows with task={task!r}, metric={metric!r}, fraction={fraction} and a "
            f"{x_key!r} field; add the run's {x_key} to each row."
        )
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m in sorted({k[0] for k in groups}):
        pts = sorted((x, *_mean_std(v)[:2]) for (mm, x), v in groups.items() if mm == m)
        x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
        ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(metric)
    ax.set_title(task + ("" if fraction is None else f" ({_fraction_label(fraction)} labels)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic.replacing(out_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_path
